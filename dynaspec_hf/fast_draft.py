"""Fast drafting on CUDA: the drafter on a static KV cache, each draft step replayed from a captured CUDA graph.

Eager drafting of a small model is bound by Python and kernel-launch overhead, not by the GPU, so a shortlist head
only pays off once a draft step is one graph replay. `GraphDrafter` keeps one graph per step shape (tokens read
by the body; core, routed clusters and context slots of the draft position's shortlist), so schedules and
temperature bands with the same step shapes share graphs. Inside each graph the router runs on its own stream: on a
one-token step its inputs (the previous hidden state and the current token's embedding) are ready before the
body starts, so routing overlaps the body and joins the head through an event.

The static cache (`static_cache.py`) is handed to transformers' assisted loop as a `StaticDraftCache`: the loop
only asks its length and crops it, and cropping is moving the write position back.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.generation import GenerateDecoderOnlyOutput

from .configuration_dynaspec import Shortlist
from .eager_draft import DraftOptions, draft_eagerly, draft_output, draft_tokens, kept_drafts
from .engines import engine_for
from .sampling import processors_key, reads_only_scores
from .static_cache import StaticCacheModel, causal, compiled

if TYPE_CHECKING:
    from .budget import RoundCosts

MAX_GRAPH_TOKENS = 16  # body inputs per captured step; longer re-reads run eagerly, as every prompt does


@dataclass
class DraftingOptions:
    """How an assistant drafts (`assistant.drafting`); none of these changes what it drafts."""

    cuda_graphs: bool = True  # draft on a static cache, each step replayed from a CUDA graph on CUDA; False: eager
    static_cache_off_cuda: bool = False  # the static-cache drafter off CUDA too, its steps eager (the own loop's
    # chains always draft so: a static cache rolls back on any transformers version)
    round_costs: RoundCosts | None = None  # what an automatic tree shape is chosen by (`budget.py`); None: those
    # measured at first use on each target, device and drafting mode
    head_kernel: str = "triton"  # the shortlist head's cluster blocks: "triton" reads them in place on CUDA,
    # "gather" copies them (`ShortlistHead.forward`); steps captured already keep the kernel they were captured with


class StaticDraftCache:
    """What the assisted loop holds between draft blocks: a length over `GraphDrafter`'s static cache."""

    def __init__(self, drafter: "GraphDrafter"):
        self.drafter, self.length = drafter, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def crop(self, max_length: int) -> None:
        """`DynamicCache.crop` semantics: a negative value drops that many tokens, a positive one keeps that many."""
        self.length = max(self.length + max_length if max_length < 0 else min(max_length, self.length), 0)


