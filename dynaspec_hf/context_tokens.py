"""The context part of a shortlist: the most recent distinct tokens of the text so far.

Copying tasks (summarization, RAG, code) reuse tokens of their prompt that no frequency list or cluster guarantees.
A fixed number of slots keeps the head's shape static; the buffer is rebuilt from the verified text at the start
of every draft block, so it also follows a generation as it drifts (every verified token is a free label).
"""

from __future__ import annotations

import torch


def recent_distinct_tokens(ids: torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    """`[B, L]` token ids (-1: no token, e.g. padding) -> `[B, size]` the `size` most recently seen distinct tokens,
    most recent first, -1 in slots left empty. Device operations only, with fixed output shapes."""
    batch, length = ids.shape
    last_seen = torch.full((batch, vocab_size + 1), -1, dtype=torch.int32, device=ids.device)
    positions = torch.arange(length, dtype=torch.int32, device=ids.device).expand(batch, -1)
    last_seen.scatter_reduce_(1, ids.masked_fill(ids < 0, vocab_size), positions, reduce="amax")
    last_seen[:, vocab_size] = -1  # the slot of "no token"
    count = min(size, vocab_size)
    recency, tokens = last_seen.topk(count, dim=1)
    tokens = tokens.masked_fill(recency < 0, -1)
    if count < size:
        tokens = torch.cat([tokens, tokens.new_full((batch, size - count), -1)], dim=1)
    return tokens
