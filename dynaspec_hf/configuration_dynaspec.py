"""`DynaSpecConfig`: the drafter's own config, the token clusters and the shortlist schedule.

Full-vocabulary drafting, a static frequency shortlist (FR-Spec) and routed shortlists (DynaSpec) are all
settings of this one config, so every comparison runs through the same code:

- full vocabulary: ``k_by_position=[num_clusters]`` (every cluster, no router, no core);
- static frequency shortlist: ``k_by_position=[0]``, ``core_by_position=[n]`` (the ``n`` most frequent tokens);
- DynaSpec: ``k_by_position=[k0, k1, ...]`` router-chosen clusters per draft position, optionally on top of a
  frequency core and of ``num_context_tokens`` slots for the most recent distinct tokens of the text so far.
  Position ``i`` uses entry ``i`` of each list; the last entry repeats.
"""

from __future__ import annotations

import math

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig


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
        **kwargs,
    ):
        if isinstance(drafter_config, dict):
            drafter_config = CONFIG_MAPPING[drafter_config["model_type"]](**drafter_config)
        self.drafter_config = drafter_config
        self.vocab_size = drafter_config.vocab_size if drafter_config is not None else None
        self.hidden_size = drafter_config.hidden_size if drafter_config is not None else None
        self.num_clusters = num_clusters
        if cluster_size is None and self.vocab_size is not None:
            cluster_size = math.ceil(self.vocab_size / num_clusters)
        self.cluster_size = cluster_size
        self.core_size = core_size
        self.router_hidden_size = router_hidden_size
        self.k_by_position = list(k_by_position) if k_by_position is not None else [num_clusters]
        self.core_by_position = list(core_by_position) if core_by_position is not None else [0]
        self.num_context_tokens = num_context_tokens
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def shortlist_at(self, position: int) -> tuple[int, int, int]:
        """`(core tokens, routed clusters, context tokens)` used at draft position `position` (0-based)."""
        core = self.core_by_position[min(position, len(self.core_by_position) - 1)]
        k = self.k_by_position[min(position, len(self.k_by_position) - 1)]
        if k >= self.num_clusters:  # every cluster is the whole vocabulary: the rest would only duplicate it
            return 0, self.num_clusters, 0
        return core, k, self.num_context_tokens

    @property
    def needs_router(self) -> bool:
        """True when some draft position picks clusters by routing (0 < k < num_clusters)."""
        return any(0 < k < self.num_clusters for k in self.k_by_position)

    def validate_schedule(self) -> None:
        """Raise a `ValueError` naming the values when the schedule cannot be served by this layout."""
        if self.drafter_config is None:
            raise ValueError("DynaSpecConfig needs a `drafter_config`.")
        if self.num_clusters < 1 or self.cluster_size is None or self.num_clusters * self.cluster_size < self.vocab_size:
            raise ValueError(
                f"{self.num_clusters} clusters of {self.cluster_size} rows cannot cover a vocabulary of "
                f"{self.vocab_size} tokens."
            )
        if not self.k_by_position or not self.core_by_position:
            raise ValueError("`k_by_position` and `core_by_position` need at least one entry each.")
        for name, values, limit in (
            ("k_by_position", self.k_by_position, self.num_clusters),
            ("core_by_position", self.core_by_position, self.core_size),
        ):
            bad = [v for v in values if not isinstance(v, int) or v < 0 or v > limit]
            if bad:
                raise ValueError(
                    f"`{name}`={values} asks for {bad}, but the layout has {limit} "
                    f"{'clusters' if name == 'k_by_position' else 'core tokens (core_size)'}."
                )
        if not isinstance(self.num_context_tokens, int) or self.num_context_tokens < 0:
            raise ValueError(f"`num_context_tokens` must be a non-negative int, got {self.num_context_tokens!r}.")
        for position in range(max(len(self.k_by_position), len(self.core_by_position))):
            if self.shortlist_at(position) == (0, 0, 0):
                raise ValueError(f"Draft position {position} has an empty shortlist (no core tokens, no clusters, "
                                 f"no context tokens).")
