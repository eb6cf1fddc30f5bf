"""Counting what speculative decoding did: target forward passes, hence the mean accepted length τ."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def count_forward_calls(model: torch.nn.Module):
    """Yields a one-element list holding the number of `model.forward` calls made inside the block."""
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def mean_accepted_length(new_tokens: int, target_calls: int) -> float:
    """τ: tokens produced per target forward pass (1.0 for plain decoding)."""
    return new_tokens / max(target_calls, 1)
