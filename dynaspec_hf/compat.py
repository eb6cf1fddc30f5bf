"""Every shim between dynaspec-hf and the transformers / torch versions it supports (transformers 5.17 to the newest
5.x, torch 2.4 on), in one place: a new release that renames or changes something is met here."""

from __future__ import annotations

import functools
import inspect

import torch
import transformers
from transformers.cache_utils import DynamicSlidingWindowLayer

# ---------------------------------------------------------------------------------------------------------------
# the cache's name: `past_key_values` up to transformers 5.23, `cache` from 5.24 (the old name goes in 5.40)


def cache_field(output_class) -> str:
    """The cache field of a transformers `ModelOutput` class under the installed version."""
    return "cache" if "cache" in output_class.__dataclass_fields__ else "past_key_values"


def output_cache(output):
    """The KV cache of any transformers `ModelOutput` (a body's, a causal LM's, a draft block's), read without the
    deprecated name."""
    return getattr(output, cache_field(type(output)))


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_keyword(model) -> str:
    """The keyword a transformers model's forward takes its KV cache by: `cache` where the model has it, else
    `past_key_values`."""
    return _cache_keyword(type(model).forward)


# ---------------------------------------------------------------------------------------------------------------
# rolling a dynamic cache back: `Cache.crop` counts from the end, and sliding-window layers must record their past


def record_past(cache) -> None:
    """Make the sliding-window layers of `cache` keep states past their window until the next `crop`, so a draft
    block can be rolled back (a no-op on versions without sliding-window layers that drop them)."""
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()


def crop_cache(cache, length: int) -> None:
    """Keep the first `length` positions of `cache`."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


@functools.cache
def sliding_layers_roll_back() -> bool:
    """Whether this transformers' sliding-window cache layers, recording their past, take several forwards between
    two crops (a draft block before its rollback). Transformers 5.17 returns more states than its mask covers."""
    layer = DynamicSlidingWindowLayer(sliding_window=2)
    layer.activate_past_recording()
    layer.update(torch.zeros(1, 1, 3, 1), torch.zeros(1, 1, 3, 1))
    keys, _ = layer.update(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    return keys.shape[-2] == 2


def unrollable_window(cache, longest: int) -> int | None:
    """The sliding window that a draft block reaching `longest` positions would outgrow on a transformers version
    whose sliding layers cannot then be rolled back, or None where drafting it is possible."""
    windows = [layer.sliding_window for layer in getattr(cache, "layers", ())
               if isinstance(layer, DynamicSlidingWindowLayer)]
    if windows and longest > min(windows) and not sliding_layers_roll_back():
        return min(windows)
    return None


def check_rollback_possible(cache, longest: int) -> None:
    """Raise a clear error where a sliding-window cache would outgrow its window on a transformers version whose
    sliding layers cannot then be rolled back (instead of failing deep inside attention)."""
    window = unrollable_window(cache, longest)
    if window is not None:
        raise ValueError(
            f"The drafter attends within a sliding window of {window} tokens and this draft block reaches "
            f"{longest}: transformers {transformers.__version__} cannot roll such a cache back after several "
            f"draft steps. Upgrade transformers (5.23 can), or keep prompt + new tokens within the window."
        )


# ---------------------------------------------------------------------------------------------------------------
# torch.compile


def many_compiled_shapes():
    """Dynamo's recompile limit raised while keyed steps may compile (never around a replay, where patching
    dynamo's config would cost host time). Models of one class share their compiled entries' count (verifiers and
    drafters rebuilt for longer caches, several pairs in one process), and past the default limit of 8 dynamo would
    run every new shape uncompiled."""
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    return torch._dynamo.config.patch(**{name: max(getattr(torch._dynamo.config, name), 64)})