class GraphDrafter:
    """Drafts blocks for one `DynaSpecAssistant` on CUDA (batch 1) with CUDA-graph-replayed steps."""

    def __init__(self, assistant, max_length: int = 2048, use_graphs: bool = True, route: bool = True,
                 compile_options: dict | None = None):
        self.assistant, self.max_length, self.use_graphs, self.route = assistant, max_length, use_graphs, route
        self.device, self.dtype = device, dtype = assistant.device, assistant.dtype
        self.body = StaticCacheModel(assistant.drafter, max_length, compile_options)
        # the head after the body, compiled where the body is (a step replays both from one graph)
        self.greedy_draft_token = compiled(assistant.greedy_draft_token, compile_options)
        self.draft_step = compiled(assistant.draft_step, compile_options)
        self.sampled_draft_step = compiled(self._sampled_draft_step, compile_options)
        hidden_size = assistant.config.drafter_config.hidden_size
        self.tokens = torch.zeros(1, MAX_GRAPH_TOKENS, dtype=torch.long, device=device)
        self.previous = torch.zeros(1, hidden_size, dtype=dtype, device=device)  # body output of the last step
        self.logits = torch.zeros(1, assistant.config.vocab_size, dtype=torch.float32, device=device)
        # a step's draft and its runner-ups (greedy ones without logits)
        self.tokens_drafted = torch.zeros(1, MAX_GRAPH_TOKENS, dtype=torch.long, device=device)
        self.router_stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # None: CPU, for tests
        self.index = assistant.lm_head.index()
        # the text's most recent distinct tokens, refreshed in place at the start of every block; a step with c
        # context slots reads the first c (the most recent), so one buffer serves every schedule
        self.context = torch.full((1, assistant.config.max_context_tokens), -1, dtype=torch.long, device=device)
        self.context_length = 0  # the length of the committed text `context` describes
        self.new_tokens = torch.zeros(1, MAX_GRAPH_TOKENS, dtype=torch.long, device=device)  # committed since then
        self.active: StaticDraftCache | None = None
        with torch.cuda.device(device) if self.router_stream is not None else nullcontext():
            # the static layers allocate on their first write: one eager forward of the body at position 0
            self.body.forward(self.tokens[:, :1], self.tokens.new_zeros(1), causal(1, device))
            self.body.set_length(0)

    @property
    def graphs(self) -> dict:
        return self.body.graphs

    def _step(self, ids: torch.Tensor, shortlist: Shortlist, likeliest: int = 0, draws: int = 0,
              processors=None) -> None:
        """Body over `ids` at the cache's write position, then router + head over `shortlist` (core tokens, routed
        clusters, context slots, tail: `config.shortlist_at`).

        Writes the full-vocabulary logits (`-inf` outside the shortlist, or the tail's estimate) to `self.logits`,
        or with `likeliest` = n only the n likeliest tokens (a greedy draft and its runner-ups) to
        `self.tokens_drafted`; with `draws` = n the logits through `processors` (score-only ones) and n draws from
        them without replacement (a sampled draft and its runner-ups) to `self.tokens_drafted`. Also the last
        hidden state to `self.previous`. Only device operations: this is what the graphs capture.
        """
        assistant, num_tokens = self.assistant, ids.shape[1]
        positions = torch.arange(num_tokens, device=ids.device) + self.body.write_position

        k = shortlist.clusters
        routed = 0 < k < assistant.config.num_clusters
        streams = self.router_stream is not None
        routing = None  # unrouted (no clusters, or all of them): `draft_step` needs no router pass
        if routed and num_tokens == 1:  # inputs ready now: route while the body runs
            if streams:
                self.router_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.router_stream) if streams else nullcontext():
                routing = self._routing(self.previous, ids[:, -1], shortlist)
        states = self.body.forward(ids, positions, causal(num_tokens, ids.device)).last_hidden_state[0]
        hidden = states[-1:]
        if routed and num_tokens > 1:
            routing = self._routing(states[-2:-1], ids[:, -1], shortlist)
        elif routed and streams:
            main = torch.cuda.current_stream()
            main.wait_stream(self.router_stream)  # the join: an event recorded on the router stream
            if not torch.cuda.is_current_stream_capturing():
                for tensor in routing:
                    if tensor is not None:
                        tensor.record_stream(main)
        # a step with c context slots reads the first c (most recent) of the buffer
        if likeliest:
            self.tokens_drafted[:, :likeliest].copy_(self.greedy_draft_token(
                hidden, self.previous, ids[:, -1], shortlist, self.index, self.context, routing, count=likeliest))
        elif draws:
            logits, tokens = self.sampled_draft_step(hidden, ids[:, -1], shortlist, routing, processors, draws)
            self.logits.copy_(logits)
            self.tokens_drafted[:, :draws].copy_(tokens)
        else:
            self.logits.copy_(self.draft_step(hidden, self.previous, ids[:, -1], shortlist, self.index, self.context,
                                              routing))
        self.previous.copy_(hidden)

    def _sampled_draft_step(self, hidden, token_ids, shortlist: Shortlist, routing, processors, draws: int):
        """Router + head, the processors and `draws` draws without replacement: a sampled step in one compiled
        function, so that the draw runs inside the step's graph instead of after it on the host."""
        logits = self.assistant.draft_step(hidden, self.previous, token_ids, shortlist, self.index, self.context,
                                           routing)
        logits = processors(None, logits) if processors else logits
        return logits, draft_tokens(logits, do_sample=True, runner_ups=draws - 1)

    def _refresh_context(self, input_ids: torch.Tensor, new_text: bool) -> None:
        """The context slots for the committed text `input_ids`: updated by the tokens committed since the last
        block (replayed from a graph per count, as the tree drafter's prefix does), not recomputed over the whole
        text, which costs a dozen eager operations a block; recomputed for a `new_text` or more new tokens than a
        step reads."""
        new = input_ids.shape[1] - self.context_length
        self.context_length = input_ids.shape[1]
        if new_text or not 0 <= new <= MAX_GRAPH_TOKENS:
            self.context.copy_(self.assistant.context_tokens(input_ids, size=self.context.shape[1]))
            return
        if new:
            tokens = self.new_tokens[:, :new]
            tokens.copy_(input_ids[:, -new:])
            self.body.run(("context", new) if self.use_graphs else None, lambda: self.context.copy_(
                self.assistant.context_tokens(tokens, size=self.context.shape[1], recent=self.context)),
                keep=(self.context,))

    def _routing(self, previous: torch.Tensor, token_ids: torch.Tensor, shortlist) -> tuple:
        k, tail = shortlist.clusters, shortlist.tail
        if not self.route:  # for measuring the router's cost: the same head work on fixed clusters
            scores = torch.zeros(1, self.assistant.config.num_clusters, device=token_ids.device)
            return torch.arange(k, device=token_ids.device)[None], scores.log_softmax(-1) if tail else None
        return self.assistant.routing(previous, token_ids, k, tail)

    def step(self, ids: torch.Tensor, shortlist: Shortlist, prompt: bool = False, likeliest: int = 0,
             draws: int = 0, processors=None) -> None:
        """One draft step over `ids` (`_step`: body, router, head; the result in `self.logits`, and with
        `likeliest` or `draws` the drafted tokens in `self.tokens_drafted`), replayed from its graph when it has a
        graph shape (a `prompt`'s read, whose length varies, runs eagerly: it is never captured or compiled); head
        counters count it once."""
        head = self.assistant.lm_head
        rows, calls = head.rows_computed, head.calls
        if not self.use_graphs or prompt or ids.shape[1] > MAX_GRAPH_TOKENS:
            self._step(ids, shortlist, likeliest, draws, processors)
        else:
            tokens = self.tokens[:, : ids.shape[1]]
            tokens.copy_(ids)
            self.body.run((ids.shape[1], *shortlist, likeliest, draws, processors_key(processors)),
                          lambda: self._step(tokens, shortlist, likeliest, draws, processors), keep=(self.previous,))
        head.rows_computed = rows + shortlist.core + shortlist.clusters * self.assistant.config.cluster_size + \
            shortlist.context
        head.calls = calls + 1

    def release(self) -> None:
        """Free the captured graphs now, outside any capture (the schedule they were captured for changed)."""
        self.body.release()

    @torch.no_grad()
    def draft(self, input_ids: torch.LongTensor, max_new_tokens: int, past_key_values: StaticDraftCache | None = None,
              options: DraftOptions | None = None) -> GenerateDecoderOnlyOutput:
        """`DynaSpecAssistant.draft` on the static cache; the stopping rule is applied once, after the block
        (`kept_drafts`). `options.keep_scores=False`: the caller reads only the tokens, so greedy steps without
        processors or a confidence rule draft from the shortlist's rows (`greedy_draft_token`, runner-ups too),
        and `scores` comes back empty."""
        with torch.cuda.device(self.device) if self.router_stream is not None else nullcontext():
            return self._draft(input_ids, max_new_tokens, past_key_values, options or DraftOptions())

    def _draft(self, input_ids, max_new_tokens: int, past_key_values, options: DraftOptions):
        """`draft` on the assistant's GPU (its streams and graphs belong there)."""
        length = input_ids.shape[1]
        logits_processor, do_sample = options.logits_processor, options.do_sample
        cache = past_key_values if past_key_values is not None else StaticDraftCache(self)
        if cache.drafter is not self or self.active is not cache:
            cache.length = 0  # a new generation, or another one used the static cache since
        self.active = cache
        start = min(max(length - 2, 0), cache.length)
        if start == 0:
            self.previous.zero_()
        self.body.set_length(start)
        if self.context.shape[1]:
            self._refresh_context(input_ids, new_text=start == 0)
        tokens_only = not (options.keep_scores or do_sample or len(logits_processor) or options.confidence_threshold)
        # a sampled step draws inside its graph where the processors read only the scores
        draws = 1 + options.runner_ups if do_sample and reads_only_scores(logits_processor) else 0
        sequences, scores, drawn = input_ids, [], []
        for position in range(max_new_tokens):
            shortlist = self.assistant.config.shortlist_at(position, options.temperature)
            likeliest = 1 + options.runner_ups if tokens_only and not shortlist.tail else 0
            self.step(input_ids[:, start:] if position == 0 else sequences[:, -1:], shortlist,
                      prompt=position == 0 and start == 0, likeliest=likeliest, draws=draws,
                      processors=logits_processor if draws else None)
            logits = None if likeliest else self.logits.clone()
            if likeliest or draws:  # drafted inside the step
                drawn.append(self.tokens_drafted[:, : likeliest or draws].clone())
            else:
                if len(logits_processor):
                    logits = logits_processor(sequences, logits)
                drawn.append(draft_tokens(logits, do_sample, options.runner_ups))
            sequences = torch.cat([sequences, drawn[-1][:, :1]], dim=-1)
            scores.append(logits)
        cache.length = length + max(max_new_tokens - 1, 0)
        keep = kept_drafts(sequences[:, length:], scores, options)
        return draft_output(sequences[:, : length + keep], tuple(scores[:keep]) if options.keep_scores else (), cache,
                            drawn[:keep], options.runner_ups)


