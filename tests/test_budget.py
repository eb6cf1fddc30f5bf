"""The automatic draft shape (`budget.py`): chosen by the round costs and the measured acceptance, exact."""

import dataclasses

import pytest
import torch

import dynaspec_hf
from dynaspec_hf import RoundCosts, TreeConfig
from dynaspec_hf.budget import (PROBE_ROUNDS, RESHAPE_ROUNDS, AutomaticDrafter, _tree_to_sample, expected_drafts,
                                sampling_passes)
from dynaspec_hf.verification import sampled_rows
from dynaspec_hf.tree import SiblingAcceptance
from conftest import BF16_H100, close_and_far_drafters, load_weights, make_assistant, random_cases, tiny_pair

# verification costs a second per token of the pass and drafting next to nothing, or the other way round
VERIFICATION_BOUND = RoundCosts(verify_fixed=0.0, verify_per_token=1.0, chain_fixed=0.0, chain_step=0.01,
                                tree_fixed=0.0, tree_forward=0.01)
DRAFTING_BOUND = RoundCosts(verify_fixed=1.0, verify_per_token=0.0, chain_fixed=0.0, chain_step=1.0,
                            tree_fixed=0.0, tree_forward=1.0)

# what the bf16 run of commit 496dd0f measured for DynaSpec 1/16 on an H100 (its round costs, in
# benchmarks/results/history/2026-12-06-bf16-496dd0f/)
PUBLISHED_H100 = RoundCosts(verify_fixed=2.13e-3, verify_per_token=2.5e-5, chain_fixed=4.85e-3, chain_step=1.34e-4,
                            tree_fixed=4.77e-3, tree_forward=7.3e-4)


@pytest.fixture(scope="module")
def pair():
    target, drafter = tiny_pair("llama", noise=0.1)  # a close drafter: most rounds accept several drafts
    return target, make_assistant(drafter, "routed")


def chosen_shapes(pair, costs: RoundCosts | None, prompts: int = 6) -> list[TreeConfig]:
    """The shape each generation drafted last, checking every output against the target's, and that the shape
    changed only where it is chosen: after the probe, then every `RESHAPE_ROUNDS` rounds."""
    target, assistant = pair
    assistant.drafting.round_costs = costs
    chosen = []
    for ids, _ in random_cases(prompts, seed=5):
        expected = target.generate(ids, do_sample=False, max_new_tokens=40)
        got, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=40, tree=TreeConfig(),
                                          return_stats=True)
        assert torch.equal(expected, got)
        assert stats.shapes[:PROBE_ROUNDS] == [TreeConfig().probe] * min(PROBE_ROUNDS, len(stats.shapes))
        assert all(stats.shapes[i] == stats.shapes[i - 1] for i in range(PROBE_ROUNDS + 1, len(stats.shapes))
                   if (i - PROBE_ROUNDS) % RESHAPE_ROUNDS)
        assert all(accepted <= depth <= shape.max_depth and drafted <= shape.num_nodes for shape, accepted, depth,
                   drafted in zip(stats.shapes, stats.accepted, stats.depths, stats.drafted))
        chosen.append(stats.shapes[-1])
    assert stats.costs == (costs or stats.costs)
    return chosen


