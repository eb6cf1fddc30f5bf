"""Timing device work for the benchmark scripts."""

from __future__ import annotations

from typing import Callable

import torch


def cuda_ms(fn: Callable[[], object], repeats: int = 100, warmup: int = 10,
            before: Callable[[], object] | None = None) -> float:
    """Median time of `fn()` in milliseconds, timed with CUDA events. `before()`, if given, runs untimed ahead of
    every call (state a graph replay needs reset, say)."""
    times = []
    for number in range(warmup + repeats):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if number >= warmup:
            times.append(start.elapsed_time(end))
    return float(torch.tensor(times).median())
