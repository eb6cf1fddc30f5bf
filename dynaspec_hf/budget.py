"""The automatic draft shape: DySpec's greedy expansion with a budget set by what a round costs on this hardware.

A round costs drafting its shape plus one verification pass, and yields one token plus the accepted drafts. The
costs are measured once per model pair, device and drafting mode (greedy, or sampled with its schedule), at first
use, in a few timed calls of the engines the generation uses anyway (`RoundCosts.measure`), and kept on the
assistant. The same calls capture (and compile) every engine state a later round can reach, so no round waits for a
compile, whichever candidate the shape switches to.

The accepted drafts are predicted from what the target accepted, not from the drafter's own probabilities (greedy,
the target takes the drafter's first choice far more often than q of it says). Every round counts how often the
target accepted a node's i-th child once the earlier ones failed (`SiblingAcceptance`, the generation's own,
fading over its last `tree.MEMORY` rounds). A generation's first round drafts the probe, the largest candidate
tree, whose nodes have every number of children. The rates give every candidate, chain or tree, its expected
accepted drafts (`expected_drafts`), and every `RESHAPE_ROUNDS` rounds the generation goes on with the candidate of
the most expected tokens per second; its trees value their children by the same rates, so the tree drafted is the
one the estimate priced. Chains are candidates, so the automatic shape loses to the best chain only by the probe
round, the rounds its rates take to settle and the estimate's error.

Why the rates are each generation's own, and the shape chosen again as they come in: how often the target takes
the drafter's first choice depends on the text. Rates carried over from an earlier text, or a shape chosen once
after the probe, can keep a whole generation on shallow trees where its text would accept a long chain whole.

The shape depends only on earlier rounds' outcomes, never on the round's own draws, so sampling stays exact.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import torch

from .tree import (ChainDrafter, DraftNodes, SiblingAcceptance, TokenTree, TreeConfig, chain_tree, drafter_for,
                   drafting_mode)
from .verification import sampled_rows

PROBE_ROUNDS = 1  # rounds that draft the probe before a generation first picks its shape
RESHAPE_ROUNDS = 2  # rounds between the choices of a generation's shape, by its rates so far
PASSES = 3  # times round costs are measured, the fastest kept


@dataclass(frozen=True)
class RoundCosts:
    """Seconds of one round's parts for one pair on one device: verification is `verify_fixed` plus
    `verify_per_token` per token of the pass; a chain costs `chain_fixed` plus `chain_step` per draft, and
    `runner_ups` more with runner-ups (a top-k per greedy step; per sampled step, draws from q over the
    vocabulary); a tree `tree_fixed` plus `tree_forward` per drafter forward of its expansion (a tree of depth d
    takes d - 1). Sampled rounds also pay the recursive rejection sampling of their nodes: `sample_fixed` plus
    `sample_per_pass` per pass over the vocabulary (`sampling_passes`)."""

    verify_fixed: float
    verify_per_token: float
    chain_fixed: float
    chain_step: float
    tree_fixed: float
    tree_forward: float
    runner_ups: float = 0.0
    sample_fixed: float = 0.0
    sample_per_pass: float = 0.0

    def seconds(self, shape) -> float:
        """The predicted seconds of one round drafting the fixed `shape` (a `TreeConfig`)."""
        verify = self.verify_fixed + self.verify_per_token * shape.verified_tokens + self.sample_fixed + \
            self.sample_per_pass * sampling_passes(shape)
        if shape.is_chain:
            return verify + self.chain_fixed + self.chain_step * shape.max_depth + (
                self.runner_ups if shape.runner_ups else 0.0)
        return verify + self.tree_fixed + self.tree_forward * (shape.max_depth - 1)

    @classmethod
    @torch.no_grad()
    def measure(cls, verifier, chain, tree, shape, repeats: int = 5, **drafting) -> "RoundCosts":
        """Time the generation's own engines for the automatic `shape`, drafting as it will (`drafting`:
        `do_sample`, `processors`, `temperature`): verification passes of the smallest and the largest size, chains
        of 1 and `probe.max_depth` drafts (the longer also with a runner-up each), trees of 1 and
        `probe.max_depth - 1` forwards, and when sampling the rejection sampling of a chain of 1 and of the probe.
        Each part is a straight line through two sizes, each size timed in `PASSES` passes over all parts, the
        fastest pass kept. First, untimed, every graph a later round can replay is captured, its forwards compiled:
        the verification pass of each candidate's size (and its sampling step), the tree's expansion at each depth,
        and its prefix after each number of accepted drafts. The engines are left as a generation starts."""
        probe, device = shape.probe, verifier.logits.device
        committed = torch.arange(8, device=device)
        drafting = {"do_sample": False, **drafting}

        def grown(count: int = 1) -> torch.Tensor:  # commits `count` more tokens, as a round does
            nonlocal committed
            committed = torch.cat([committed, committed[-1:].expand(count)])
            return committed

        def verify(size: int) -> None:
            ids = grown()
            verifier.verify(ids, _chain_after(ids, size - 2).nodes(device), size)

        def seconds(step) -> float:
            step()  # an engine's first call reads the prompt, eagerly
            step()  # the second captures (and compiles) a round's graphs, so none is built while timed
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            _synchronize(device)
            return (time.perf_counter() - start) / repeats

        def sample(candidate) -> None:  # the sampling step of a tree of the candidate's nodes and children
            nodes = _tree_to_sample(committed, 1 + candidate.num_nodes, candidate.children, verifier.logits.shape[1])
            verifier.sample(nodes, torch.zeros(len(nodes), verifier.logits.shape[1], device=device),
                            drafting.get("processors"))

        verifier.verify(committed, _chain_after(committed, 0).nodes(device))  # the prompt's pass
        for size in sorted({candidate.verified_tokens for candidate in shape.candidates()}):
            verify(size)
        if drafting["do_sample"]:
            for candidate in shape.candidates():
                sample(candidate)
        for depth in range(1, probe.max_depth + 2):
            tree.draft_nodes(grown(depth), num_nodes=probe.num_nodes, max_depth=min(max(depth, 2), probe.max_depth),
                             **drafting)
        small, large = 3, probe.verified_tokens
        parts = {("verify", small): lambda: verify(small), ("verify", large): lambda: verify(large)}
        for depth, runner_ups in ((1, 0), (probe.max_depth, 0), (probe.max_depth, 1)):
            parts["chain", depth, runner_ups] = lambda depth=depth, runner_ups=runner_ups: chain.draft_nodes(
                grown(), num_nodes=depth, max_depth=depth, runner_ups=runner_ups, **drafting)
        for depth in (2, probe.max_depth):
            parts["tree", depth] = lambda depth=depth: tree.draft_nodes(grown(), num_nodes=probe.num_nodes,
                                                                         max_depth=depth, **drafting)
        sampled = [TreeConfig.chain(1), probe] if drafting["do_sample"] else []
        for candidate in sampled:
            parts["sample", candidate] = lambda candidate=candidate: sample(candidate)
        # every part once per pass, the fastest pass kept: a slow spell of the device or the host within one pass
        # does not set a cost
        passes = [{key: seconds(step) for key, step in parts.items()} for _ in range(PASSES)]
        cost = {key: min(times[key] for times in passes) for key in parts}
        verify_times = cost["verify", small], cost["verify", large]
        chains = [cost["chain", 1, 0], cost["chain", probe.max_depth, 0], cost["chain", probe.max_depth, 1]]
        trees = [cost["tree", 2], cost["tree", probe.max_depth]]
        sampling = (0.0, 0.0)
        if sampled:
            sampling = _line(*map(sampling_passes, sampled), *(cost["sample", candidate] for candidate in sampled))
        verifier.start()
        chain.cache = None
        tree.start(probe)
        verify_fixed, verify_per_token = _line(small, large, *verify_times)
        chain_fixed, chain_step = _line(1, probe.max_depth, *chains[:2])
        tree_fixed, tree_forward = _line(1, probe.max_depth - 1, *trees)
        return cls(verify_fixed, verify_per_token, chain_fixed, chain_step, tree_fixed, tree_forward,
                   max(chains[2] - chains[1], 0.0), *sampling)


def sampling_passes(shape) -> int:
    """Row passes over the vocabulary of a sampled round's rejection sampling for `shape`: each row's draw, and each
    child of a row with children (`TreeVerifier.sample`; a tree's nodes with children: at least one per level, and
    at least its nodes over the children a node may have)."""
    parents = max(shape.max_depth, -(-shape.num_nodes // shape.children))
    return sampled_rows(1 + shape.num_nodes) + sampled_rows(parents) * shape.children


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chain_after(committed: torch.Tensor, drafts: int) -> TokenTree:
    """A chain of `drafts` nodes after `committed`, for timing a verification pass."""
    last = int(committed[-1])
    return chain_tree([last] * (drafts + 1), [[]] * drafts, committed.shape[0] - 1)


def _tree_to_sample(committed: torch.Tensor, count: int, children: int, vocab_size: int) -> TokenTree:
    """A tree of `count` nodes, each with `children` children until the count is reached, with a uniform q at
    every node: for timing the sampling step of a shape."""
    tree = TokenTree(root_position=committed.shape[0] - 1)
    tree.add(0, -1)
    parent = 0
    while len(tree) < count:
        parent += len(tree.children[parent]) == children
        tree.add(len(tree) % vocab_size, parent)
    q = torch.full((vocab_size,), 1 / vocab_size, device=committed.device)
    tree.probs = [q if node_children else None for node_children in tree.children]
    return tree


def _line(x1: int, x2: int, y1: float, y2: float) -> tuple[float, float]:
    """Intercept and slope (neither below zero) of the line through (x1, y1) and (x2, y2)."""
    slope = max((y2 - y1) / (x2 - x1), 0.0) if x2 > x1 else 0.0
    return max(y1 - slope * x1, 0.0), slope


class AutomaticDrafter:
    """Drafts one generation for an automatic `TreeConfig`: the probe first, then, chosen again every
    `RESHAPE_ROUNDS` rounds, the candidate shape with the most expected tokens per second by the generation's rates
    (`shape` is the one drafted next)."""

    def __init__(self, chain, tree, config, costs: RoundCosts):
        self.chain, self.tree_drafter, self.costs, self.rates = chain, tree, costs, SiblingAcceptance()
        self.assistant = tree.assistant
        self.candidates = config.candidates()
        self.seconds = {shape: costs.seconds(shape) for shape in self.candidates}  # fixed for the generation
        self.children = max(shape.children for shape in self.candidates)
        self.shape = config.probe
        self.rounds = 0

    def draft_nodes(self, committed: torch.Tensor, *, num_nodes: int, **options) -> DraftNodes:
        self.drafting = self.chain if self.shape.is_chain else self.tree_drafter
        if self.shape.is_chain:
            options["runner_ups"] = self.shape.runner_ups
        else:  # the tree values its children by the rates its shape was chosen by
            options["sibling_acceptance"] = self.rates
        return self.drafting.draft_nodes(committed, num_nodes=num_nodes, max_depth=self.shape.max_depth, **options)

    def tree(self) -> TokenTree:
        return self.drafting.tree()

    def update(self, trials: list[tuple[int, int | None]]) -> None:
        self.rates.record_round(trials)  # the rates its trees are valued by, too
        self.rounds += 1
        if self.rounds >= PROBE_ROUNDS and (self.rounds - PROBE_ROUNDS) % RESHAPE_ROUNDS == 0:
            self.shape = self.best()

    def best(self):
        """The candidate of the most expected tokens per second by the measured rates and round costs (host work
        between rounds: each candidate's shares are a prefix of the widest one's, computed once)."""
        shares = self.rates.shares(self.children)
        return max(self.candidates,
                   key=lambda shape: (1 + drafts_from_shares(shape, shares[: shape.children])) / self.seconds[shape])


def expected_drafts(shape, rates: SiblingAcceptance) -> float:
    """The drafts `shape` expects accepted: the sum of its nodes' chances of being accepted, each its parent's times
    its share (`rates.shares`: its earlier siblings rejected, it accepted). A chain grows from first children, each
    beside its runner-ups; a tree is the one the tree drafter builds from the same shares: best first, its
    `num_nodes` likeliest nodes no deeper than `max_depth`, with at most `max_children` children a node."""
    return drafts_from_shares(shape, rates.shares(shape.children))


def drafts_from_shares(shape, shares: list[float]) -> float:
    """`expected_drafts` from the shares of `shape.children` children."""
    if shape.is_chain:
        reached, total = 1.0, 0.0
        for _ in range(shape.max_depth):
            total += reached * sum(shares)
            reached *= shares[0]
        return total
    frontier = [(-share, 1) for share in shares]  # (minus the chance, depth): the root's children
    total = 0.0
    for _ in range(shape.num_nodes):
        if not frontier:  # every node a tree of this depth and width can hold
            break
        chance, depth = heapq.heappop(frontier)
        total -= chance
        if depth < shape.max_depth:
            for share in shares:
                heapq.heappush(frontier, (chance * share, depth + 1))
    return total


def automatic_drafter(target, assistant, verifier, length: int, config, do_sample: bool, processors,
                      temperature: float, compile_options: dict | None) -> AutomaticDrafter:
    """The automatic drafter for a generation of `length` positions, over its engines. Its round costs: measured
    on first use and kept on the assistant (the assistant's `drafting.round_costs`, when set, are chosen by
    instead; the first use still captures the engines). Costs are kept per drafting mode and schedule: sampled
    drafts cost more than greedy ones."""
    chain = ChainDrafter(assistant, config.max_depth, compile_options)
    tree = drafter_for(assistant, length, config.probe, compile_options)
    mode = drafting_mode(assistant, do_sample, temperature, processors)
    kept = assistant.__dict__.setdefault("_dynaspec_round_costs", {})
    # per target, device, shape and compilation, and per mode (a head over more tokens costs more); and per build
    # of the engines, whose graphs measuring captures
    key = (id(target), target.device, target.dtype, config.probe, repr(compile_options), mode, id(verifier), id(tree))
    if key not in kept:
        kept[key] = RoundCosts.measure(verifier, chain, tree, config, do_sample=do_sample,
                                       processors=processors, temperature=temperature)
    return AutomaticDrafter(chain, tree, config, assistant.drafting.round_costs or kept[key])
