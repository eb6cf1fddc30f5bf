"""A model on a static KV cache whose forwards replay CUDA graphs: what the fast drafter and the fast verifier share.

The forwards speculative decoding runs (a small drafter over one token, a target over a few) are bound by Python
and kernel launches, not by the GPU; one graph replay per forward removes both. A graph needs fixed addresses and
shapes, so the cache is static: rolling back is moving the write position back, and entries beyond it are masked.
The caller keeps a forward's inputs (tokens, positions, which of them see which) in buffers it fills before a
replay; the mask over the cache is computed inside the graph from the write position, so it follows rollbacks.

A graph removes launches but not kernels: a transformers layer at batch 1 is some 40 small kernels. With
`compile_options`, the forwards of keyed steps (those graphs are captured for), masks included, go through
`torch.compile`, whose fused kernels the graph then replays; prompts run unkeyed and eagerly, so they never
trigger a compile.

Every layer keeps every position, sliding-window layers too (a ring buffer would overwrite what a rollback needs):
the window is applied by the mask, one per layer type for models that interleave local and global attention.
"""

from __future__ import annotations

import functools
import gc
import warnings
from contextlib import nullcontext
from typing import Callable, Hashable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.cache_utils import Cache, StaticLayer

from .compat import cache_keyword, many_compiled_shapes

# Float32 forwards of at most this many tokens attend through SDPA's math backend. With a mask, SDPA otherwise
# picks its memory-efficient kernel, which splits the work by head and query block only: for a few query tokens it
# streams every key of the static cache through one block per head, and attention dominates the round. In bf16 the
# math backend, which computes in float32, is the slower one, so half-precision forwards keep SDPA's choice
# (BENCHMARKS.md's history has the measurements).
SHORT_FORWARD = 64


