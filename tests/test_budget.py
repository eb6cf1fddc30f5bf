"""The automatic draft shape (`budget.py`): chosen by the round costs and the drafter's own predictions, exact."""

import pytest
import torch

import dynaspec_hf
from dynaspec_hf import RoundCosts, TreeConfig
from dynaspec_hf.budget import PROBE_ROUNDS, expected_drafts
from conftest import make_assistant, random_cases, tiny_pair

# verification costs a second per token of the pass and drafting next to nothing, or the other way round
VERIFICATION_BOUND = RoundCosts(verify_fixed=0.0, verify_per_token=1.0, chain_fixed=0.0, chain_step=0.01,
                                tree_fixed=0.0, tree_forward=0.01)
DRAFTING_BOUND = RoundCosts(verify_fixed=1.0, verify_per_token=0.0, chain_fixed=0.0, chain_step=1.0,
                            tree_fixed=0.0, tree_forward=1.0)


@pytest.fixture(scope="module")
def pair():
    target, drafter = tiny_pair("llama", noise=0.1)  # a close drafter: most rounds accept several drafts
    return target, make_assistant(drafter, "routed")


def chosen_shapes(pair, costs: RoundCosts | None, prompts: int = 6) -> list[TreeConfig]:
    """The shape each generation drafted after its probe rounds, checking every output against the target's."""
    target, assistant = pair
    assistant.drafting.round_costs = costs
    chosen = []
    for ids, _ in random_cases(prompts, seed=5):
        expected = target.generate(ids, do_sample=False, max_new_tokens=40)
        got, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=40, return_stats=True)
        assert torch.equal(expected, got)
        probing = next((i for i, shape in enumerate(stats.shapes) if shape != TreeConfig().probe), len(stats.shapes))
        assert probing in (1, PROBE_ROUNDS) or probing == len(stats.shapes)  # the probe rounds, or a short text
        assert len(set(stats.shapes[probing:])) <= 1, "one shape after the probe rounds"
        assert all(accepted <= depth <= shape.max_depth and drafted <= shape.num_nodes for shape, accepted, depth,
                   drafted in zip(stats.shapes, stats.accepted, stats.depths, stats.drafted))
        chosen.append(stats.shapes[-1])
    assert stats.costs == (costs or stats.costs)
    return chosen


def test_expected_drafts_read_off_the_pool():
    # the root's children 0.6 (first) and 0.3; the first's children 0.4 (first) and 0.1
    pool = [0.6, 0.3, 0.4, 0.1], [1, 1, 2, 2], [True, False, True, False]
    assert expected_drafts(TreeConfig.chain(1), *pool) == pytest.approx(0.6)
    assert expected_drafts(TreeConfig.chain(2), *pool) == pytest.approx(1.0)
    assert expected_drafts(TreeConfig(num_nodes=3, max_depth=2), *pool) == pytest.approx(1.3)
    assert expected_drafts(TreeConfig(num_nodes=3, max_depth=1), *pool) == pytest.approx(0.9)


def test_expensive_verification_picks_a_chain(pair):
    assert all(shape.is_chain for shape in chosen_shapes(pair, VERIFICATION_BOUND))


def test_expensive_drafting_picks_a_bushy_tree(pair):
    """Same pair, same prompts, other costs: the bushiest candidates (a level costs the same however many nodes it
    has), so the choice follows the costs."""
    assert all(shape.num_nodes == 4 * shape.max_depth for shape in chosen_shapes(pair, DRAFTING_BOUND))


def test_costs_are_measured_once_and_kept(pair):
    target, assistant = pair
    chosen_shapes(pair, None, prompts=2)
    kept = assistant.__dict__["_dynaspec_round_costs"]
    assert len(kept) == 1
    costs = next(iter(kept.values()))
    assert costs.seconds(TreeConfig.chain(2)) > 0 and costs.seconds(TreeConfig().probe) > 0


def test_automatic_needs_room_to_branch():
    with pytest.raises(ValueError, match="automatic TreeConfig"):
        TreeConfig(max_children=1).validate()
    with pytest.raises(ValueError, match="automatic TreeConfig"):
        TreeConfig(max_depth=1).validate()


def test_an_assistants_first_generation_probes_three_rounds_and_later_ones_one():
    target, drafter = tiny_pair("llama", noise=0.1)
    assistant = make_assistant(drafter, "routed")
    assistant.drafting.round_costs = DRAFTING_BOUND
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    for probing in (PROBE_ROUNDS, 1, 1):
        _, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=40, return_stats=True)
        assert stats.shapes[:probing] == [TreeConfig().probe] * probing and stats.shapes[probing] != TreeConfig().probe
    _, sampled = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=40, do_sample=True, return_stats=True)
    assert sampled.shapes[:PROBE_ROUNDS] == [TreeConfig().probe] * PROBE_ROUNDS, "sampling keeps an estimate of its own"
