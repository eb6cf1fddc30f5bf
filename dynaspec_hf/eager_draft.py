"""The eager draft loop: what transformers' assisted loop gets from `DynaSpecAssistant.draft` where the static-cache
chain drafter (`fast_draft.py`) does not serve (padded batches; the CPU, unless asked), on a `DraftCache`.

Each step is the assistant's one draft step (`next_token_logits` -> `draft_step` -> `shortlist_logits`), and a block
stops by the one stopping rule of every draft path (`stops_at`: the assisted loop's EOS and confidence threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessorList
from transformers.generation import GenerateDecoderOnlyOutput

from .compat import cache_field, cache_keyword, check_rollback_possible, crop_cache, output_cache, record_past


class DraftCache(DynamicCache):
    """The drafter's KV cache between draft blocks, plus the body's outputs at the last block's positions.

    A block's first router input is the body output before the last committed token. Keeping it here spares the
    block a re-read of that token, which would need the cache cropped one position below what the assisted loop
    cropped it to: a sliding-window layer, once cropped, keeps only its window and cannot go further back.
    """

    def __init__(self, config):
        super().__init__(config=config)
        self._body_outputs, self._first = None, 0

    def keep_body_outputs(self, outputs: torch.Tensor, first: int) -> None:
        """`outputs` `[B, n, hidden]`: the body's outputs at sequence indices `first, ..., first + n - 1`."""
        self._body_outputs, self._first = outputs, first

    def body_output(self, index: int) -> torch.Tensor | None:
        """`[B, hidden]` body output at sequence index `index`, if the last block computed it and the cache still
        holds that position."""
        kept = self._body_outputs
        if kept is None or not self._first <= index < min(self._first + kept.shape[1], self.get_seq_length()):
            return None
        return kept[:, index - self._first]


def rollback_cache(config) -> DraftCache:
    """An empty cache that speculative decoding can crop (`compat.record_past`)."""
    cache = DraftCache(config)
    record_past(cache)
    return cache


@dataclass
class DraftOptions:
    """What a block of drafts asks for, in every draft path (`DynaSpecAssistant.draft` and `generate` take them as
    keywords): sampling, the temperature that picks the schedule (0: greedy), the target's logits processors, and
    transformers' stopping rules (`stops_at`). `keep_scores=False`: the caller reads only the tokens."""

    min_new_tokens: int = 0
    do_sample: bool = False
    logits_processor: LogitsProcessorList | None = None
    eos_token_id: list[int] | None = None
    confidence_threshold: float | None = None
    temperature: float = 0.0
    keep_scores: bool = True
    runner_ups: int = 0  # per draft, the tokens its step would have drafted next (`draft_tokens`)

    def __post_init__(self):
        self.logits_processor = LogitsProcessorList(self.logits_processor or [])  # the assisted loop passes a list


@dataclass
class DraftOutput(GenerateDecoderOnlyOutput):
    """A draft block: transformers' output of a generation, and with `DraftOptions.runner_ups`, `runner_ups`
    `[B, drafts, runner_ups]`, each draft's runner-ups (the own loop verifies them as leaves beside it)."""

    runner_ups: torch.LongTensor | None = None


def draft_output(sequences, scores: tuple, cache, drawn: list[torch.Tensor], runner_ups: int) -> DraftOutput:
    """A draft block's output, with the drafter's cache where the assisted loop looks for it; `drawn`: each step's
    `draft_tokens`, whose runner-ups it keeps when `runner_ups` asks for them."""
    kept = torch.stack(drawn, 1)[..., 1:] if runner_ups else None
    return DraftOutput(sequences=sequences, scores=scores, runner_ups=kept, **{cache_field(DraftOutput): cache})


