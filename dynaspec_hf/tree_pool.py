"""The candidate pool of a tree's expansion (`TreeDrafter`): choosing each node forward's nodes, and adding the
children a forward gives, as functions of device tensors alone.

Run eagerly, this bookkeeping is dozens of tiny operations per node forward (a sort, gathers, scatters, masks), a
kernel each, about as many kernels as the drafter's body. Where the forwards are compiled, the tree drafter
compiles each node forward whole (these functions, the drafter's body and head: `TreeDrafter._node_forward`), so
they fuse with the body into a few kernels that the expansion's CUDA graph replays. Whatever changes between node
forwards is a tensor argument of a fixed shape, so a node forward compiles for a tree drafter's shapes once, not
once per forward or per tree depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CandidatePool:
    """Every candidate node of one tree, by pool index: the root, its children, then `width` children per node of
    each node forward. A candidate's `value` estimates the probability that its path is accepted (`-inf`: no
    candidate); `row` is where a forwarded node's body output and q are kept; `ancestors` are the cache slots of
    its forwarded ancestors, the ones its own forward may attend to."""

    token: torch.Tensor  # [size] long
    parent: torch.Tensor  # [size] long
    depth: torch.Tensor  # [size] long
    row: torch.Tensor  # [size] long
    value: torch.Tensor  # [size] float32
    forwarded: torch.Tensor  # [size] bool
    ancestors: torch.Tensor  # [size, capacity] bool

    @classmethod
    def empty(cls, size: int, capacity: int, device) -> "CandidatePool":
        long = dict(dtype=torch.long, device=device)
        return cls(*(torch.zeros(size, **long) for _ in range(4)),
                   torch.zeros(size, dtype=torch.float32, device=device),
                   torch.zeros(size, dtype=torch.bool, device=device),
                   torch.zeros(size, capacity, dtype=torch.bool, device=device))


def kept_candidates(pool: CandidatePool, budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate's rank by value (ties: earlier first, so a parent ranks before its children), and whether it
    is among the root and the `budget` best (a candidate outside those has no descendant inside)."""
    order = torch.sort(pool.value, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    return rank, (rank <= budget) & (pool.value > float("-inf"))


def next_nodes(pool: CandidatePool, budget: torch.Tensor, depth_limit: torch.Tensor, base: torch.Tensor,
               slots: torch.Tensor, own_slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Choose the next node forward's nodes, the `len(slots)` best kept candidates above `depth_limit` not forwarded
    yet (padded where fewer are left), and mark them forwarded into rows `2 + slots`. Returns their pool indices,
    which are real, their rows, and the forward's inputs: ids `[1, width]`, positions, the block of cache slots
    each sees (the committed text is seen by all; a node sees its forwarded ancestors and itself, padding only
    itself) and the rows of their parents (1, the root's, for padding)."""
    rank, kept = kept_candidates(pool, budget)
    eligible = kept & ~pool.forwarded & (pool.depth < depth_limit)
    # a sort, not a top-k: on a GPU the pool's few dozen keys sort in one small kernel, a top-k takes longer
    batch = torch.where(eligible, rank, rank + rank.shape[0]).sort().indices[: slots.shape[0]]
    valid = eligible[batch]
    rows = torch.where(valid, 2 + slots, 0)
    pool.forwarded[batch] = pool.forwarded[batch] | valid
    pool.row[batch] = torch.where(valid, rows, pool.row[batch])
    ids = torch.where(valid, pool.token[batch], 0)[None]
    positions = torch.where(valid, base - 1 + pool.depth[batch], base)
    block = (pool.ancestors[batch] & valid[:, None]) | own_slots
    parent_rows = torch.where(valid, pool.row[pool.parent[batch]], 1)
    return batch, valid, rows, ids, positions, block, parent_rows


def add_children(pool: CandidatePool, span: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor,
                 count: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor, ancestors: torch.Tensor,
                 per_node: int) -> None:
    """Write the candidate children of `parents` (real where `valid`) into the pool at `span`: `tokens` and
    `scores` `[P, width]` in the order drawn (each child's value its parent's times its score: the share of its
    index, `SiblingAcceptance.shares`); of each parent's `count` possible children at most `per_node` exist.
    `ancestors` `[P, capacity]`: the slots each parent's children see."""
    width = tokens.shape[1]
    exists = valid[:, None] & (torch.arange(width, device=tokens.device) < count.clamp(max=per_node))
    pool.token[span] = tokens.flatten()
    pool.parent[span] = parents.repeat_interleave(width)
    pool.depth[span] = (pool.depth[parents] + 1).repeat_interleave(width)
    pool.value[span] = torch.where(exists, pool.value[parents][:, None] * scores, float("-inf")).flatten()
    pool.ancestors[span] = ancestors.repeat_interleave(width, dim=0)


def chosen_tree(pool: CandidatePool, budget: torch.Tensor) -> torch.Tensor:
    """What the host reads of a finished expansion, `[4, size]`: whether each candidate is in the tree (the root
    and the `budget` best), its token, its parent and its row."""
    return torch.stack([kept_candidates(pool, budget)[1].long(), pool.token, pool.parent, pool.row])


def nodes_to_verify(pool: CandidatePool, kept: torch.Tensor, base: torch.Tensor, max_depth: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tree's draft nodes (the `kept` candidates, as `chosen_tree` gives them, but the root) as the target's
    pass reads them (`tree.DraftNodes`), numbered as the host's tree numbers them (pool order, parents first), then
    padding: tokens, positions (the root sits at `base - 1`) and which sees which (a node itself and its ancestors,
    found by following parents `max_depth` times), `[size - 1]`, `[size - 1]`, `[size - 1, size - 1]`."""
    size = pool.value.shape[0]
    index = torch.arange(size, device=pool.value.device)
    drafts = kept & (index > 0)
    order = torch.where(drafts, index, index + size).sort().indices[: size - 1]
    valid = drafts[order]
    parent = torch.where(index > 0, pool.parent, 0)  # the root's own parent: itself
    seen = torch.eye(size, dtype=torch.bool, device=index.device)
    for _ in range(max_depth):
        seen = seen | seen[parent]
    own = torch.eye(size - 1, dtype=torch.bool, device=index.device)
    visible = (seen[order][:, order] & valid[:, None] & valid[None, :]) | own
    return (torch.where(valid, pool.token[order], 0), torch.where(valid, base - 1 + pool.depth[order], base - 1),
            visible)


def likeliest_children(logits: torch.Tensor, tokens: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy children from shortlist rows (`logits`, `tokens` `[P, R]`; a row padded with `-inf` holds no token):
    each row's `width` likeliest tokens, and how many tokens the row holds. The top-k runs on the logits as they
    come: on a GPU a half-precision top-k over a shortlist's rows is several times faster than on q in float32."""
    if logits.shape[1] < width:  # fewer rows than children: pad with impossible ones
        logits = torch.nn.functional.pad(logits, (0, width - logits.shape[1]), value=float("-inf"))
        tokens = torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=0)
    picked = logits.topk(width).indices
    return tokens.gather(1, picked), (logits > float("-inf")).sum(-1, keepdim=True)
