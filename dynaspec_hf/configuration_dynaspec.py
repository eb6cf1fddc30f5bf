"""`DynaSpecConfig`: the drafter's own config, the token clusters and the shortlist schedule.

Full-vocabulary drafting, a static frequency shortlist (FR-Spec) and routed shortlists (DynaSpec) are all
settings of this one config, so every comparison runs through the same code:

- full vocabulary: ``k_by_position=[num_clusters]`` (every cluster, no router, no core);
- static frequency shortlist: ``k_by_position=[0]``, ``core_by_position=[n]`` (the ``n`` most frequent tokens);
- DynaSpec: ``k_by_position=[k0, k1, ...]`` router-chosen clusters per draft position, optionally on top of a
  frequency core and of ``num_context_tokens`` slots for the most recent distinct tokens of the text so far.
  Position ``i`` uses entry ``i`` of each list; the last entry repeats.

These fields are the greedy schedule. ``temperature_bands`` can give sampled drafting its own: the best split of a
shortlist can differ between greedy acceptance (the drafter's top token is the target's) and sampled acceptance
(the drafter's renormalized distribution overlaps the target's); calibration measures both. ``sampling_tail``
lets sampled drafts propose tokens outside the shortlist too, at (a weight times) an estimate of their
probability (``sampling_tail_rank``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig


class Schedule(NamedTuple):
    """Which shortlist each draft position scores, for one kind of drafting (greedy, or a temperature band): entry i
    of `k_by_position` (routed clusters) and of `core_by_position` (frequency-core tokens) is draft position i's, the
    last entry repeating, and every position gets `num_context_tokens` slots."""

    k_by_position: list[int]
    core_by_position: list[int]
    num_context_tokens: int

    def at(self, position: int) -> tuple[int, int]:
        """(core tokens, routed clusters) of draft position `position` (0-based)."""
        cores, ks = self.core_by_position, self.k_by_position
        return cores[min(position, len(cores) - 1)], ks[min(position, len(ks) - 1)]


SCHEDULE_FIELDS = Schedule._fields


class TemperatureBand(NamedTuple):
    """The schedule sampled drafting uses at temperatures up to `max_temperature` (None: any temperature). Stored in
    the config as a flat dict (`as_dict`), as `set_schedule(temperature_bands=...)` also takes it."""

    max_temperature: float | None
    schedule: Schedule

    @classmethod
    def from_dict(cls, band: dict) -> "TemperatureBand":
        """A band from its stored dict (`DynaSpecConfig.validate_schedule` checks its keys)."""
        return cls(band["max_temperature"], Schedule(*(band[name] for name in SCHEDULE_FIELDS)))

    def as_dict(self) -> dict:
        return dict(max_temperature=self.max_temperature, **self.schedule._asdict())

    def covers(self, temperature: float) -> bool:
        return self.max_temperature is None or temperature <= self.max_temperature


def band_dicts(bands: list[dict | TemperatureBand] | None) -> list[dict]:
    """Temperature bands as the config stores them (JSON): flat dicts (anything else is kept for
    `validate_schedule` to refuse by name)."""
    return [band.as_dict() if isinstance(band, TemperatureBand) else dict(band) if isinstance(band, dict) else band
            for band in bands or []]


class Shortlist(NamedTuple):
    """The vocabulary rows one draft step's head scores (`DynaSpecConfig.shortlist_at`). Also the key of the
    step's captured graph: steps with equal shortlists share one."""

    core: int  # the most frequent tokens: a prefix of the frequency core
    clusters: int  # clusters the router picks; `num_clusters` is the whole vocabulary, without the router
    context: int  # slots for the text's most recent distinct tokens
    tail: float  # when sampling: weight of the tail's estimate for the tokens outside (0: none)


