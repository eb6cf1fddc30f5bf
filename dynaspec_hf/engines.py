"""Engines kept on a model between generations: the chain drafter, the tree drafter and the target's verifier.

Each holds a static KV cache and the CUDA graphs captured on it, which take seconds to build, so it stays on its
model and is reused until a generation needs one built otherwise. One rule decides: a kept engine is reused while
it was built with the same settings and holds the positions the generation needs; otherwise it is released (its
graphs freed at once, outside any capture) and built anew with room for twice those positions.

Engines live in a plain dict in the model's `__dict__`, not as submodules: they add no weights, move with no `.to()`
and stay out of the state dict.
"""

from __future__ import annotations

from typing import Callable

MIN_POSITIONS = 256  # the smallest cache an engine is built with
_KEPT = "_dynaspec_engines"  # {name: (settings, engine)}


def kept_engine(model, name: str):
    """The engine `name` kept on `model` ("chain drafter", "tree drafter", "verifier"), or None."""
    return model.__dict__.get(_KEPT, {}).get(name, (None, None))[1]


def engine_for(model, name: str, length: int, settings: tuple, build: Callable[[int], object],
               minimum: int = MIN_POSITIONS):
    """The engine `name` on `model` for `length` positions: the kept one if it was built with `settings` and holds
    `length` positions (its `max_length`), else `build(max(minimum, 2 * length))`, which is kept in its place."""
    engines = model.__dict__.setdefault(_KEPT, {})
    kept_settings, engine = engines.get(name, (None, None))
    if engine is not None and kept_settings == settings and engine.max_length >= length:
        return engine
    if engine is not None:
        engine.release()
    engine = build(max(minimum, 2 * length))
    engines[name] = settings, engine
    return engine


def release_engines(model, *names: str) -> None:
    """Free the named engines kept on `model` now, and forget them."""
    engines = model.__dict__.get(_KEPT, {})
    for name in names:
        _, engine = engines.pop(name, (None, None))
        if engine is not None:
            engine.release()
