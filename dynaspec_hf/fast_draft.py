"""Fast drafting on CUDA: the drafter on a static KV cache, each draft step replayed from a captured CUDA graph.

Eager drafting of a small model is bound by Python and kernel-launch overhead, not by the GPU, so a shortlist head
only pays off once a draft step is one graph replay. `GraphDrafter` keeps one graph per step shape (tokens read
by the body; core, routed clusters and context slots of the draft position's shortlist), so schedules and
temperature bands with the same step shapes share graphs. Inside each graph the router runs on its own stream: on a
one-token step its inputs (the previous hidden state and the current token's embedding) are ready before the
body starts, so routing overlaps the body and joins the head through an event.

The static cache is handed to transformers' assisted loop as a `StaticDraftCache`: the loop only asks its length
and crops it, and cropping is moving the write position back (entries beyond it are masked by position). Every
layer keeps every position, sliding-window layers too (a ring buffer would overwrite what a rollback needs); the
window is applied by the mask, one per layer type for models that interleave local and global attention.
"""

from __future__ import annotations

import gc
import warnings
from contextlib import nullcontext

import torch
from transformers import LogitsProcessorList
from transformers.cache_utils import Cache, StaticLayer
from transformers.generation import GenerateDecoderOnlyOutput

from .draft_output import draft_output