class DynaSpecConfig(PretrainedConfig):
    r"""
    Args:
        drafter_config (`PretrainedConfig` or `dict`):
            Config of the decoder-only causal LM that drafts (Llama, Qwen2, Mistral, ...).
        num_clusters (`int`):
            Number of token clusters C the vocabulary is partitioned into.
        cluster_size (`int`, *optional*):
            Rows per cluster s; defaults to `ceil(vocab_size / num_clusters)`. Clusters are padded to this size.
        core_size (`int`, *optional*, defaults to 0):
            Number of frequency-ranked tokens stored as an always-available core (FR-Spec's shortlist).
        router_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width of the router MLP; 0 makes the router a single linear layer.
        k_by_position (`list[int]`, *optional*):
            Router-chosen clusters per draft position. Defaults to `[num_clusters]`: the full vocabulary.
        core_by_position (`list[int]`, *optional*, defaults to `[0]`):
            Frequency-core tokens per draft position (a prefix of the core, so each is itself a frequency shortlist).
        num_context_tokens (`int`, *optional*, defaults to 0):
            Slots for the most recent distinct tokens of the prompt and of the text generated so far, added to the
            shortlist of every draft position that does not already draft from the full vocabulary.
        temperature_bands (`list[dict]` or `list[TemperatureBand]`, *optional*):
            Schedules for sampled drafting, each a `TemperatureBand` or its dict: `max_temperature` (a float, or
            None for any) and the three fields above. Sampling at temperature t uses the first band with
            t <= `max_temperature`; greedy drafting, and sampling that no band covers, use the fields above.
        vocab_size (`int`, *optional*):
            Tokens the assistant's logits span: the target's vocabulary. It may exceed the drafter's
            (`drafter_config.vocab_size`, what the clusters partition) by padding rows the tokenizer never emits,
            as Qwen2.5-7B's 152,064 rows exceed Qwen2.5-0.5B's 151,936; those are never drafted. Defaults to the
            drafter's.
        sampling_tail (`float`, *optional*, defaults to 0):
            When sampling with routed clusters, draft from the whole vocabulary: a token outside the shortlist gets
            `sampling_tail` times an estimate of its probability (`sampling_tail_rank` says which), and the
            shortlist keeps the rest of the mass. A shortlist alone can never propose the target's mass outside it.
            0 turns it off; calibration chooses the weight. Exact at any weight: verification sees the distribution
            each draft was sampled from.
        sampling_tail_rank (`int`, *optional*, defaults to 0):
            The tail's estimate. r > 0: the drafter's own logits from a rank-r copy of the head's rows applied to
            the hidden state (`r / hidden_size` of a full head product), in one softmax with the shortlist's exact
            logits (the weight multiplies the outside's unnormalized mass); the copy is saved with the weights.
            0: the router's predicted mass of the token's cluster, shared by corpus frequency (the same for every
            context; O(vocabulary) additions). Calibration chooses the rank.
    """

    model_type = "dynaspec"
    sub_configs = {"drafter_config": AutoConfig}

    def __init__(
        self,
        drafter_config=None,
        num_clusters: int = 64,
        cluster_size: int | None = None,
        core_size: int = 0,
        router_hidden_size: int = 256,
        k_by_position: list[int] | None = None,
        core_by_position: list[int] | None = None,
        num_context_tokens: int = 0,
        temperature_bands: list[dict | TemperatureBand] | None = None,
        sampling_tail: float = 0.0,
        vocab_size: int | None = None,
        sampling_tail_rank: int = 0,
        **kwargs,
    ):
        if isinstance(drafter_config, dict):
            drafter_config = CONFIG_MAPPING[drafter_config["model_type"]](**drafter_config)
        self.drafter_config = drafter_config
        self.vocab_size = vocab_size if vocab_size is not None else self.drafter_vocab_size
        self.hidden_size = drafter_config.hidden_size if drafter_config is not None else None
        self.num_clusters = num_clusters
        if cluster_size is None and self.drafter_vocab_size is not None:
            cluster_size = math.ceil(self.drafter_vocab_size / num_clusters)
        self.cluster_size = cluster_size
        self.core_size = core_size
        self.router_hidden_size = router_hidden_size
        self.k_by_position = list(k_by_position) if k_by_position is not None else [num_clusters]
        self.core_by_position = list(core_by_position) if core_by_position is not None else [0]
        self.num_context_tokens = num_context_tokens
        self.temperature_bands = band_dicts(temperature_bands)
        self.sampling_tail = sampling_tail
        self.sampling_tail_rank = sampling_tail_rank
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def schedule(self, temperature: float = 0.0) -> Schedule:
        """The schedule drafting at `temperature` uses (0: greedy): the first band that covers it, else the greedy
        one."""
        if temperature > 0:
            for band in self.bands():
                if band.covers(temperature):
                    return band.schedule
        return Schedule(*(getattr(self, name) for name in SCHEDULE_FIELDS))

    def bands(self) -> list[TemperatureBand]:
        """`temperature_bands`, typed."""
        return [TemperatureBand.from_dict(band) for band in self.temperature_bands]

    def schedules(self) -> list[Schedule]:
        """The greedy schedule, then every temperature band's."""
        return [self.schedule()] + [band.schedule for band in self.bands()]

    def shortlist_at(self, position: int, temperature: float = 0.0) -> Shortlist:
        """The shortlist of draft position `position` (0-based) when drafting at `temperature` (0: greedy); its
        tail weight is `sampling_tail` when sampling with routed clusters, else 0."""
        schedule = self.schedule(temperature)
        core, k = schedule.at(position)
        if k >= self.num_clusters:  # every cluster is the whole vocabulary: the rest would only duplicate it
            return Shortlist(0, self.num_clusters, 0, 0.0)
        tail = float(self.sampling_tail) if temperature > 0 and k > 0 else 0.0
        return Shortlist(core, k, schedule.num_context_tokens, tail)

    @property
    def drafter_vocab_size(self) -> int | None:
        """Tokens the drafter's head scores and the clusters partition (a prefix of `vocab_size`)."""
        return self.drafter_config.vocab_size if self.drafter_config is not None else None

    @property
    def max_context_tokens(self) -> int:
        """The most context-token slots any schedule uses (the size of a buffer that serves them all)."""
        return max(schedule.num_context_tokens for schedule in self.schedules())

    @property
    def needs_router(self) -> bool:
        """True when some draft position of some schedule picks clusters by routing (0 < k < num_clusters)."""
        return any(0 < k < self.num_clusters for schedule in self.schedules() for k in schedule.k_by_position)

    def validate_schedule(self) -> None:
        """Raise a `ValueError` naming the values when the schedule cannot be served by this layout."""
        if self.drafter_config is None:
            raise ValueError(
                "DynaSpecConfig needs a `drafter_config`: this is not a DynaSpec assistant's config. A plain causal "
                "LM (a drafter) becomes an assistant through `dynaspec-hf calibrate --drafter ...` or "
                "`DynaSpecAssistant.from_drafter`."
            )
        if (self.num_clusters < 1 or self.cluster_size is None
                or self.num_clusters * self.cluster_size < self.drafter_vocab_size):
            raise ValueError(
                f"{self.num_clusters} clusters of {self.cluster_size} rows cannot cover a vocabulary of "
                f"{self.drafter_vocab_size} tokens."
            )
        if self.vocab_size < self.drafter_vocab_size:
            raise ValueError(f"`vocab_size` ({self.vocab_size}) must be at least the drafter's vocabulary "
                             f"({self.drafter_vocab_size}): the target's vocabulary extends the drafter's.")
        for band in self.temperature_bands:
            if not isinstance(band, dict) or set(band) != {"max_temperature", *SCHEDULE_FIELDS}:
                raise ValueError(f"Each of `temperature_bands` must be a dict with keys max_temperature, "
                                 f"{', '.join(SCHEDULE_FIELDS)}; got {band!r}.")
        bounds = [band.max_temperature for band in self.bands()]
        numbers = [b for b in bounds if isinstance(b, (int, float))]
        ordered = numbers == sorted(numbers) and min(numbers, default=1) > 0
        if not ordered or len(numbers) + bounds[-1:].count(None) != len(bounds):
            raise ValueError(f"`temperature_bands` must be ordered by a positive, increasing `max_temperature` "
                             f"(None, for any temperature, only last); got {bounds}.")
        if not isinstance(self.sampling_tail, (int, float)) or not 0 <= self.sampling_tail < math.inf:
            raise ValueError(f"`sampling_tail` must be a finite weight of at least 0 (0: off), got "
                             f"{self.sampling_tail!r}.")
        rank = self.sampling_tail_rank
        if not isinstance(rank, int) or not 0 <= rank <= (self.hidden_size or 0):
            raise ValueError(f"`sampling_tail_rank` must be an int from 0 (corpus shares) to the drafter's hidden size "
                             f"({self.hidden_size}), got {rank!r}.")
        for schedule in self.schedules():
            self._validate_one(schedule)

    def _validate_one(self, schedule: Schedule) -> None:
        ks, cores, context = schedule
        if not ks or not cores:
            raise ValueError("`k_by_position` and `core_by_position` need at least one entry each.")
        for name, values, limit in (("k_by_position", ks, self.num_clusters),
                                    ("core_by_position", cores, self.core_size)):
            bad = [v for v in values if not isinstance(v, int) or v < 0 or v > limit]
            if bad:
                raise ValueError(
                    f"`{name}`={values} asks for {bad}, but the layout has {limit} "
                    f"{'clusters' if name == 'k_by_position' else 'core tokens (core_size)'}."
                )
        if not isinstance(context, int) or context < 0:
            raise ValueError(f"`num_context_tokens` must be a non-negative int, got {context!r}.")
        for position in range(max(len(ks), len(cores))):
            core, k = schedule.at(position)
            if k == 0 and core == 0 and context == 0:
                raise ValueError(f"Draft position {position} has an empty shortlist (no core tokens, no clusters, "
                                 f"no context tokens).")