def test_expected_drafts_follow_the_sibling_acceptance_rates():
    # first children accepted at 6/10 (Laplace), a second child at 2/4 once the first failed
    rates = SiblingAcceptance(accepted=[5.0, 1.0], reached=[8.0, 2.0])
    assert expected_drafts(TreeConfig.chain(1), rates) == pytest.approx(0.6)
    assert expected_drafts(TreeConfig.chain(2), rates) == pytest.approx(0.6 + 0.36)
    # a runner-up beside each draft: 0.6 + 0.2 at the first level, reached by the chain at 0.6 on the second
    assert expected_drafts(TreeConfig.chain(2, runner_ups=1), rates) == pytest.approx(0.8 + 0.6 * 0.8)
    # two children a node: 0.6 and 0.4 * 0.5; two nodes a level, the likeliest of the next level 0.36 and 0.12
    assert expected_drafts(TreeConfig(num_nodes=4, max_depth=2, max_children=2), rates) == pytest.approx(0.8 + 0.48)
    assert expected_drafts(TreeConfig(num_nodes=2, max_depth=1, max_children=2), rates) == pytest.approx(0.8)
    # more nodes than such a tree can hold: all it can (the automatic candidates of max_children=2, depth 2)
    assert expected_drafts(TreeConfig(num_nodes=8, max_depth=2, max_children=2), rates) == pytest.approx(
        0.8 + 0.8 * 0.8)
    rates.fade(0.5)
    assert rates.rate(0) == pytest.approx(3.5 / 6)  # older outcomes weigh less against the prior
    # a later sibling is never valued above an earlier one (here a second child seldom tried, by its prior)
    rates = SiblingAcceptance(accepted=[2.0], reached=[10.0])
    assert expected_drafts(TreeConfig.chain(1, runner_ups=1), rates) == pytest.approx(0.25 + 0.75 * 0.25)


def generation_rates(monkeypatch) -> list:
    """The sibling acceptance rates of every automatic generation from here on, in order."""
    rates, start = [], AutomaticDrafter.__init__

    def started(self, *args):
        start(self, *args)
        rates.append(self.rates)

    monkeypatch.setattr(AutomaticDrafter, "__init__", started)
    return rates


def test_every_round_counts_toward_the_acceptance_rates(monkeypatch):
    """The rates learn from every round, not only from the probe's: after one generation they have counted the
    first children of the chain rounds too, more than the probe rounds hold."""
    target, drafter = tiny_pair("llama", noise=0.1)
    assistant = make_assistant(drafter, "routed")
    assistant.drafting.round_costs = VERIFICATION_BOUND  # a chain after the probe rounds
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    rates = generation_rates(monkeypatch)
    _, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=60, tree=TreeConfig(), return_stats=True)
    probe_trials = PROBE_ROUNDS * TreeConfig().probe.max_depth  # at most one per level of each probe tree
    assert stats.shapes[-1].is_chain and rates[0].reached[0] > probe_trials


def test_expensive_verification_picks_a_chain(pair):
    assert all(shape.is_chain and not shape.runner_ups for shape in chosen_shapes(pair, VERIFICATION_BOUND))


def test_free_verified_tokens_and_costly_trees_pick_a_chain_with_runner_ups(pair):
    """A runner-up costs only verified tokens: where those are free and a tree's forwards are not, every chain
    gains by them."""
    costs = RoundCosts(verify_fixed=1.0, verify_per_token=0.0, chain_fixed=0.0, chain_step=0.01, tree_fixed=10.0,
                       tree_forward=1.0)
    assert all(shape.is_chain and shape.runner_ups for shape in chosen_shapes(pair, costs))


def test_a_drafter_the_target_agrees_with_drafts_deep_chains_at_measured_costs():
    """Greedy, the target takes this drafter's first choice about 9 times in 10, far more often than the drafter's
    own q of it says, and at the costs the benchmark measured long chains win (on that GPU the chain of 6 made 1.6x
    the tokens/s of the trees that q chose)."""
    target, drafter = tiny_pair("llama", noise=0.02)
    chosen = chosen_shapes((target, make_assistant(drafter, "full")), PUBLISHED_H100)
    assert all(shape.is_chain and shape.max_depth >= 5 for shape in chosen), chosen


def test_expensive_drafting_picks_a_bushy_tree(pair):
    """Same pair, same prompts, other costs: the bushiest candidates (a level costs the same however many nodes it
    has), so the choice follows the costs."""
    assert all(shape.num_nodes == 4 * shape.max_depth for shape in chosen_shapes(pair, DRAFTING_BOUND))