MAX_GRAPH_TOKENS = 16  # body inputs per captured step; longer re-reads (the first prompt) run eagerly


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

    def __init__(self, assistant, max_length: int = 2048, use_graphs: bool = True, route: bool = True):
        self.assistant, self.max_length, self.use_graphs, self.route = assistant, max_length, use_graphs, route
        self.device, self.dtype = device, dtype = assistant.device, assistant.dtype
        config = assistant.config.drafter_config
        self.cache = Cache(layers=[StaticLayer(max_cache_len=max_length) for _ in range(config.num_hidden_layers)])
        self.window = getattr(config, "sliding_window", None)
        self.masks_by_layer_type = getattr(config, "layer_types", None) is not None
        hidden_size = config.hidden_size
        self.tokens = torch.zeros(1, MAX_GRAPH_TOKENS, dtype=torch.long, device=device)
        self.previous = torch.zeros(1, hidden_size, dtype=dtype, device=device)  # body output of the last step
        self.logits = torch.zeros(1, assistant.config.vocab_size, dtype=torch.float32, device=device)
        self.key_positions = torch.arange(max_length, device=device)
        self.router_stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # None: CPU, for tests
        self.graphs: dict[tuple[int, int, int, int], torch.cuda.CUDAGraph] = {}
        self.index = assistant.lm_head.index()
        # the text's most recent distinct tokens, refreshed in place at the start of every block; a step with c
        # context slots reads the first c (the most recent), so one buffer serves every schedule
        self.context = torch.full((1, assistant.config.max_context_tokens), -1, dtype=torch.long, device=device)
        self.active: StaticDraftCache | None = None
        with torch.cuda.device(device) if self.router_stream is not None else nullcontext():
            self._initialize_cache()

    def _initialize_cache(self) -> None:
        """Allocate the static layers (they allocate on their first write) with one eager step at position 0."""
        self._step(self.tokens[:, :1], self.assistant.config.shortlist_at(0))
        self._set_length(0)

    def _set_length(self, length: int | torch.Tensor) -> None:
        for layer in self.cache.layers:
            if isinstance(length, torch.Tensor):
                layer.cumulative_length.copy_(length)
            elif layer.is_initialized:
                layer.cumulative_length.fill_(length)

    def _step(self, ids: torch.Tensor, shortlist: tuple[int, int, int]) -> None:
        """Body over `ids` at the cache's write position, then router + head over `shortlist` (core tokens, routed
        clusters, context slots: `config.shortlist_at`).

        Writes the full-vocabulary logits (`-inf` outside the shortlist) to `self.logits` and the last hidden state
        to `self.previous`. Only device operations: this is what the graphs capture.
        """
        assistant, num_tokens = self.assistant, ids.shape[1]
        layer = self.cache.layers[0]
        start = layer.cumulative_length if layer.is_initialized else 0
        positions = torch.arange(num_tokens, device=ids.device) + start
        mask = self._attention_mask(positions)

        num_core, k, context = shortlist
        routed = 0 < k < assistant.config.num_clusters
        streams = self.router_stream is not None
        if routed and num_tokens == 1:  # inputs ready now: route while the body runs
            if streams:
                self.router_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.router_stream) if streams else nullcontext():
                cluster_ids = self._clusters(self.previous, ids[:, -1], k)
        states = assistant.drafter(
            input_ids=ids, attention_mask=mask, position_ids=positions[None], past_key_values=self.cache, use_cache=True
        ).last_hidden_state[0]
        hidden = states[-1:]
        if routed and num_tokens > 1:
            cluster_ids = self._clusters(states[-2:-1], ids[:, -1], k)
        elif routed and streams:
            main = torch.cuda.current_stream()
            main.wait_stream(self.router_stream)  # the join: an event recorded on the router stream
            if not torch.cuda.is_current_stream_capturing():
                cluster_ids.record_stream(main)
        elif not routed:
            cluster_ids = ids.new_empty(1, 0) if k == 0 else None
        context_ids = self.context[:, :context] if context else None  # the most recent `context` of the buffer
        head = assistant.lm_head(hidden, cluster_ids, num_core, self.index, context_ids)
        self.logits.copy_(assistant._spread(*head))
        self.previous.copy_(hidden)

    def _attention_mask(self, positions: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks over the static cache: causal, and within the window for sliding-window layers (keys
        beyond the write position, left by a rollback, are masked too). Transformers uses a 4D mask as given."""
        keys, queries = self.key_positions[None, :], positions[:, None]
        causal = keys <= queries
        if self.window is None:
            return self._additive(causal)
        windowed = self._additive(causal & (keys > queries - self.window))
        if self.masks_by_layer_type:  # models with `layer_types` take one mask per type
            return {"full_attention": self._additive(causal), "sliding_attention": windowed}
        return windowed  # every layer slides (Mistral, Phi-3)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.previous.dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(mask.dtype).min)[None, None]

    def _clusters(self, previous: torch.Tensor, token_ids: torch.Tensor, k: int) -> torch.Tensor:
        if not self.route:  # for measuring the router's cost: the same head work on fixed clusters
            return torch.arange(k, device=token_ids.device)[None]
        return self.assistant.route(previous, token_ids, k)

    def _run(self, ids: torch.Tensor, shortlist: tuple[int, int, int]) -> None:
        """One step, replayed from its graph when it has a graph shape; head counters count it once."""
        head = self.assistant.lm_head
        rows, calls = head.rows_computed, head.calls
        if not self.use_graphs or self.router_stream is None or ids.shape[1] > MAX_GRAPH_TOKENS:
            self._step(ids, shortlist)
        else:
            self.tokens[:, : ids.shape[1]].copy_(ids)
            key = (ids.shape[1], *shortlist)
            if key not in self.graphs:
                self.graphs[key] = self._capture(ids.shape[1], shortlist)
            if self.graphs[key] is None:
                self._step(ids, shortlist)
            else:
                self.graphs[key].replay()
        num_core, k, context = shortlist
        head.rows_computed = rows + num_core + k * self.assistant.config.cluster_size + context
        head.calls = calls + 1

    def _capture(self, num_tokens: int, shortlist: tuple[int, int, int]) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (as CUDA graphs require), then capture; nothing it ran is kept."""
        start, previous = self.cache.layers[0].cumulative_length.clone(), self.previous.clone()
        ids = self.tokens[:, :num_tokens]
        side = torch.cuda.Stream(self.previous.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(ids, shortlist)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()  # a collection during capture could free another graph, which invalidates this capture
        try:
            with torch.cuda.graph(graph):
                self._step(ids, shortlist)
        except RuntimeError as error:  # a step shape that cannot be captured still runs, eagerly
            warnings.warn(f"Draft step ({num_tokens} tokens, shortlist {shortlist}) runs eagerly: capture failed "
                          f"({error}).")
            graph = None
        finally:
            if collecting:
                gc.enable()
        self._set_length(start)
        self.previous.copy_(previous)
        return graph

    def release(self) -> None:
        """Free the captured graphs now, outside any capture (the schedule they were captured for changed)."""
        for graph in self.graphs.values():
            if graph is not None:
                graph.reset()
        self.graphs.clear()

    @torch.no_grad()
    def draft(self, *args, **kwargs) -> GenerateDecoderOnlyOutput:
        """`DynaSpecAssistant.draft` on the static cache; stopping rules are applied once, after the block."""
        with torch.cuda.device(self.device) if self.router_stream is not None else nullcontext():
            return self._draft(*args, **kwargs)  # streams and graphs belong to the assistant's GPU

    def _draft(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int,
        past_key_values: StaticDraftCache | None,
        *,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        logits_processor: LogitsProcessorList | None = None,
        eos_token_id: list[int] | None = None,
        confidence_threshold: float | None = None,
        temperature: float = 0.0,
    ) -> GenerateDecoderOnlyOutput:
        length = input_ids.shape[1]
        logits_processor = LogitsProcessorList(logits_processor or [])  # the assisted loop passes a plain list
        cache = past_key_values if past_key_values is not None else StaticDraftCache(self)
        if cache.drafter is not self or self.active is not cache:
            cache.length = 0  # a new generation, or another one used the static cache since
        self.active = cache
        start = min(max(length - 2, 0), cache.length)
        if start == 0:
            self.previous.zero_()
        self._set_length(start)
        if self.context.shape[1]:
            self.context.copy_(self.assistant.context_tokens(input_ids, size=self.context.shape[1]))
        sequences, scores = input_ids, []
        for position in range(max_new_tokens):
            shortlist = self.assistant.config.shortlist_at(position, temperature)
            self._run(input_ids[:, start:] if position == 0 else sequences[:, -1:], shortlist)
            logits = self.logits.clone()
            if len(logits_processor):
                logits = logits_processor(sequences, logits)
            if do_sample:
                token = torch.multinomial(logits.softmax(dim=-1), 1)
            else:
                token = logits.argmax(dim=-1, keepdim=True)
            sequences = torch.cat([sequences, token], dim=-1)
            scores.append(logits)
        cache.length = length + max(max_new_tokens - 1, 0)
        keep = _stop_index(sequences[0, length:], scores, min_new_tokens, eos_token_id, confidence_threshold)
        return draft_output(sequences[:, : length + keep], tuple(scores[:keep]), cache)


def _stop_index(tokens, scores, min_new_tokens, eos_token_id, confidence_threshold) -> int:
    """How many drafted tokens the eager loop would have kept (it stops after an EOS or an unconfident token)."""
    count = tokens.shape[0]
    stop = torch.zeros(count, dtype=torch.bool, device=tokens.device)
    if eos_token_id:
        stop |= torch.isin(tokens, torch.tensor(eos_token_id, device=tokens.device))
    if confidence_threshold:
        probs = torch.stack([s[0].softmax(-1)[t] for s, t in zip(scores, tokens)])
        stop |= probs < confidence_threshold
    stop[: max(min_new_tokens - 1, 0)] = False
    hits = stop.nonzero()
    return count if hits.numel() == 0 else int(hits[0, 0]) + 1
