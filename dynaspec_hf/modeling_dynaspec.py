"""`DynaSpecAssistant`: a drafter whose output head only computes a routed shortlist of the vocabulary.

It drops into `target.generate(input_ids, assistant_model=assistant)`: transformers' assisted-generation loop
calls `assistant.generate(...)` for a block of draft tokens and verifies them with the target over the full
vocabulary, so greedy output is the target's own and sampling keeps the target's distribution.

The model is the drafter's body, the router (`router.py`) and the shortlist head (`shortlist_head.py`); its draft
step is `draft_step.py`'s, the blocks it drafts are `fast_draft.py`'s, and loading and saving `checkpoint.py`'s.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel, GenerationConfig, GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast

from .checkpoint import CheckpointMixin
from .clusters import TokenClusters
from .compat import cache_field, cache_keyword, output_cache
from .configuration_dynaspec import SCHEDULE_FIELDS, DynaSpecConfig, TemperatureBand, band_dicts
from .conversion import check_drafter, check_same_distribution, with_vocab_size
from .draft_step import DraftStepMixin
from .eager_draft import DraftOptions, draft_eagerly
from .engines import release_engines
from .fast_draft import DraftingOptions, draft_block
from .logit_transform import LogitTransform
from .router import ClusterRouter
from .sampling import drafting_temperature, sampling_processors
from .shortlist_head import ShortlistHead

DEFAULT_DRAFT_TOKENS = 6
# Arguments transformers' assisted loop passes to `assistant.generate` that drafting does not need.
_IGNORED_GENERATE_KWARGS = {"position_ids", "logits_to_keep", "use_cache", "token_type_ids", "cache_position"}


class DynaSpecPreTrainedModel(PreTrainedModel):
    config_class = DynaSpecConfig
    base_model_prefix = "drafter"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DynaSpecAssistant(CheckpointMixin, DraftStepMixin, DynaSpecPreTrainedModel, GenerationMixin):
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
        freshly initialized one is created (train it with `dynaspec_hf.calibrate`). For `sampling_tail` at rank 0,
        tokens share their cluster's routed mass evenly until `lm_head.set_token_shares(counts)` (calibration's) says
        otherwise; with `sampling_tail_rank` the tail is the rank-r head's own logits.
        `vocab_size`: the target's vocabulary (`target.config.vocab_size`), when it pads the drafter's with rows the
        tokenizer never emits; the assistant's logits then span it, and the padding is never drafted.
        """
        head = check_drafter(drafter, clusters, vocab_size)
        if router is not None:
            router_hidden_size = router.net[0].out_features if isinstance(router.net, nn.Sequential) else 0
        config = DynaSpecConfig(
            drafter_config=with_vocab_size(drafter.config, head.weight.shape[0]),
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

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_new_tokens: int, past_key_values=None,
              attention_mask: torch.Tensor | None = None, **options) -> GenerateDecoderOnlyOutput:
        """Draft up to `max_new_tokens` tokens after `input_ids` eagerly, on a `DraftCache` (`eager_draft.py`): the
        path of batches, padding and the CPU. `options`: `eager_draft.DraftOptions`' fields."""
        return draft_eagerly(self, input_ids, max_new_tokens, DraftOptions(**options), past_key_values, attention_mask)

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
        output = draft_block(self, input_ids, max(int(max_new_tokens), 0), past_key_values, attention_mask,
                             **options)
        return output if generation_config.return_dict_in_generate else output.sequences


DynaSpecConfig.register_for_auto_class()
DynaSpecAssistant.register_for_auto_class("AutoModelForCausalLM")