@torch.compiler.disable  # drawn by torch's own generator, also where a caller is compiled (a tree's node forward)
def draft_tokens(logits: torch.Tensor, do_sample: bool, runner_ups: int = 0) -> torch.Tensor:
    """`[B, 1 + runner_ups]`: a draft step's token from its (processed) `logits` `[B, vocab]`, then the tokens it
    would have drafted next. Greedy: the likeliest, in order. Sampling: draws from q = softmax(logits) without
    replacement, in order (Gumbel top-k: the first follows q), as recursive rejection sampling reads a node's
    children (a tree's sampled children too). Where q has fewer tokens, the rest have q = 0 (never accepted)."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True) if not runner_ups else logits.topk(1 + runner_ups, dim=-1).indices
    perturbed = logits.float() - torch.empty_like(logits, dtype=torch.float32).exponential_().log()
    return perturbed.argmax(-1, keepdim=True) if not runner_ups else perturbed.topk(1 + runner_ups, dim=-1).indices


@torch.no_grad()
def draft_eagerly(assistant, input_ids: torch.LongTensor, max_new_tokens: int, options: DraftOptions | None = None,
                  past_key_values=None, attention_mask: torch.Tensor | None = None) -> GenerateDecoderOnlyOutput:
    """Draft up to `max_new_tokens` tokens after `input_ids` with `assistant`'s routed shortlist head.

    The returned `scores` are the (processed) logits each token was chosen from, spread over the full
    vocabulary with `-inf` outside the shortlist: exactly the q that speculative sampling needs. The cache is
    reused when given (a `DraftCache`, as returned). The router's first input is the body output before the
    last token: the cache keeps the last block's, so the body reads only the tokens the cache lacks, and never
    needs a cache cropped below what the caller cropped it to (a sliding-window layer cannot be). `temperature`
    (0 for greedy) picks the schedule (`config.schedule`); the logits processors apply the sampling itself.
    `keep_scores=False` says the caller reads only the tokens; this loop, off the fast path, keeps them anyway.
    """
    options = options or DraftOptions()
    batch, length = input_ids.shape
    assistant.check_token_ids(input_ids)
    processors = options.logits_processor

    if past_key_values is None:
        past_key_values = rollback_cache(assistant.config.drafter_config)
    check_rollback_possible(past_key_values, length + max_new_tokens)
    previous = past_key_values.body_output(length - 2) if isinstance(past_key_values, DraftCache) else None
    start = min(length - 1 if previous is not None else max(length - 2, 0), past_key_values.get_seq_length())
    crop_cache(past_key_values, start)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: let the model derive positions from the cache
    positions = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    cache_name = cache_keyword(assistant.drafter)
    out = assistant.drafter(
        input_ids=input_ids[:, start:],
        attention_mask=attention_mask,
        position_ids=None if positions is None else positions[:, start:],
        use_cache=True,
        **{cache_name: past_key_values},
    )
    cache = output_cache(out)
    hidden = out.last_hidden_state[:, -1]
    if out.last_hidden_state.shape[1] > 1:
        previous = out.last_hidden_state[:, -2]
    elif previous is None:  # the first token of the text
        previous = torch.zeros_like(hidden)
    outputs = [hidden]  # the body's outputs from position `length - 1` on, for the next block's router
    index = assistant.lm_head.index()
    context = assistant.context_tokens(input_ids, attention_mask)  # the verified text: fixed for the block

    sequences, scores, drawn = input_ids, [], []
    for position in range(max_new_tokens):
        logits = assistant.next_token_logits(hidden, previous, sequences[:, -1], position, index, context,
                                             options.temperature)
        if len(processors):
            logits = processors(sequences, logits)
        drawn.append(draft_tokens(logits, options.do_sample, options.runner_ups))
        token = drawn[-1][:, :1]
        sequences = torch.cat([sequences, token], dim=-1)
        scores.append(logits)
        stop = stops_at(token, [logits], options)  # the rule, one position at a time
        if position + 1 == max_new_tokens or (position + 1 >= options.min_new_tokens and stop is not None
                                              and bool(stop[0])):
            break
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
            positions = positions[:, -1:] + 1
        out = assistant.drafter(
            input_ids=token,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{cache_name: cache},
        )
        previous, hidden = hidden, out.last_hidden_state[:, -1]
        outputs.append(hidden)
    if isinstance(cache, DraftCache):
        cache.keep_body_outputs(torch.stack(outputs, dim=1), first=length - 1)
    return draft_output(sequences, tuple(scores), cache, drawn, options.runner_ups)


def stops_at(tokens: torch.Tensor, scores: list[torch.Tensor | None], options: DraftOptions) -> torch.Tensor | None:
    """The stopping rule of every draft path (transformers' assisted loop's), for drafted `tokens` `[B, n]`: `[n]`,
    True where a block ends after that position because every row drafted an EOS, or some row's token had a
    probability below `confidence_threshold` by `scores` (the processed logits it was chosen from). None: no rule."""
    eos_token_id, confidence_threshold = options.eos_token_id, options.confidence_threshold
    if not eos_token_id and not confidence_threshold:
        return None
    stop = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
    if eos_token_id:
        stop |= torch.isin(tokens, torch.tensor(eos_token_id, device=tokens.device)).all(0)
    if confidence_threshold:
        probs = torch.stack([s.softmax(-1).gather(1, t[:, None])[:, 0] for s, t in zip(scores, tokens.T)], dim=1)
        stop |= (probs < confidence_threshold).any(0)
    return stop


def kept_drafts(tokens: torch.Tensor, scores: list[torch.Tensor | None], options: DraftOptions) -> int:
    """How many of a block's drafted `tokens` (`[B, n]`) to keep: up to the first position, from `min_new_tokens`
    on, where the block `stops_at` (the graph drafter applies the rule once, after the block)."""
    stop = stops_at(tokens, scores, options)
    if stop is None:
        return tokens.shape[1]  # no stopping rule: no device read
    stop[: max(options.min_new_tokens - 1, 0)] = False
    hits = stop.nonzero()
    return tokens.shape[1] if hits.numel() == 0 else int(hits[0, 0]) + 1
