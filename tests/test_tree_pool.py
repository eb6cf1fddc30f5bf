"""The tree expansion's bookkeeping (`tree_pool.py`) compiled by torch.compile does what it does eagerly: the same
next nodes and forward inputs, the same children, the same pool after adding them."""

import pytest
import torch

from dynaspec_hf.tree import TreeDrafter
from dynaspec_hf.static_cache import compiled
from dynaspec_hf.tree_pool import (CandidatePool, add_children, kept_candidates, likeliest_children, next_nodes,
                                   nodes_to_verify)
from conftest import VOCAB, make_assistant, tiny_pair

SIZE, CAPACITY, WIDTH = 1 + 3 + 2 * 3 * 3, 6, 3


def grown_pool(seed: int) -> CandidatePool:
    """A pool midway through an expansion: the root forwarded, its children and a first forward's candidates in
    place, with tied values among them."""
    generator = torch.Generator().manual_seed(seed)
    pool = CandidatePool.empty(SIZE, CAPACITY, "cpu")
    filled = 1 + WIDTH + WIDTH * WIDTH
    pool.token[:filled] = torch.randint(0, 100, (filled,), generator=generator)
    pool.parent[1:filled] = torch.tensor([0] * WIDTH + [1] * WIDTH + [2] * WIDTH + [3] * WIDTH)
    pool.depth[1:filled] = torch.tensor([1] * WIDTH + [2] * WIDTH * WIDTH)
    pool.value.fill_(float("-inf"))
    pool.value[:filled] = torch.rand(filled, generator=generator).round(decimals=1) * 0.9
    pool.value[0] = 1.0
    pool.forwarded[: 1 + WIDTH] = True
    pool.row[: 1 + WIDTH] = torch.tensor([1, 2, 3, 4])
    pool.ancestors[1 + WIDTH : filled] = torch.rand(WIDTH * WIDTH, CAPACITY, generator=generator) > 0.5
    return pool


def test_compiled_next_nodes_equal_eager():
    budget, limit, base = torch.tensor(7), torch.tensor(3), torch.tensor(20)
    slots = torch.arange(CAPACITY).view(2, WIDTH)
    own = torch.eye(CAPACITY, dtype=torch.bool).view(2, WIDTH, -1)
    fused = compiled(next_nodes, {"fullgraph": True})  # no graph break: a few kernels
    for seed in range(3):
        pools = grown_pool(seed), grown_pool(seed)
        eager, got = next_nodes(pools[0], budget, limit, base, slots[1], own[1]), fused(pools[1], budget, limit,
                                                                                     base, slots[1], own[1])
        for expected, actual in zip(eager, got):
            assert torch.equal(expected, actual)
        assert eager[1].any(), "no node was chosen: the case tests nothing"
        for name in ("forwarded", "row"):
            assert torch.equal(getattr(pools[0], name), getattr(pools[1], name))


def test_compiled_children_equal_eager():
    fused_add, fused_likeliest = (compiled(f, {"fullgraph": True}) for f in (add_children, likeliest_children))
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(WIDTH, 8, generator=generator).masked_fill(torch.rand(WIDTH, 8, generator=generator) > 0.7,
                                                                     float("-inf"))
    tokens = torch.randint(0, 100, (WIDTH, 8), generator=generator)
    children = likeliest_children(logits, tokens, WIDTH)
    for expected, actual in zip(children, fused_likeliest(logits, tokens, WIDTH)):
        assert torch.equal(expected, actual)
    span = torch.arange(1 + WIDTH + WIDTH * WIDTH, SIZE)
    parents, valid = torch.tensor([4, 5, 6]), torch.tensor([True, True, False])
    ancestors = torch.rand(WIDTH, CAPACITY, generator=generator) > 0.5
    pools = grown_pool(1), grown_pool(1)
    tokens, count = children
    scores = torch.tensor([0.6, 0.3, 0.1]).expand(WIDTH, -1)
    add_children(pools[0], span, tokens, scores, count, parents, valid, ancestors, 2)
    fused_add(pools[1], span, tokens, scores, count, parents, valid, ancestors, 2)
    assert pools[0].value[span].isfinite().sum() == 4  # two children each for the two real parents
    for name in ("token", "parent", "depth", "value", "ancestors"):
        assert torch.equal(getattr(pools[0], name), getattr(pools[1], name)), name


def test_nodes_to_verify_are_the_kept_candidates_with_their_ancestors():
    """The pass's draft nodes: the root and the budget's best candidates, in pool order (what the host's tree
    numbers them by), each seeing itself and its kept ancestors; then padding, which sees only itself. Compiled,
    the same."""
    pool, budget, base = grown_pool(0), torch.tensor(5), torch.tensor(20)
    for node in range(1, 1 + WIDTH + WIDTH * WIDTH):  # values as an expansion makes them: below the parent's
        pool.value[node] = pool.value[pool.parent[node]] * (0.3 + 0.1 * (node % 5))
    chosen = kept_candidates(pool, budget)[1]
    tokens, positions, visible = nodes_to_verify(pool, chosen, base, max_depth=3)
    kept = chosen.nonzero().flatten().tolist()[1:]  # pool order, without the root
    assert len(kept) == 5 and tokens.shape == (SIZE - 1,)
    assert tokens[:5].tolist() == pool.token[kept].tolist() and not tokens[5:].any()
    assert positions[:5].tolist() == (19 + pool.depth[kept]).tolist()
    for row, node in enumerate(kept):
        ancestors = {node, int(pool.parent[node])} - {0}  # the grown pool is two levels deep
        assert {kept[column] for column in visible[row, :5].nonzero().flatten().tolist()} == ancestors
    assert torch.equal(visible[5:], torch.eye(SIZE - 1, dtype=torch.bool)[5:])
    fused = compiled(nodes_to_verify, {"fullgraph": True})(pool, chosen, base, 3)
    for expected, actual in zip((tokens, positions, visible), fused):
        assert torch.equal(expected, actual)


@pytest.mark.parametrize("do_sample", [False, True])
def test_compiled_tree_drafter_drafts_the_eager_trees(do_sample):
    """End to end through inductor: a tree drafter whose forwards and bookkeeping are compiled drafts, round after
    round, the trees an eager one drafts (sampled: from the same seed, since only eager operations draw)."""
    _, drafter = tiny_pair("llama", seed=5)
    assistant = make_assistant(drafter, "routed")
    committed = torch.randint(0, VOCAB, (14,), generator=torch.Generator().manual_seed(2))
    options = dict(num_nodes=10, do_sample=do_sample, temperature=1.0 if do_sample else 0.0)
    trees = []
    for compile_options in (None, {}):
        torch.manual_seed(0)
        tree_drafter = TreeDrafter(assistant, 64, max_depth=4, width=3, compile_options=compile_options)
        tree_drafter.draft(committed[:8], **options)  # the prompt
        trees.append([(tree.tokens, tree.parents) for tree in (
            tree_drafter.draft(committed[:length], **options) for length in (10, 12, 14))])
    assert trees[0] == trees[1]
    assert max(len(parents) for _, parents in trees[0]) == 11 and len(set(trees[0][0][1])) > 2  # a bushy tree
