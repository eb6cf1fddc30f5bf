"""The context part of a shortlist: the most recent distinct tokens of the text so far.

Copying tasks (summarization, RAG, code) reuse tokens of their prompt that no frequency list or cluster guarantees.
A fixed number of slots keeps the head's shape static; the buffer is rebuilt from the verified text at the start
of every draft block, so it also follows a generation as it drifts (every verified token is a free label).
"""

from __future__ import annotations

import torch


def recent_distinct_tokens(ids: torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    """`[B, L]` token ids (-1: no token, e.g. padding) -> `[B, size]` the `size` most recently seen distinct tokens,
    most recent first, -1 in slots left empty. Device operations only, with fixed output shapes: each distinct token
    is kept at its last position, and the kept positions, counted from the end, are the slots (no sort over the
    vocabulary)."""
    batch, length = ids.shape
    slots = ids.masked_fill(ids < 0, vocab_size)  # column `vocab_size`: no token
    positions = torch.arange(length, dtype=torch.int32, device=ids.device).expand(batch, -1)
    last_seen = torch.full((batch, vocab_size + 1), -1, dtype=torch.int32, device=ids.device)
    last_seen.scatter_reduce_(1, slots, positions, reduce="amax")
    latest = (last_seen.gather(1, slots) == positions) & (ids >= 0)
    rank = latest.flip(1).cumsum(1).flip(1)  # kept positions from here to the end: 1 for the most recent
    slot = torch.where(latest & (rank <= size), rank - 1, size)  # column `size`: not kept, dropped below
    out = ids.new_full((batch, size + 1), -1)
    return out.scatter_(1, slot, ids)[:, :size]
