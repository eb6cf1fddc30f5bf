"""The automatic draft shape: DySpec's greedy expansion with a budget set by what a round costs on this hardware.

A round costs drafting its shape plus one verification pass, and yields one token plus the accepted drafts. The
costs are measured once per model pair and device, at first use, in a few timed calls of the engines the
generation uses anyway (`RoundCosts.measure`), and kept on the assistant.

The accepted drafts are predicted by the drafter itself. A generation's first round (the first three, for an
assistant's first generation) drafts the probe, the largest candidate tree, whose candidate pool values every path
by the probability that the target accepts it (greedy: the product of q along it; sampling: measured sibling
acceptance rates). What any smaller tree or chain would have kept is read off the same pool, then scaled by how
the probe's predictions compared with what the target accepted, over the assistant's recent probe rounds
(`ProbeEstimate`). The generation goes on with the candidate of the most expected tokens per second. Chains are
candidates, so the automatic shape loses to the best chain only by the probe round and the estimate's error.

The shape depends only on earlier rounds' outcomes, never on the round's own draws, so sampling stays exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .tree import ChainDrafter, TokenTree, drafter_for

PROBE_ROUNDS = 3  # rounds that draft the probe before an assistant's first generation picks its shape
MEMORY = 8  # probe rounds over which an estimate fades


@dataclass(frozen=True)
class RoundCosts:
    """Seconds of one round's parts for one pair on one device: verification is `verify_fixed` plus
    `verify_per_token` per token of the pass; a chain costs `chain_fixed` plus `chain_step` per draft; a tree
    `tree_fixed` plus `tree_forward` per drafter forward of its expansion (a tree of depth d takes d - 1)."""

    verify_fixed: float
    verify_per_token: float
    chain_fixed: float
    chain_step: float
    tree_fixed: float
    tree_forward: float

    def seconds(self, shape) -> float:
        """The predicted seconds of one round drafting the fixed `shape` (a `TreeConfig`)."""
        verify = self.verify_fixed + self.verify_per_token * shape.verified_tokens
        if shape.is_chain:
            return verify + self.chain_fixed + self.chain_step * shape.max_depth
        return verify + self.tree_fixed + self.tree_forward * (shape.max_depth - 1)

    @classmethod
    @torch.no_grad()
    def measure(cls, verifier, chain, tree, probe, repeats: int = 5) -> "RoundCosts":
        """Time the generation's own engines (so their graphs are captured once, here): verification passes of the
        smallest and the largest size, chains of 1 and `probe.max_depth` drafts, trees of 1 and `probe.max_depth - 1`
        forwards. Each part is a straight line through two sizes. The engines are left as a generation starts."""
        device = verifier.logits.device
        committed = torch.arange(8, device=device)

        def grown() -> torch.Tensor:  # each call commits one more token, as a round does
            nonlocal committed
            committed = torch.cat([committed, committed[-1:]])
            return committed

        def seconds(step) -> float:
            step()  # captures its graphs
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            _synchronize(device)
            return (time.perf_counter() - start) / repeats

        def verify(size: int) -> float:
            def step():
                ids = grown()
                verifier.verify(ids, _chain_tree(ids, size - 2), size)
            return seconds(step)

        verifier.verify(committed, _chain_tree(committed, 0))  # the prompt's pass
        small, large = 3, probe.verified_tokens
        verify_times = verify(small), verify(large)
        chains = [seconds(lambda depth=depth: chain.draft(grown(), num_nodes=depth, do_sample=False,
                                                          max_depth=depth)) for depth in (1, probe.max_depth)]
        trees = [seconds(lambda depth=depth: tree.draft(grown(), num_nodes=probe.num_nodes, do_sample=False,
                                                        max_depth=depth)) for depth in (2, probe.max_depth)]
        verifier.start()
        chain.cache = None
        tree.start(probe)
        verify_fixed, verify_per_token = _line(small, large, *verify_times)
        chain_fixed, chain_step = _line(1, probe.max_depth, *chains)
        tree_fixed, tree_forward = _line(1, probe.max_depth - 1, *trees)
        return cls(verify_fixed, verify_per_token, chain_fixed, chain_step, tree_fixed, tree_forward)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _line(x1: int, x2: int, y1: float, y2: float) -> tuple[float, float]:
    """Intercept and slope (neither below zero) of the line through (x1, y1) and (x2, y2)."""
    slope = max((y2 - y1) / (x2 - x1), 0.0) if x2 > x1 else 0.0
    return max(y1 - slope * x1, 0.0), slope


def _chain_tree(committed: torch.Tensor, drafts: int) -> TokenTree:
    """A chain of `drafts` nodes after `committed`, for timing a verification pass."""
    tree = TokenTree(root_position=committed.shape[0] - 1)
    node = tree.add(int(committed[-1]), -1)
    for _ in range(drafts):
        node = tree.add(int(committed[-1]), node)
    return tree


@dataclass
class ProbeEstimate:
    """What the probe rounds of an assistant's generations predicted for every candidate shape, and what the target
    accepted: sums in which each round's share fades over `MEMORY` rounds, so the choice follows the recent text.
    Kept on the assistant between generations, so a generation probes `PROBE_ROUNDS` rounds only while its
    estimate is empty, and one round after that."""

    predicted: list[float]  # expected accepted drafts per candidate
    probe_predicted: float = 0.0  # the same for the probe itself, to compare with what was accepted
    accepted: float = 0.0
    rounds: float = 0.0

    def add(self, predicted: list[float], probe_predicted: float, accepted: int) -> None:
        keep = 1 - 1 / MEMORY
        self.predicted = [keep * old + new for old, new in zip(self.predicted, predicted)]
        self.probe_predicted = keep * self.probe_predicted + probe_predicted
        self.accepted = keep * self.accepted + accepted
        self.rounds = keep * self.rounds + 1


class AutomaticDrafter:
    """Drafts for an automatic `TreeConfig`: the probe for a generation's first rounds, then the candidate shape
    with the most expected tokens per second (`shape` is the one drafted next)."""

    def __init__(self, chain, tree, config, costs: RoundCosts, estimate: ProbeEstimate):
        self.chain, self.tree, self.costs, self.estimate = chain, tree, costs, estimate
        self.assistant = tree.assistant
        self.candidates = config.candidates()
        self.shape = config.probe
        self.probing = PROBE_ROUNDS if estimate.rounds == 0 else 1  # probe rounds left in this generation

    def draft(self, committed: torch.Tensor, *, num_nodes: int, **options) -> TokenTree:
        drafter = self.chain if self.shape.is_chain else self.tree
        return drafter.draft(committed, num_nodes=num_nodes, max_depth=self.shape.max_depth, **options)

    def update(self, accepted: int, trials: list[tuple[int, int | None]]) -> None:
        if not self.shape.is_chain:
            self.tree.update(accepted, trials)
        if not self.probing:
            return
        pool = self.tree.pool()
        self.estimate.add([expected_drafts(shape, *pool) for shape in self.candidates],
                          expected_drafts(self.shape, *pool), accepted)
        self.probing -= 1
        if not self.probing:
            self.shape = self.best()

    def best(self):
        """The candidate of the most expected tokens per second: predictions scaled by how the probe's compared with
        what was accepted (Laplace-smoothed), over the measured seconds of a round."""
        estimate = self.estimate
        scale = (estimate.accepted + 1) / (estimate.probe_predicted + 1)

        def rate(index: int) -> float:
            shape = self.candidates[index]
            drafts = min(scale * estimate.predicted[index] / estimate.rounds, shape.max_depth)  # one path accepted
            return (1 + drafts) / self.costs.seconds(shape)

        return self.candidates[max(range(len(self.candidates)), key=rate)]


def expected_drafts(shape, values: list[float], depths: list[int], first: list[bool]) -> float:
    """The drafts `shape` would expect accepted, read off a probe's candidate pool (each candidate's value, depth,
    and whether it is on the first-child path): a chain keeps that path, a tree its `num_nodes` best candidates."""
    if shape.is_chain:
        return sum(value for value, depth, on_path in zip(values, depths, first) if on_path and depth <= shape.max_depth)
    kept = sorted((value for value, depth in zip(values, depths) if depth <= shape.max_depth), reverse=True)
    return sum(kept[: shape.num_nodes])


def automatic_drafter(target, assistant, verifier, length: int, config, do_sample: bool, temperature: float,
                      compile_options: dict | None) -> AutomaticDrafter:
    """The automatic drafter for a generation of `length` positions, over its engines. Its round costs: the
    assistant's `drafting.round_costs` when set, else measured on first use and kept on the assistant. Its probe
    estimate: kept on the assistant per shape, drafting mode and schedule (greedy and sampled probes value paths
    differently)."""
    chain = ChainDrafter(assistant, config.max_depth, compile_options)
    tree = drafter_for(assistant, length, config.probe, compile_options)
    costs = assistant.drafting.round_costs
    if costs is None:
        kept = assistant.__dict__.setdefault("_dynaspec_round_costs", {})
        # per target, device, shape and compilation, and per schedule: a head over more tokens costs more
        key = (id(target), target.device, target.dtype, config.probe, repr(compile_options),
               repr(assistant.config.schedule()))
        if key not in kept:
            kept[key] = RoundCosts.measure(verifier, chain, tree, config.probe)
        costs = kept[key]
    estimates = assistant.__dict__.setdefault("_dynaspec_probe_estimates", {})
    key = (config, do_sample, repr(assistant.config.schedule(temperature)))
    estimate = estimates.setdefault(key, ProbeEstimate([0.0] * len(config.candidates())))
    return AutomaticDrafter(chain, tree, config, costs, estimate)
