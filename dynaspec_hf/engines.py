"""Engines kept on a model between generations: the chain drafter, the tree drafter and the target's verifier.

Each holds a static KV cache and the CUDA graphs captured on it, which take seconds to build, so it stays on its
model and is reused until a generation needs one built otherwise. One rule decides: a kept engine is reused while
it was built with the same settings and holds the positions the generation needs; otherwise it is released (its
graphs freed at once, outside any capture) and built anew with room for twice those positions.

Engines live in a plain dict in the model's `__dict__`, not as submodules: they add no weights, move with no `.to()`
and stay out of the state dict.
"""

from __future__ import annotations

from typing import Callable, Protocol

MIN_POSITIONS = 256  # the smallest cache an engine is built with
_KEPT = "_dynaspec_engines"


class Engine(Protocol):
    max_length: int  # positions its static cache holds

    def release(self) -> None: ...


def kept_engine(model, name: str) -> Engine | None:
    """The engine `name` kept on `model` ("chain drafter", "tree drafter", "verifier"), or None."""
    return model.__dict__.get(_KEPT, {}).get(name)


def engine_for(model, name: str, length: int, settings: tuple, build: Callable[[int], Engine]) -> Engine:
    """The engine `name` on `model` for `length` positions: the kept one if it was built with `settings` and holds
    `length` positions, else `build(max_length)`, which is kept in its place."""
    engines = model.__dict__.setdefault(_KEPT, {})
    engine = engines.get(name)
    if engine is not None and engines.get((name, "settings")) == settings and engine.max_length >= length:
        return engine
    if engine is not None:
        engine.release()
    engine = engines[name] = build(max(MIN_POSITIONS, 2 * length))
    engines[(name, "settings")] = settings
    return engine


def release_engines(model, *names: str) -> None:
    """Free the named engines kept on `model` (every one if none is named) now, and forget them."""
    engines = model.__dict__.get(_KEPT, {})
    for name in names or [key for key in engines if isinstance(key, str)]:
        engine = engines.pop(name, None)
        engines.pop((name, "settings"), None)
        if engine is not None:
            engine.release()
