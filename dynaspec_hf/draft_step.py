"""The one draft step: router + routed-shortlist head, which every draft path runs (eager or replayed from a CUDA
graph, chain or tree node).

    router([h_prev; embed(x)]) -> top-k clusters ─┐
    drafter body(x) -> h ─────────────────────────┴─> head over (core prefix + chosen clusters + context tokens)
                                                       -> next token

`shortlist_logits` is the step: the shortlist rows' logits and token ids. `draft_step` spreads them over the
vocabulary (the q that speculative sampling needs, with the sampling tail where the schedule has one);
`greedy_draft_token` reads a greedy draft from the rows alone. `DraftStepMixin` gives them to `DynaSpecAssistant`,
whose `router`, `lm_head`, `config` and input embeddings they read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .configuration_dynaspec import Shortlist
from .context_tokens import recent_distinct_tokens
from .shortlist_head import ShortlistIndex


class DraftStepMixin:
    """The draft step of `DynaSpecAssistant` (see the module's docstring)."""

    def _spread(self, row_logits: torch.Tensor, row_tokens: torch.Tensor, tail: torch.Tensor | None = None,
                joint: bool = False) -> torch.Tensor:
        """Shortlist logits -> float32 `[B, vocab]` in token-id order (rows with token id -1 are dropped): `-inf`
        outside the shortlist, or, given `tail` (`[B, vocab]` log-probabilities of every token), log-probabilities
        that keep the tail's outside the shortlist and share the rest of the mass by the shortlist's own softmax.
        `joint`: `tail` holds logits on the rows' own scale instead, and one softmax spans the rows and the tail's
        logits outside them."""
        vocab_size = self.config.vocab_size
        slots = row_tokens.masked_fill(row_tokens < 0, vocab_size)
        if tail is None:
            logits = row_logits.new_full((row_logits.shape[0], vocab_size + 1), float("-inf"), dtype=torch.float32)
            return logits.scatter_(1, slots, row_logits.float())[:, :vocab_size]
        outside = F.pad(tail.float(), (0, vocab_size + 1 - tail.shape[1]), value=float("-inf"))  # padding rows too
        outside = outside.scatter_(1, slots, float("-inf"))
        rows = row_logits.float()
        if joint:
            total = torch.logaddexp(rows.logsumexp(-1, keepdim=True), outside.logsumexp(-1, keepdim=True))
            return (outside - total).scatter_(1, slots, rows - total)[:, :vocab_size]
        left = 1 - outside.logsumexp(-1, keepdim=True).exp().clamp(max=1 - 1e-6)  # the shortlist's share
        return outside.scatter_(1, slots, rows.log_softmax(-1) + left.log())[:, :vocab_size]

    def routing(self, previous_hidden: torch.Tensor, token_ids: torch.Tensor, k: int, tail: float = 0.0
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The router's top-`k` cluster ids `[B, k]` for the next position (None: every cluster), and its
        log-probability of every cluster `[B, C]` when `tail` reads it (the rank-0 tail's estimate in `draft_step`),
        else None."""
        if k >= self.config.num_clusters:
            return None, None
        if k == 0:
            return token_ids.new_empty(token_ids.shape[0], 0), None
        scores = self.router(previous_hidden, self.get_input_embeddings()(token_ids))
        return scores.topk(k, dim=-1).indices, scores.float().log_softmax(-1) if tail and not self.lm_head.tail_rank \
            else None

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
                       size: int | None = None, recent: torch.Tensor | None = None) -> torch.Tensor | None:
        """`[B, size]` most recent distinct tokens of `input_ids` (padding excluded), most recent first, or None
        for no slots. `size` defaults to `config.max_context_tokens`, a buffer whose prefixes serve every schedule.
        `recent`: this method's answer for the text before `input_ids`, which the new tokens update (re-reading
        the end of that text changes nothing), so a drafter need not read the whole text every round."""
        size = self.config.max_context_tokens if size is None else size
        if not size:
            return None
        ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
        if recent is not None:  # the earlier distinct tokens as a text of their own, least recent first
            ids = torch.cat([recent.flip(1), ids], dim=1)
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
        logits for the token after `token_ids`, `-inf` outside `shortlist`. With the shortlist's tail weight w,
        log-probabilities over the whole vocabulary instead: with a tail rank (`lm_head.tail_rank`), one softmax
        over the shortlist's logits and, outside it, the drafter's own logits from the rank-r copy of its head plus
        log w; without, each token outside gets w times its cluster's routed mass times its corpus share of the
        cluster (`lm_head.token_log_share`).

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
        weight = math.log(shortlist.tail)
        if self.lm_head.tail_rank:  # the current hidden state's own logits, where the router sees the previous one
            return self._spread(logits, tokens, self.lm_head.tail_logits(hidden, index) + weight, joint=True)
        return self._spread(logits, tokens, log_mass[:, index.token_cluster] + self.lm_head.token_log_share + weight)

    def greedy_draft_token(self, hidden: torch.Tensor, previous_hidden: torch.Tensor, token_ids: torch.Tensor,
                           shortlist: Shortlist, index: ShortlistIndex | None = None,
                           context_ids: torch.Tensor | None = None,
                           routing: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
                           count: int = 1) -> torch.Tensor:
        """`[B, count]`: the argmax of `draft_step`'s logits (and with `count` > 1 the next likeliest tokens, in
        order), read from the shortlist's rows alone, so a greedy draft never builds a full-vocabulary tensor (a
        shortlist without a tail: outside it every logit is `-inf`)."""
        if shortlist.tail:
            raise ValueError("A shortlist with a sampling tail drafts from the full vocabulary: use `draft_step`.")
        if index is None and (shortlist.core or shortlist.context):
            index = self.lm_head.index()
        logits, tokens, _ = self.shortlist_logits(hidden, previous_hidden, token_ids, shortlist, index, context_ids,
                                                  routing)
        if count == 1:
            return tokens.gather(1, logits.argmax(-1, keepdim=True))
        if logits.shape[1] < count:  # fewer rows than tokens asked for: the rest are impossible ones
            logits = torch.nn.functional.pad(logits, (0, count - logits.shape[1]), value=float("-inf"))
            tokens = torch.nn.functional.pad(tokens, (0, count - tokens.shape[1]), value=0)
        return tokens.gather(1, logits.topk(count, dim=-1).indices)

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
        head = self.lm_head(hidden, cluster_ids, shortlist.core, index, context_ids, kernel=self.drafting.head_kernel)
        return *head, log_mass