class StaticCacheModel:
    """`model` (a transformers body or causal LM) on a static cache of `max_length` positions, batch 1.
    `compile_options`: `torch.compile` keyword arguments for the fixed-shape forwards (None: not compiled)."""

    def __init__(self, model, max_length: int, compile_options: dict | None = None):
        config = model.config.get_text_config()
        self.model, self.max_length, self.compile_options = model, max_length, compile_options
        # the model itself is left as it is. torch's default `dynamic=None` compiles a step's first length (one
        # token, the tree's width, the padded verification pass) for that length alone and the re-reads of
        # accepted tokens, whose lengths vary, once for all lengths: about 3 compiles per model (7 for a chain
        # drafter with `dynamic=False`, counted on the CPU), each up to ~40 s for a 16-layer 2,048-wide body
        self.compiled = None if compile_options is None else torch.compile(self._masked_forward, **compile_options)
        self._fixed_shape = False  # inside `run` with a key: the forward may be the compiled one
        self.device, self.dtype = model.device, model.dtype
        self.cache = Cache(layers=[StaticLayer(max_cache_len=max_length) for _ in range(config.num_hidden_layers)])
        self.window = getattr(config, "sliding_window", None)
        self.masks_by_layer_type = getattr(config, "layer_types", None) is not None
        self.key_slots = torch.arange(max_length, device=self.device)
        self._length = torch.zeros((), dtype=torch.long, device=self.device)  # `set_length`'s source
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph | None] = {}
        # one graph captures one device's work: a model spread over GPUs (`device_map`) runs eagerly
        self.capturable = self.device.type == "cuda" and len(set(getattr(model, "hf_device_map", {}).values())) <= 1

    @property
    def write_position(self) -> torch.Tensor | int:
        """Where the next forward writes: the length of the cached text (a device tensor once allocated)."""
        layer = self.cache.layers[0]
        return layer.cumulative_length if layer.is_initialized else 0

    def set_length(self, length: int | torch.Tensor) -> None:
        """Keep the first `length` cached positions (what follows is overwritten by the next forward). Every layer
        keeps its own write position; one multi-tensor copy sets them all (a fill per layer would be a launch per
        layer). A device scalar `length` may be read inside a captured graph."""
        lengths = [layer.cumulative_length for layer in self.cache.layers if layer.is_initialized]
        if not lengths:
            return
        if not isinstance(length, torch.Tensor):
            length = self._length.fill_(length)
        torch._foreach_copy_(lengths, [length] * len(lengths))

    def attention_mask(self, positions: torch.Tensor, block: torch.Tensor,
                       base: int | torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks for a forward of `len(positions)` tokens written at the write position.

        Keys before `base` (default: the write position), the committed text, are seen by every token, within the
        window. The `S` keys from `base` on (`S - T` written by earlier forwards of a token tree, then the forward's
        own `T`) are seen as `block` (`[T, S]` bool, query row sees key column) says: a causal chain, or a token
        tree. Keys beyond, left by a rollback, are masked. Transformers uses a 4D mask as given.
        """
        span = block.shape[1]
        relative = self.key_slots - (self.write_position if base is None else base)
        own = block[:, relative.clamp(0, span - 1)] & ((relative >= 0) & (relative < span))[None]
        allowed = (relative < 0)[None] | own
        if self.window is None:
            return self._additive(allowed)
        windowed = self._additive(allowed & (self.key_slots[None] > positions[:, None] - self.window))
        if self.masks_by_layer_type:  # models with `layer_types` take one mask per type
            return {"full_attention": self._additive(allowed), "sliding_attention": windowed}
        return windowed  # every layer slides (Mistral, Phi-3)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, block: torch.Tensor,
                base: int | torch.Tensor | None = None, **kwargs):
        """The model over `ids` `[1, T]` at `positions` `[T]`, written at the write position (masks as
        `attention_mask` says)."""
        short = ids.shape[1] <= SHORT_FORWARD and self.dtype == torch.float32
        kwargs[cache_keyword(self.model)] = self.cache
        # inside a larger compiled function (a tree's node forward), the forward is traced as part of it
        fixed = self._fixed_shape and self.compiled is not None and not torch.compiler.is_compiling()
        forward = self.compiled if fixed else self._masked_forward
        with sdpa_kernel([SDPBackend.MATH]) if short else nullcontext():
            return forward(ids, positions, block, base, kwargs)

    def _masked_forward(self, input_ids, positions, block, base, kwargs):
        """The mask, then the model: what `compile_options` compiles, so the mask's operations fuse too."""
        return self.model(input_ids=input_ids, attention_mask=self.attention_mask(positions, block, base),
                          position_ids=positions[None], use_cache=True, **kwargs)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(mask.dtype).min)[None, None]

    def run(self, key: Hashable | None, step: Callable[[], None], keep: tuple[torch.Tensor, ...] = ()) -> None:
        """Run `step` (device work only, reading and writing static buffers), replayed from the graph captured for
        `key` on one GPU. `key=None` (shapes that vary), the CPU and several GPUs run it eagerly. `keep`: buffers
        the step writes that must hold their values from before the capture (the warm-up runs it once for real).
        A keyed step's forwards have fixed shapes: they are the compiled ones where `compile_options` asks for it."""
        if key is None:
            step()
            return
        self._fixed_shape = True
        try:
            graph = self.graphs.get(key)
            if graph is None:  # not captured yet, not capturable, or its capture failed: this may compile
                with many_compiled_shapes() if self.compiled is not None else nullcontext():
                    if self.capturable and key not in self.graphs:
                        self.graphs[key] = graph = self._capture(key, step, keep)
                    if graph is None:
                        step()
            if graph is not None:
                graph.replay()
        finally:
            self._fixed_shape = False

    def _capture(self, key, step, keep) -> torch.cuda.CUDAGraph | None:
        """Warm up on a side stream (as CUDA graphs require), then capture; nothing it ran is kept. A compiled step
        warms up twice: its first call may compile for one shape and its second recompile for several (torch's
        automatic dynamic shapes), and a capture cannot compile."""
        start, saved = self.write_position, [tensor.clone() for tensor in keep]
        start = start.clone() if isinstance(start, torch.Tensor) else start  # an int: the layers allocate now
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream())
        for _ in range(1 if self.compiled is None else 2):
            with torch.cuda.stream(side):
                step()
                self._restore(start, keep, saved)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()  # a collection during capture could free another graph, which invalidates this capture
        try:
            with torch.cuda.graph(graph):
                step()
        except RuntimeError as error:  # a shape that cannot be captured still runs, eagerly
            warnings.warn(f"{type(self.model).__name__} forward {key} runs eagerly: CUDA graph capture failed ({error}).")
            graph = None
        finally:
            if collecting:
                gc.enable()
        self._restore(start, keep, saved)
        return graph

    def _restore(self, length, keep, saved) -> None:
        """Undo a warm-up or capture: the cache back to `length`, the `keep` buffers back to `saved`."""
        self.set_length(length)
        for tensor, value in zip(keep, saved):
            tensor.copy_(value)

    def release(self) -> None:
        """Free the captured graphs now, outside any capture."""
        for graph in self.graphs.values():
            if graph is not None:
                graph.reset()
        self.graphs.clear()


def causal(count: int, device=None) -> torch.Tensor:
    """`[count, count]` bool block of a chain: each token sees itself and the tokens before it."""
    return torch.ones(count, count, dtype=torch.bool, device=device).tril_()


def compiled(function: Callable, compile_options: dict | None) -> Callable:
    """`function` through `torch.compile(**compile_options)` (static shapes), or as it is for None: the device work
    around a compiled forward (a head, a tree's bookkeeping), fused as the forward is. Every assistant and shortlist
    shape adds a compiled entry to the one function, so calls raise dynamo's recompile limit as keyed steps do (past
    it, dynamo would run the function eagerly)."""
    if compile_options is None:
        return function
    compiled_function = torch.compile(function, **{"dynamic": False, **compile_options})

    @functools.wraps(function)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():  # called by a larger compiled function: traced as part of it
            return function(*args, **kwargs)
        with many_compiled_shapes():
            return compiled_function(*args, **kwargs)
    return call
