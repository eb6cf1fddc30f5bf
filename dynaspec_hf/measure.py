"""Counting what speculative decoding did: target forward passes, hence the mean accepted length τ; and where a
greedy output left the target's own, how close a call that was."""

from __future__ import annotations

import time
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


@torch.no_grad()
def gap_at_first_difference(model, expected: torch.Tensor, got: torch.Tensor) -> tuple[int, float] | None:
    """Where token sequence `got` first leaves `expected` (the model's own greedy sequence; 1-D, or `[1, length]`)
    and the model's top-two logit gap there, or None where they agree. A gap near the dtype's rounding says that two
    passes of different shapes broke a near-tie differently (batched and one-token kernels round differently); a
    clear gap says the method is wrong."""
    expected, got = expected.flatten().cpu(), got.flatten().cpu()
    length = min(len(expected), len(got))
    differ = (expected[:length] != got[:length]).nonzero()
    if not len(differ) and len(expected) == len(got):
        return None
    position = int(differ[0]) if len(differ) else length
    top = model(expected[None, :position].to(model.device)).logits[0, -1].float().topk(2).values
    return position, float(top[0] - top[1])


def mean_accepted_length(new_tokens: int, target_calls: int) -> float:
    """τ: tokens produced per target forward pass (1.0 for plain decoding)."""
    return new_tokens / max(target_calls, 1)


@torch.no_grad()
def measure_generation(target, prompts: list[torch.Tensor], assistant=None, *, max_new_tokens: int, do_sample=False,
                       reference: list[torch.Tensor] | None = None, **generate_kwargs) -> dict:
    """Generate for every prompt through the unchanged `target.generate(assistant_model=...)`.

    Returns τ (new tokens per target forward pass), tokens/s, and, given `reference` outputs, how many prompts
    were reproduced token for token.
    """
    outputs, new_tokens, calls, seconds = [], 0, 0, 0.0
    for prompt in prompts:
        ids = prompt[None].to(target.device)
        if target.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with count_forward_calls(target) as counted:
            out = target.generate(ids, assistant_model=assistant, do_sample=do_sample, max_new_tokens=max_new_tokens,
                                  **generate_kwargs)
        if target.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        outputs.append(out[0, ids.shape[1] :].cpu())
        new_tokens += outputs[-1].numel()
        calls += counted[0]
    result = {"tau": mean_accepted_length(new_tokens, calls), "tokens": new_tokens, "seconds": seconds,
              "tokens_per_s": new_tokens / seconds, "outputs": outputs}
    if reference is not None:
        result["exact"] = sum(torch.equal(a, b) for a, b in zip(outputs, reference))
    return result
