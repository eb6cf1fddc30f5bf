"""DySpec token trees (arXiv 2410.11744): drafted greedily where the drafter is most confident.

A tree grows from its root, the last committed token. Every node knows its drafter distribution q over the
next token (computed with the node's own routed shortlist). Each node offers one "next child" slot at a time,
valued at the node's path probability times the drafter mass its next child can still take; the most valuable
slots are opened first, up to `width` per drafter forward, until the tree holds `num_nodes` nodes.

Why the slot's value never depends on the token it reveals: under sampling a node's children are drawn from q
without replacement, one per opened slot, and recursive rejection sampling (see `generation.py`) is exact only if
whether the i-th child exists is decided before that child is drawn.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from .draft_output import output_cache
from .static_cache import StaticCacheModel, causal


@dataclass
class TokenTree:
    """Node 0 is the root (the last committed token, at sequence position `root_position`); nodes 1.. are drafts.

    Nodes are numbered in creation order, which is also their order in the drafter's cache and in the target's
    verification pass; each node's children are listed in the order they were drawn.
    """

    root_position: int
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    children: list[list[int]] = field(default_factory=list)
    probs: list[torch.Tensor | None] = field(default_factory=list)  # q at each node (None until drafted)
    paths: list[list[int]] = field(default_factory=list)  # draft nodes from the root's child down to the node

    def add(self, token: int, parent: int) -> int:
        node = len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(0 if parent < 0 else self.depths[parent] + 1)
        self.children.append([])
        self.probs.append(None)
        self.paths.append([] if parent < 0 else self.paths[parent] + [node])
        if parent >= 0:
            self.children[parent].append(node)
        return node

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestor_mask(self, device=None) -> torch.Tensor:
        """`[N-1, N-1]` bool over the draft nodes: row i may attend to column j (j is i or one of its ancestors)."""
        n = len(self) - 1
        rows = [node - 1 for node in range(1, len(self)) for _ in self.paths[node]]
        columns = [ancestor - 1 for node in range(1, len(self)) for ancestor in self.paths[node]]
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        mask[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(columns, dtype=torch.long, device=device)] = True
        return mask

    def positions(self, device=None) -> torch.Tensor:
        """Sequence positions of the draft nodes: the root's position plus their depth."""
        return torch.tensor(self.depths[1:], dtype=torch.long, device=device) + self.root_position


@torch.no_grad()
def draft_chain(assistant, committed: torch.Tensor, cache, *, num_nodes: int, do_sample: bool, processors=None,
                temperature: float = 0.0) -> tuple[TokenTree, object]:
    """A chain of `num_nodes` drafts after `committed` as a `TokenTree`, from the assistant's chain drafter
    (`draft_block`: CUDA-graph steps where it can), so chains in this loop draft as in transformers' loop.

    `cache` is what the previous call returned (None at first); returns the tree and the cache for the next call.
    """
    length = committed.shape[0]
    out = assistant.draft_block(committed[None], num_nodes, cache, do_sample=do_sample, logits_processor=processors,
                                temperature=temperature)
    tree = TokenTree(root_position=length - 1)
    node = tree.add(int(committed[-1]), -1)
    for token, logits in zip(out.sequences[0, length:].tolist(), out.scores):
        if do_sample:  # q for rejection sampling; greedy acceptance reads only the tokens
            tree.probs[node] = logits[0].softmax(-1)
        node = tree.add(token, node)
    return tree, output_cache(out)


@torch.no_grad()
def draft_tree(
    assistant,
    committed: torch.Tensor,
    cache: StaticCacheModel,
    *,
    num_nodes: int,
    max_depth: int,
    width: int,
    do_sample: bool,
    max_children: int | None = None,
    processors=None,
    temperature: float = 0.0,
) -> TokenTree:
    """Grow a tree of at most `num_nodes` draft tokens after `committed` (1-D ids on the assistant's device).

    `cache` is a `StaticCacheModel` of `assistant.drafter` holding a prefix of `committed` (the static cache and
    masks the chain drafter and the verifier use); on return it holds exactly `committed`.
    Under sampling, q is the processed (temperature / top-k / top-p) shortlist distribution the children were
    drawn from; greedy trees take each node's most probable tokens first. `temperature` (0: greedy) picks the
    shortlist schedule.
    """
    device, length = committed.device, committed.shape[0]
    start = max(min(int(cache.write_position), length - 2), 0)  # re-read two tokens: the router's input
    cache.set_length(start)
    positions = torch.arange(start, length, device=device)
    states = cache.forward(committed[None, start:], positions, causal(length - start, device)).last_hidden_state[0]
    root_previous = states[-2] if states.shape[0] > 1 else torch.zeros_like(states[-1])

    index = assistant.lm_head.index()
    context = assistant.context_tokens(committed[None])  # the verified text; drafted nodes do not join it
    tree = TokenTree(root_position=length - 1)
    tree.add(int(committed[-1]), -1)
    hidden = [states[-1]]  # body output per node
    values = [1.0]  # estimated probability that the path to each node is right
    remaining: list[torch.Tensor] = []  # per node: q without the children drawn so far
    slots: list[tuple[float, int]] = []  # heap of (-value of the node's next child, node)

    def offer(node: int) -> None:
        """Queue the node's next child slot, valued before its token is known."""
        if tree.depths[node] >= max_depth or len(tree.children[node]) >= (max_children or len(remaining[node])):
            return
        mass = float(remaining[node].sum()) if do_sample else float(remaining[node].max())
        if mass > 1e-6:
            heapq.heappush(slots, (-values[node] * mass, node))

    def fill_distributions(nodes: list[int], previous: list[torch.Tensor]) -> None:
        """q for `nodes`, grouped by depth because the schedule sets the shortlist size per draft position."""
        for depth in sorted({tree.depths[n] for n in nodes}):
            group = [i for i, n in enumerate(nodes) if tree.depths[n] == depth]
            logits = assistant.next_token_logits(
                torch.stack([hidden[nodes[i]] for i in group]),
                torch.stack([previous[i] for i in group]),
                torch.tensor([tree.tokens[nodes[i]] for i in group], device=device),
                depth,
                index,
                None if context is None else context.expand(len(group), -1),
                temperature,
            )
            if do_sample and processors:
                logits = processors(None, logits)
            for i, row in zip(group, logits.softmax(-1)):
                tree.probs[nodes[i]] = row
        for node in nodes:
            remaining.append(tree.probs[node].clone())
            offer(node)

    fill_distributions([0], [root_previous])
    while slots and len(tree) - 1 < num_nodes:
        opened = []
        while slots and len(opened) < width and len(tree) - 1 < num_nodes:
            _, parent = heapq.heappop(slots)
            left = remaining[parent]
            token = int(torch.multinomial(left, 1)) if do_sample else int(left.argmax())
            left[token] = 0
            values.append(values[parent] * float(tree.probs[parent][token]))
            opened.append(tree.add(token, parent))
            offer(parent)
        # One drafter forward for the opened nodes: each sees the committed prefix, its ancestors and itself (the
        # nodes so far sit after the committed text, in creation order).
        out = cache.forward(torch.tensor([[tree.tokens[n] for n in opened]], device=device),
                            tree.positions(device)[opened[0] - 1 :], tree.ancestor_mask(device)[opened[0] - 1 :],
                            base=length)
        hidden.extend(out.last_hidden_state[0])
        fill_distributions(opened, [hidden[tree.parents[n]] for n in opened])
    cache.set_length(length)
    return tree