def sampled_shapes(pair, costs: RoundCosts, prompts: int = 4) -> list[TreeConfig]:
    """The shape each sampled generation drafted last."""
    target, assistant = pair
    assistant.drafting.round_costs = costs
    torch.manual_seed(0)
    return [dynaspec_hf.generate(target, assistant, ids, do_sample=True, max_new_tokens=40, tree=TreeConfig(),
                                 return_stats=True)[1].shapes[-1] for ids, _ in random_cases(prompts, seed=5)]


def test_costly_sampled_acceptance_picks_a_chain(pair):
    """Sampled rounds also pay rejection sampling, a pass over the vocabulary per row and child: made expensive,
    it turns the drafting-bound costs' bushy trees into a chain of single drafts."""
    assert all(shape.num_nodes == 4 * shape.max_depth for shape in sampled_shapes(pair, DRAFTING_BOUND))
    costly = dataclasses.replace(DRAFTING_BOUND, sample_per_pass=100.0)
    assert all(shape.is_chain and not shape.runner_ups for shape in sampled_shapes(pair, costly))


def test_the_sampling_cost_line_counts_the_passes_of_the_trees_it_times():
    """`RoundCosts.measure` times the sampling step of a chain of 1 and of the probe on `_tree_to_sample` trees and
    fits a line over `sampling_passes`: at both points the passes must be those `TreeVerifier.sample` runs on that
    tree (each row's draw; each row with children once per candidate child)."""
    for shape in (TreeConfig.chain(1), TreeConfig().probe):
        tree = _tree_to_sample(torch.arange(8), 1 + shape.num_nodes, shape.children, 64)
        parents = sum(1 for children in tree.children if children)
        width = max(len(children) for children in tree.children)
        assert sampling_passes(shape) == sampled_rows(len(tree)) + sampled_rows(parents) * width, shape


def test_sampled_acceptance_is_timed_only_when_sampling(pair):
    target, assistant = pair
    assistant.drafting.round_costs = None
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(4))
    greedy, sampled = (dynaspec_hf.generate(target, assistant, ids, do_sample=do_sample, max_new_tokens=8,
                                            tree=TreeConfig(), return_stats=True)[1].costs
                       for do_sample in (False, True))
    assert greedy.sample_fixed == greedy.sample_per_pass == 0
    assert sampled.sample_fixed + sampled.sample_per_pass > 0


def test_a_slow_spell_in_one_pass_does_not_set_a_cost(monkeypatch):
    """Each size is timed once per pass over all parts and the fastest pass kept: verification passes slowed by
    30 ms during the first pass alone leave the measured verification cost at the other passes'."""
    import time

    from dynaspec_hf.verification import TreeVerifier

    target, drafter = tiny_pair("llama", noise=0.1)
    assistant = make_assistant(drafter, "routed")
    verify, calls = TreeVerifier.verify, []

    def slowed(self, committed, nodes, size=None):
        calls.append(size)
        if size == 3 and 2 <= calls.count(3) <= 8:  # the first pass's smallest passes (the first is its capture)
            time.sleep(0.03)
        return verify(self, committed, nodes, size)

    monkeypatch.setattr(TreeVerifier, "verify", slowed)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(3))
    _, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=4, tree=TreeConfig(), return_stats=True)
    costs = stats.costs
    assert calls.count(3) >= 8 + 7  # the slowed pass, and another
    assert costs.verify_fixed + 3 * costs.verify_per_token < 0.015