def draft_block(assistant, input_ids, max_new_tokens: int, past_key_values=None, attention_mask=None,
                compile_options: dict | None = None, static_cache: bool = False, **options):
    """A block of up to `max_new_tokens` drafts after `input_ids`: on the chain drafter's static cache where it
    serves (batch 1, no padding, `assistant.drafting` allows it), its steps replayed from CUDA graphs on CUDA and
    compiled by `torch.compile(**compile_options)` when they are given; else eagerly (`eager_draft.draft_eagerly`,
    the path of batches, padding and the CPU). `static_cache`: the static cache off CUDA too, its steps eager (the
    own loop's chains: a static cache rolls back on any transformers version). `options`: `DraftOptions`' fields."""
    options = DraftOptions(**options)
    usable = (assistant.drafting.cuda_graphs and input_ids.shape[0] == 1
              and (assistant.device.type == "cuda" or assistant.drafting.static_cache_off_cuda or static_cache)
              and (past_key_values is None or isinstance(past_key_values, StaticDraftCache))
              and (attention_mask is None or bool(attention_mask.all())))  # batch 1, no padding
    if not usable:
        return draft_eagerly(assistant, input_ids, max_new_tokens, options, past_key_values, attention_mask)
    assistant.check_token_ids(input_ids)
    drafter = chain_drafter(assistant, input_ids.shape[1] + max_new_tokens, compile_options)
    return drafter.draft(input_ids, max_new_tokens, past_key_values, options)


def chain_drafter(assistant, length: int, compile_options: dict | None = None) -> GraphDrafter:
    """The static-cache chain drafter for drafts reaching `length` positions, kept on the assistant between calls
    (`engines.py`)."""
    settings = (assistant.device, assistant.dtype, assistant.config.max_context_tokens, compile_options)
    # transformers' loop asks block by block and never says how long the generation will get: a cache of 2,048
    # positions at least spares most generations a rebuild (and its graph captures) midway
    return engine_for(assistant, "chain drafter", length, settings,
                      lambda size: GraphDrafter(assistant, size, compile_options=compile_options), minimum=2048)
