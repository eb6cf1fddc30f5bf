"""`DynaSpecCandidateGenerator`: a transformers `CandidateGenerator` that drafts with a `DynaSpecAssistant`.

`target.generate(assistant_model=...)` does not need it (transformers wraps the assistant in its own generator,
which calls `DynaSpecAssistant.generate`). It is for loops that verify drafts themselves: it keeps the
assistant's cache between calls and returns the candidate ids and the logits they were drawn from.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList, PretrainedConfig
from transformers.generation.candidate_generator import CandidateGenerator

from .compat import output_cache
from .fast_draft import draft_block
from .modeling_dynaspec import DEFAULT_DRAFT_TOKENS
from .sampling import drafting_temperature


class DynaSpecCandidateGenerator(CandidateGenerator):
    """Args:
    assistant: the `DynaSpecAssistant` that drafts.
    generation_config: `do_sample`, `temperature`, `eos_token_id`, `max_length` and `num_assistant_tokens` are read
        from it (defaults: the assistant's generation config).
    logits_processor: processors applied to the draft logits (use the target's, as transformers does).
    target_config: the target's config; its vocabulary size must equal the assistant's.
    """

    def __init__(
        self,
        assistant,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        target_config: PretrainedConfig | None = None,
    ):
        if target_config is not None:
            target_vocab = target_config.get_text_config().vocab_size
            if target_vocab != assistant.config.vocab_size:
                raise ValueError(
                    f"The target's vocabulary has {target_vocab} tokens but the assistant's has "
                    f"{assistant.config.vocab_size}: DynaSpec assistants must share the target's tokenizer."
                )
        config = generation_config or assistant.generation_config
        self.assistant = assistant
        self.logits_processor = logits_processor or LogitsProcessorList()
        self.do_sample = bool(config.do_sample)
        self.temperature = drafting_temperature(config)  # picks the assistant's schedule (temperature bands)
        eos = config.eos_token_id
        self.eos_token_id = [eos] if isinstance(eos, int) else eos
        self.max_length = config.max_length
        self.num_assistant_tokens = (
            config.num_assistant_tokens or assistant.generation_config.num_assistant_tokens or DEFAULT_DRAFT_TOKENS
        )
        self.past_key_values = None

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """`(input_ids + drafted tokens, draft logits [B, n, vocab])`; `(input_ids, None)` when nothing fits."""
        budget = self.num_assistant_tokens
        if self.max_length is not None:
            budget = min(budget, self.max_length - input_ids.shape[1] - 1)
        if budget <= 0:
            return input_ids, None
        out = draft_block(
            self.assistant,
            input_ids.to(self.assistant.device),
            budget,
            self.past_key_values,
            do_sample=self.do_sample,
            logits_processor=self.logits_processor,
            eos_token_id=self.eos_token_id,
            temperature=self.temperature,
        )
        self.past_key_values = output_cache(out)
        return out.sequences, torch.stack(out.scores, dim=1)

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int):
        """Constant block length: the position-aware shortlist schedule is tuned for a fixed block."""
