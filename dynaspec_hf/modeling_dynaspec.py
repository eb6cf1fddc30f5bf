"""`DynaSpecAssistant`: a drafter whose output head only computes a routed shortlist of the vocabulary.

It drops into `target.generate(input_ids, assistant_model=assistant)`: transformers' assisted-generation loop
calls `assistant.generate(...)` for a block of draft tokens and verifies them with the target over the full
vocabulary, so greedy output is the target's own and sampling keeps the target's distribution.

One draft step (`shortlist_logits`, which every draft path runs: eager, CUDA-graph, chain or tree; `draft_step`
spreads its rows over the vocabulary, `greedy_draft_token` reads the greedy draft from them):

    router([h_prev; embed(x)]) -> top-k clusters ─┐
    drafter body(x) -> h ─────────────────────────┴─> head over (core prefix + chosen clusters + context tokens)
                                                       -> next token
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationConfig, GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.modeling_outputs import CausalLMOutputWithPast

from .budget import RoundCosts
from .checkpoint import CheckpointMixin
from .clusters import TokenClusters
from .compat import cache_field, cache_keyword, output_cache
from .configuration_dynaspec import SCHEDULE_FIELDS, DynaSpecConfig, Shortlist, TemperatureBand, band_dicts
from .context_tokens import recent_distinct_tokens
from .eager_draft import draft_eagerly
from .engines import engine_for, release_engines
from .logit_transform import LogitTransform
from .router import ClusterRouter
from .shortlist_head import ShortlistHead, ShortlistIndex

DEFAULT_DRAFT_TOKENS = 6
# Arguments transformers' assisted loop passes to `assistant.generate` that drafting does not need.
_IGNORED_GENERATE_KWARGS = {"position_ids", "logits_to_keep", "use_cache", "token_type_ids", "cache_position"}


@dataclass
class DraftingOptions:
    """How an assistant drafts (`assistant.drafting`); none of these changes what it drafts."""

    cuda_graphs: bool = True  # draft on a static cache, each step replayed from a CUDA graph on CUDA; False: eager
    static_cache_off_cuda: bool = False  # the static-cache drafter off CUDA too, its steps eager (the own loop's
    # chains always draft so: a static cache rolls back on any transformers version)
    round_costs: RoundCosts | None = None  # what an automatic tree shape is chosen by (`budget.py`); None: measured
    # at first use on each target and device


class DynaSpecPreTrainedModel(PreTrainedModel):
    config_class = DynaSpecConfig
    base_model_prefix = "drafter"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DynaSpecAssistant(CheckpointMixin, DynaSpecPreTrainedModel, GenerationMixin):
    """Drafter body + router + routed-shortlist head. Build one with `from_drafter` or `from_pretrained`."""

    def __init__(self, config: DynaSpecConfig):
        super().__init__(config)
        config.validate_schedule()
        drafter_config = config.drafter_config
        self.drafter = AutoModel.from_config(drafter_config)
        hidden = drafter_config.hidden_size
        self.router = ClusterRouter(hidden, hidden, config.num_clusters, config.router_hidden_size)
        self.lm_head = ShortlistHead(hidden, config.drafter_vocab_size, config.num_clusters, config.cluster_size,
                                     config.core_size, LogitTransform.from_config(drafter_config),
                                     config.sampling_tail_rank)
        self.post_init()
        # Draft block length for `target.generate(assistant_model=...)`; saved in generation_config.json.
        self.generation_config.num_assistant_tokens = DEFAULT_DRAFT_TOKENS
        self.generation_config.num_assistant_tokens_schedule = "constant"
        self.drafting = DraftingOptions()
        # What calibration measured (`dynaspec_hf.calibrate`): saved and loaded as calibration_report.json, and
        # summarized in the model card, so a published assistant carries its evidence.
        self.calibration_report: dict | None = None

    # ----------------------------------------------------------------------------------------------------------
    # construction and schedule (loading and saving: `checkpoint.py`)

    @classmethod
    def from_drafter(
        cls,
        drafter: PreTrainedModel,
        clusters: TokenClusters,
        router: ClusterRouter | None = None,
        *,
        router_hidden_size: int = 256,
        k_by_position: list[int] | None = None,
        core_by_position: list[int] | None = None,
        num_context_tokens: int = 0,
        temperature_bands: list[dict | TemperatureBand] | None = None,
        sampling_tail: float = 0.0,
        sampling_tail_rank: int = 0,
        vocab_size: int | None = None,
    ) -> "DynaSpecAssistant":
        """Wrap a causal LM (`AutoModelForCausalLM`) as a DynaSpec assistant.

        The drafter's output head is copied into the cluster-contiguous layout of `clusters`. Without `router`, a
        freshly initialized one is created (train it with `dynaspec_hf.calibrate`). Tokens share their cluster
        evenly for `sampling_tail` until `lm_head.set_token_shares(counts)` (calibration's) says otherwise, or by the
        drafter's own distribution with `sampling_tail_rank`.
        `vocab_size`: the target's vocabulary (`target.config.vocab_size`), when it pads the drafter's with rows the
        tokenizer never emits; the assistant's logits then span it, and the padding is never drafted.
        """
        head = drafter.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(drafter).__name__} has no output head; pass a causal LM (AutoModelForCausalLM).")
        if clusters.vocab_size != head.weight.shape[0]:
            raise ValueError(
                f"The clusters cover {clusters.vocab_size} tokens but the drafter's head has {head.weight.shape[0]} "
                f"rows."
            )
        if vocab_size is not None and vocab_size < head.weight.shape[0]:
            raise ValueError(
                f"The target's vocabulary ({vocab_size} tokens) is smaller than the drafter's ({head.weight.shape[0]}):"
                f" they do not share a tokenizer, and a DynaSpec assistant needs the target's tokenizer."
            )
        if router is not None:
            router_hidden_size = router.net[0].out_features if isinstance(router.net, nn.Sequential) else 0
        config = DynaSpecConfig(
            drafter_config=_with_vocab_size(drafter.config, head.weight.shape[0]),
            num_clusters=clusters.num_clusters,
            cluster_size=clusters.cluster_size,
            core_size=clusters.core_size,
            router_hidden_size=router_hidden_size,
            k_by_position=k_by_position,
            core_by_position=core_by_position,
            num_context_tokens=num_context_tokens,
            temperature_bands=temperature_bands,
            sampling_tail=sampling_tail,
            sampling_tail_rank=sampling_tail_rank,
            vocab_size=vocab_size,
        )
        model = cls(config)
        model.drafter.load_state_dict(drafter.base_model.state_dict())
        model.lm_head.load_full_head(head.weight, clusters)
        model.lm_head.set_tail_rank(sampling_tail_rank)
        if router is not None:
            model.router.load_state_dict(router.state_dict())
        model = model.to(device=head.weight.device, dtype=head.weight.dtype).eval()
        check_same_distribution(drafter, model)
        return model

    def set_schedule(self, k_by_position: list[int] | None = None, core_by_position: list[int] | None = None,
                     num_context_tokens: int | None = None,
                     temperature_bands: list[dict | TemperatureBand] | None = None,
                     sampling_tail: float | None = None, sampling_tail_rank: int | None = None):
        """Change the shortlist schedule in place (the weights are shared by every schedule; a new
        `sampling_tail_rank` copies the head's rows at that rank). Returns self.

        The CUDA graphs captured for the current schedule are kept when the schedule does not change, so a loop
        that sets the same schedule before every `generate` does not pay a capture each time."""
        config = copy.deepcopy(self.config)
        names = (*SCHEDULE_FIELDS, "temperature_bands", "sampling_tail", "sampling_tail_rank")
        bands = None if temperature_bands is None else band_dicts(temperature_bands)
        values = (k_by_position, core_by_position, num_context_tokens, bands, sampling_tail, sampling_tail_rank)
        for name, value in zip(names, values):
            if value is not None:
                setattr(config, name, copy.deepcopy(value))
        config.validate_schedule()
        unchanged = all(getattr(config, name) == getattr(self.config, name) for name in names)
        if config.sampling_tail_rank != self.lm_head.tail_rank:
            self.lm_head.set_tail_rank(config.sampling_tail_rank)
        self.config = config
        if unchanged:
            return self
        release_engines(self, "chain drafter", "tree drafter")  # their graphs were captured for the old schedule
        return self

    @property
    def use_cuda_graphs(self) -> bool:
        """`drafting.cuda_graphs`: False drafts eagerly."""
        return self.drafting.cuda_graphs

    @use_cuda_graphs.setter
    def use_cuda_graphs(self, value: bool) -> None:
        self.drafting.cuda_graphs = value

    def get_input_embeddings(self):
        return self.drafter.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.drafter.set_input_embeddings(value)

    def get_output_embeddings(self):
        return None  # the head is a routed shortlist layer, not a [vocab, hidden] linear layer

    def set_output_embeddings(self, new_embeddings):
        raise NotImplementedError(
            "DynaSpecAssistant's head is a cluster-ordered shortlist layer and cannot be replaced or pruned; "
            "universal speculative decoding across tokenizers with do_sample=True is not supported."
        )

    # ----------------------------------------------------------------------------------------------------------
    # forward (full vocabulary, for evaluation) and drafting

    def full_vocabulary_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[..., hidden]` -> float32 logits over the whole vocabulary in token-id order (evaluation, calibration)."""
        rows, token_ids = self.lm_head(hidden.reshape(-1, hidden.shape[-1]), None, 0)
        return self._spread(rows, token_ids).view(*hidden.shape[:-1], -1)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        kwargs[cache_keyword(self.drafter)] = kwargs.pop("cache", past_key_values)  # newer transformers' name
        outputs = self.drafter(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else outputs.last_hidden_state
        return CausalLMOutputWithPast(logits=self.full_vocabulary_logits(hidden),
                                      **{cache_field(CausalLMOutputWithPast): output_cache(outputs)})

    def _spread(self, row_logits: torch.Tensor, row_tokens: torch.Tensor, tail: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Shortlist logits -> float32 `[B, vocab]` in token-id order (rows with token id -1 are dropped): `-inf`
        outside the shortlist, or, given `tail` (`[B, vocab]` log-probabilities of every token), log-probabilities
        that keep the tail's outside the shortlist and share the rest of the mass by the shortlist's own softmax."""
        vocab_size = self.config.vocab_size
        slots = row_tokens.masked_fill(row_tokens < 0, vocab_size)
        if tail is None:
            logits = row_logits.new_full((row_logits.shape[0], vocab_size + 1), float("-inf"), dtype=torch.float32)
            return logits.scatter_(1, slots, row_logits.float())[:, :vocab_size]
        outside = F.pad(tail.float(), (0, vocab_size + 1 - tail.shape[1]), value=float("-inf"))  # padding rows too
        outside = outside.scatter_(1, slots, float("-inf"))
        left = 1 - outside.logsumexp(-1, keepdim=True).exp().clamp(max=1 - 1e-6)  # the shortlist's share
        return outside.scatter_(1, slots, row_logits.float().log_softmax(-1) + left.log())[:, :vocab_size]

    def routing(self, previous_hidden: torch.Tensor, token_ids: torch.Tensor, k: int, tail: float = 0.0
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The router's top-`k` cluster ids `[B, k]` for the next position (None: every cluster), and its
        log-probability of every cluster `[B, C]` when `tail` (the tail's estimate in `draft_step`), else None."""
        if k >= self.config.num_clusters:
            return None, None
        if k == 0:
            return token_ids.new_empty(token_ids.shape[0], 0), None
        scores = self.router(previous_hidden, self.get_input_embeddings()(token_ids))
        return scores.topk(k, dim=-1).indices, scores.float().log_softmax(-1) if tail else None

    def check_token_ids(self, token_ids: torch.Tensor | list[int]) -> None:
        """Raise for token ids the drafter cannot read: beyond its vocabulary (the target's padding rows, or
        another tokenizer's ids)."""
        largest = max(token_ids, default=-1) if isinstance(token_ids, list) else (
            int(token_ids.max()) if token_ids.numel() else -1)
        if largest >= self.config.drafter_vocab_size:
            raise ValueError(
                f"Token id {largest} is outside the drafter's vocabulary of {self.config.drafter_vocab_size} tokens "
                f"(the assistant's logits span {self.config.vocab_size}; ids past the drafter's are padding the "
                f"tokenizer never emits): the assistant and the target must share one tokenizer."
            )

    def context_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       size: int | None = None) -> torch.Tensor | None:
        """`[B, size]` most recent distinct tokens of `input_ids` (padding excluded), most recent first, or None
        for no slots. `size` defaults to `config.max_context_tokens`, a buffer whose prefixes serve every schedule."""
        size = self.config.max_context_tokens if size is None else size
        if not size:
            return None
        ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
        return recent_distinct_tokens(ids, size, self.config.drafter_vocab_size)

    def next_token_logits(self, hidden: torch.Tensor, previous_hidden: torch.Tensor, token_ids: torch.Tensor,
                          position: int, index: ShortlistIndex | None = None, context_ids: torch.Tensor | None = None,
                          temperature: float = 0.0) -> torch.Tensor:
        """`draft_step` with the shortlist of draft position `position` (0-based) at `temperature` (0: greedy)."""
        return self.draft_step(hidden, previous_hidden, token_ids, self.config.shortlist_at(position, temperature),
                               index, context_ids)

    def draft_step(self, hidden: torch.Tensor, previous_hidden: torch.Tensor, token_ids: torch.Tensor,
                   shortlist: Shortlist, index: ShortlistIndex | None = None, context_ids: torch.Tensor | None = None,
                   routing: tuple[torch.Tensor | None, torch.Tensor | None] | None = None) -> torch.Tensor:
        """The router + head of every draft step (eager or graph-replayed, chain or tree): float32 `[B, vocab]`
        logits for the token after `token_ids`, `-inf` outside `shortlist`. With the shortlist's tail weight,
        log-probabilities instead: each token outside gets the weight times its cluster's routed mass times its
        share of the cluster (`lm_head.token_log_share`).

        `hidden` is the body's output at `token_ids`, `previous_hidden` the one before it: the router's input, so
        routing need not wait for `hidden`. `context_ids` (`context_tokens`, at least `shortlist.context` of them)
        fill the context slots; `index` (`lm_head.index()`) may be passed to reuse it; `routing` is `routing(...)`'s
        result where the caller ran it already (the graph drafter, on a stream of its own).
        """
        if index is None and (shortlist.core or shortlist.context or shortlist.tail):
            index = self.lm_head.index()
        logits, tokens, log_mass = self.shortlist_logits(hidden, previous_hidden, token_ids, shortlist, index,
                                                         context_ids, routing)
        if not shortlist.tail:
            return self._spread(logits, tokens)
        estimate = log_mass[:, index.token_cluster] + self.lm_head.token_log_shares(hidden, index)
        return self._spread(logits, tokens, estimate + math.log(shortlist.tail))

    def greedy_draft_token(self, hidden: torch.Tensor, previous_hidden: torch.Tensor, token_ids: torch.Tensor,
                           shortlist: Shortlist, index: ShortlistIndex | None = None,
                           context_ids: torch.Tensor | None = None,
                           routing: tuple[torch.Tensor | None, torch.Tensor | None] | None = None) -> torch.Tensor:
        """`[B, 1]`: the argmax of `draft_step`'s logits, read from the shortlist's rows alone, so a greedy draft
        never builds a full-vocabulary tensor (a shortlist without a tail: outside it every logit is `-inf`)."""
        if shortlist.tail:
            raise ValueError("A shortlist with a sampling tail drafts from the full vocabulary: use `draft_step`.")
        if index is None and (shortlist.core or shortlist.context):
            index = self.lm_head.index()
        logits, tokens, _ = self.shortlist_logits(hidden, previous_hidden, token_ids, shortlist, index, context_ids,
                                                  routing)
        return tokens.gather(1, logits.argmax(-1, keepdim=True))

    def shortlist_logits(self, hidden: torch.Tensor, previous_hidden: torch.Tensor, token_ids: torch.Tensor,
                         shortlist: Shortlist, index: ShortlistIndex | None = None,
                         context_ids: torch.Tensor | None = None,
                         routing: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The one draft step's router + head, which every draft path runs: the shortlist rows' logits `[B, R]`
        and token ids `[B, R]` (`-inf` and -1 for padding rows), and the router's log-probability of every
        cluster `[B, C]` where the shortlist has a tail (else None). Arguments as `draft_step`'s."""
        if shortlist.context and (context_ids is None or context_ids.shape[1] < shortlist.context):
            raise ValueError(f"The schedule has {shortlist.context} context-token slots: pass as many `context_ids` "
                             f"(`context_tokens`).")
        cluster_ids, log_mass = routing or self.routing(previous_hidden, token_ids, shortlist.clusters, shortlist.tail)
        context_ids = context_ids[:, : shortlist.context] if shortlist.context else None
        return *self.lm_head(hidden, cluster_ids, shortlist.core, index, context_ids), log_mass

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_new_tokens: int, **options) -> GenerateDecoderOnlyOutput:
        """Draft up to `max_new_tokens` tokens after `input_ids` eagerly, on a `DraftCache` (`eager_draft.py`, whose
        `draft_eagerly` takes the options): the path of batches, padding and the CPU."""
        return draft_eagerly(self, input_ids, max_new_tokens, **options)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ):
        """Shortlist drafting with the `generate` interface transformers' assisted loop calls (which names the
        drafter's cache `past_key_values` up to transformers 5.23 and `cache` from 5.24).

        Called by `target.generate(..., assistant_model=self)` it drafts one block. Called directly, it decodes
        with the shortlist head (greedy or sampled with temperature / top-k / top-p).
        """
        generation_config = copy.deepcopy(generation_config or self.generation_config)
        unused = generation_config.update(**kwargs)
        unsupported = set(unused) - _IGNORED_GENERATE_KWARGS
        if unsupported:
            raise TypeError(f"DynaSpecAssistant.generate got unsupported arguments: {sorted(unsupported)}.")
        if (generation_config.num_beams or 1) > 1:
            raise ValueError("DynaSpecAssistant drafts without beam search; num_beams must be 1.")
        max_new_tokens = generation_config.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = (generation_config.max_length or 20) - input_ids.shape[1]
        do_sample = bool(generation_config.do_sample)
        if logits_processor is None and do_sample:  # direct call; the assisted loop passes the target's processors
            logits_processor = sampling_processors(generation_config)
        eos = generation_config.eos_token_id
        threshold = generation_config.assistant_confidence_threshold if generation_config.is_assistant else None
        options = dict(
            min_new_tokens=generation_config.min_new_tokens or 0,
            do_sample=do_sample,
            logits_processor=logits_processor,
            eos_token_id=[eos] if isinstance(eos, int) else eos,
            confidence_threshold=threshold,
            temperature=drafting_temperature(generation_config),
        )
        past_key_values = past_key_values if past_key_values is not None else cache
        output = self.draft_block(input_ids, max(int(max_new_tokens), 0), past_key_values, attention_mask, **options)
        return output if generation_config.return_dict_in_generate else output.sequences

    def draft_block(self, input_ids, max_new_tokens: int, past_key_values=None, attention_mask=None,
                    compile_options: dict | None = None, static_cache: bool = False, **options):
        """`draft` on the chain drafter's static cache (`fast_draft.GraphDrafter`, kept on the assistant) where it
        serves (batch 1, no padding, `drafting` allows it): steps replayed from CUDA graphs on CUDA, compiled by
        `torch.compile(**compile_options)` when they are given. `static_cache`: use it off CUDA too, eagerly (the
        own loop's chains: a static cache rolls back on any transformers version)."""
        from .fast_draft import StaticDraftCache

        usable = (self.drafting.cuda_graphs and input_ids.shape[0] == 1
                  and (self.device.type == "cuda" or self.drafting.static_cache_off_cuda or static_cache)
                  and (past_key_values is None or isinstance(past_key_values, StaticDraftCache))
                  and (attention_mask is None or bool(attention_mask.all())))  # batch 1, no padding
        if not usable:
            return self.draft(input_ids, max_new_tokens, past_key_values=past_key_values,
                              attention_mask=attention_mask, **options)
        self.check_token_ids(input_ids)
        drafter = self.chain_drafter(input_ids.shape[1] + max_new_tokens, compile_options)
        return drafter.draft(input_ids, max_new_tokens, past_key_values, **options)

    def chain_drafter(self, length: int, compile_options: dict | None = None):
        """The static-cache chain drafter (`fast_draft.GraphDrafter`) for drafts reaching `length` positions, kept
        on the assistant between calls (`engines.py`)."""
        from .fast_draft import GraphDrafter

        settings = (self.device, self.dtype, self.config.max_context_tokens, compile_options)
        # transformers' loop asks block by block and never says how long the generation will get: a cache of 2,048
        # positions at least spares most generations a rebuild (and its graph captures) midway
        return engine_for(self, "chain drafter", length, settings,
                          lambda size: GraphDrafter(self, size, compile_options=compile_options), minimum=2048)


@torch.no_grad()
def check_same_distribution(drafter: PreTrainedModel, assistant: DynaSpecAssistant) -> None:
    """Raise if the assistant's full-vocabulary distribution is not the drafter's on a probe input: the drafter's
    family transforms its logits in a way the shortlist head does not reproduce (`logit_transform.py`)."""
    device = assistant.lm_head.weight.device
    if device.type == "meta":
        return
    ids = (torch.arange(1, 9, device=device) % assistant.config.drafter_vocab_size)[None]
    was_training = drafter.training
    drafter.eval()
    try:
        theirs = drafter(input_ids=ids, use_cache=False).logits.float().softmax(-1)
        mine = assistant(input_ids=ids, use_cache=False).logits[..., : theirs.shape[-1]].float().softmax(-1)
    finally:
        drafter.train(was_training)
    distance = 0.5 * (theirs - mine).abs().sum(-1).max().item()
    if distance > (1e-3 if assistant.lm_head.weight.dtype == torch.float32 else 5e-2):
        raise ValueError(
            f"A DynaSpec assistant built from this {type(drafter).__name__} would not draft from its distribution "
            f"(total variation {distance:.3f} on a probe input): model type '{drafter.config.model_type}' changes "
            f"its logits after the output head in a way dynaspec-hf does not reproduce (supported: soft-capping by "
            f"`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`)."
        )


def _with_vocab_size(config, vocab_size: int):
    """A copy of `config` whose `vocab_size` is the rows of the model's output head."""
    config = copy.deepcopy(config)
    config.vocab_size = vocab_size
    return config


def drafting_temperature(generation_config: GenerationConfig) -> float:
    """The temperature that picks the schedule: 0 for greedy decoding, else the sampling temperature."""
    if not generation_config.do_sample:
        return 0.0
    return 1.0 if generation_config.temperature is None else float(generation_config.temperature)


def sampling_processors(generation_config: GenerationConfig) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if generation_config.temperature is not None and generation_config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(generation_config.temperature))
    if generation_config.top_k:
        processors.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p is not None and generation_config.top_p < 1.0:
        processors.append(TopPLogitsWarper(generation_config.top_p))
    return processors


DynaSpecConfig.register_for_auto_class()
DynaSpecAssistant.register_for_auto_class("AutoModelForCausalLM")