def test_costs_are_measured_once_and_kept(pair):
    """Without `drafting.round_costs`, the first automatic generation times the costs, and later ones reuse them."""
    target, assistant = pair
    assistant.drafting.round_costs = None
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(3))
    costs = [dynaspec_hf.generate(target, assistant, ids, max_new_tokens=8, tree=TreeConfig(),
                                  return_stats=True)[1].costs for _ in range(2)]
    assert costs[0] is costs[1]
    assert costs[0].seconds(TreeConfig.chain(2)) > 0 and costs[0].seconds(TreeConfig().probe) > 0


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_no_shape_compiles_after_the_first_generation(monkeypatch, do_sample):
    """An assistant's first automatic generation, with round costs given (as the benchmark gives them) and trees
    chosen, compiles every engine state the candidates reach, sampled ones included: a later generation switched to
    any candidate compiles nothing, so no round of it waits for a compile. (On the CPU no graph replays, so every
    call checks the compiled entries' guards: a stricter count than on a GPU.)"""
    compiles = []
    backend = lambda graph_module, example_inputs: compiles.append(1) or graph_module.forward  # noqa: E731
    target, drafter = tiny_pair("llama", seed=3, noise=0.2)
    assistant = make_assistant(drafter, "context")
    assistant.drafting.round_costs = DRAFTING_BOUND
    prompts = torch.randint(0, 64, (len(TreeConfig().candidates()) + 1, 1, 12),
                            generator=torch.Generator().manual_seed(4))

    def generate(ids):
        out = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=16, tree=TreeConfig(),
                                   compile={"backend": backend}, do_sample=do_sample)
        if not do_sample:
            assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=16))

    generate(prompts[0])
    assert compiles, "the first generation compiles"
    compiles.clear()
    for shape, ids in zip(TreeConfig().candidates(), prompts[1:]):
        monkeypatch.setattr(AutomaticDrafter, "best", lambda self, shape=shape: shape)
        generate(ids)
        assert not compiles, f"switching to {shape} compiled"


def test_automatic_needs_room_to_branch():
    with pytest.raises(ValueError, match="automatic TreeConfig"):
        TreeConfig(max_children=1).validate()
    with pytest.raises(ValueError, match="automatic TreeConfig"):
        TreeConfig(max_depth=1).validate()


def test_a_text_the_drafter_gets_right_drafts_deep_after_one_it_gets_wrong():
    """How often the target takes the drafter's first choice depends on the text (here: the drafter's weights,
    a close or a far copy of the target's). Each generation probes and learns its own rates, so a text the drafter
    gets right drafts the same shapes after a text it got wrong as on its own, deep chains at bf16 costs; rates
    carried over from the earlier text kept shallow trees there."""
    target, assistant, weights = close_and_far_drafters()
    assistant.drafting.round_costs = BF16_H100
    prompts = [ids for ids, _ in random_cases(2, seed=11)]

    def shapes(ids):
        out, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=60, tree=TreeConfig(),
                                          return_stats=True)
        assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=60))
        return stats.shapes

    alone = shapes(prompts[1])
    load_weights(assistant.drafter, weights["far"])
    shapes(prompts[0])
    load_weights(assistant.drafter, weights["close"])
    after = shapes(prompts[1])
    assert after == alone and after[0] == TreeConfig().probe
    assert after[-1].is_chain and after[-1].max_depth >= 5, after


def test_the_shape_follows_the_text_within_a_generation(monkeypatch):
    """The shape is chosen again every `RESHAPE_ROUNDS` rounds by the rates so far: when the drafter turns from a
    far copy of the target into a close one after the eighth round, the generation goes deeper, and it stays exact."""
    target, assistant, weights = close_and_far_drafters()
    assistant.drafting.round_costs = BF16_H100
    load_weights(assistant.drafter, weights["far"])
    update = AutomaticDrafter.update

    def turning(self, trials):
        update(self, trials)
        if self.rounds == 8:
            load_weights(assistant.drafter, weights["close"])

    monkeypatch.setattr(AutomaticDrafter, "update", turning)
    ids = next(random_cases(1, seed=11))[0]
    out, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=120, tree=TreeConfig(),
                                      return_stats=True)
    assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=120))
    assert stats.shapes[-1].max_depth > stats.shapes[8].max_depth, stats.shapes
