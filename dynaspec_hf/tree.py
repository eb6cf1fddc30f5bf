"""DySpec token trees (arXiv 2410.11744): drafted where the drafter is most likely to be right.

A tree grows from its root, the last committed token. Each drafter forward takes the most valuable nodes not yet
forwarded (any depth; a node's value estimates the probability that the target accepts its whole path) and gives
each of them candidate children from its routed shortlist; the most valuable candidates become the tree. Only
nodes with children need a forward, so depth, not node count, sets the drafting cost.

Why sampled trees are valued by measured rates, not by q: under sampling a node's children are drawn from q
without replacement and verified by recursive rejection sampling (see `generation.py`), which is exact only if
whether the i-th child exists is decided before that child is drawn. Valuing a child by q of its own token would
keep likely tokens and drop unlikely ones, a bias; valuing it by how often an i-th child gets accepted does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .draft_output import output_cache
from .static_cache import StaticCacheModel, causal


@dataclass
class TokenTree:
    """Node 0 is the root (the last committed token, at sequence position `root_position`); nodes 1.. are drafts.

    Parents are numbered before their children, in the order the target's verification pass reads the nodes;
    each node's children are listed in the order they were drawn.
    """

    root_position: int
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    children: list[list[int]] = field(default_factory=list)
    probs: list[torch.Tensor | None] = field(default_factory=list)  # q at each node (None: took no forward)
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


@dataclass
class SiblingAcceptance:
    """How often a sampled tree's i-th child of a node is accepted once the earlier children were rejected, counted
    over the rounds of one generation (Laplace's rule: 1/2 before any evidence).

    Under sampling the tree's shape must not depend on the drafted tokens (recursive rejection sampling would be
    biased), so a child is valued by these rates, the verified outcomes of earlier rounds, not by q of its token
    (Sequoia, arXiv 2402.12374, values positions the same way, from rates measured offline).
    """

    accepted: list[int] = field(default_factory=list)
    reached: list[int] = field(default_factory=list)

    def rate(self, index: int) -> float:
        if index >= len(self.reached):
            return 0.5
        return (self.accepted[index] + 1) / (self.reached[index] + 2)

    def scores(self, count: int) -> list[float]:
        """Values of a node's first `count` children relative to the node: non-increasing, so the tree keeps a
        prefix of each node's draws (a later draw stands for q only given the earlier ones)."""
        out = []
        for index in range(count):
            out.append(min(self.rate(index), out[-1]) if out else self.rate(index))
        return out

    def record(self, candidates: int, accepted_index: int | None) -> None:
        """One node's outcome: `candidates` children were tried in order until `accepted_index` (None: all failed)."""
        tried = candidates if accepted_index is None else accepted_index + 1
        while len(self.reached) < tried:
            self.reached.append(0)
            self.accepted.append(0)
        for index in range(tried):
            self.reached[index] += 1
        if accepted_index is not None:
            self.accepted[accepted_index] += 1


class TreeDrafter:
    """Drafts token trees for one `DynaSpecAssistant` at batch 1, on a static cache of its drafter.

    Two phases per tree. Expansion: up to `max_depth` drafter forwards, the first over the committed tokens not
    cached yet, then each over the `width` most valuable nodes not forwarded yet (any depth), which gives each of
    them `min(width, max_children)` candidate children. Selection: the most valuable candidates form the tree. A
    node's value estimates the probability that its path is accepted: greedy, the product of q along it (DySpec);
    sampling, the product of `SiblingAcceptance` rates of the child indices along it. Leaves need no forward, so a
    tree of depth d costs d drafter forwards, like a chain of d.

    Every forward reads and writes static buffers (a node forward is padded to `width` nodes, and all its nodes
    share the shortlist of its shallowest node's draft position), so on one GPU each replays a CUDA graph; the
    host only chooses the next nodes.
    """

    def __init__(self, assistant, max_length: int, max_depth: int, width: int):
        self.assistant, self.max_depth, self.width = assistant, max_depth, width
        self.capacity = width * max(max_depth - 1, 1)  # cache positions the node forwards of one tree take
        self.max_length = max_length
        self.cache = StaticCacheModel(assistant.drafter, max_length + self.capacity)
        self.device, self.dtype = device, dtype = assistant.device, assistant.dtype
        hidden_size, vocab = assistant.config.drafter_config.hidden_size, assistant.config.vocab_size
        self.prefix = torch.zeros(1, max_depth + 2, dtype=torch.long, device=device)  # re-read + accepted + bonus
        self.ids = torch.zeros(1, width, dtype=torch.long, device=device)
        self.positions = torch.zeros(width, dtype=torch.long, device=device)
        self.block = torch.zeros(width, self.capacity, dtype=torch.bool, device=device)
        self.parent_rows = torch.zeros(width, dtype=torch.long, device=device)
        self.rows = torch.zeros(width, dtype=torch.long, device=device)
        self.base = torch.zeros((), dtype=torch.long, device=device)  # where the nodes start in the cache
        self.states = torch.zeros(2 + self.capacity, hidden_size, dtype=dtype, device=device)  # before root, root, nodes
        self.logits = torch.zeros(width, vocab, dtype=torch.float32, device=device)
        self.context = torch.full((1, assistant.config.max_context_tokens), -1, dtype=torch.long, device=device)
        self.index = assistant.lm_head.index()
        self.cached = 0

    def start(self) -> None:
        """Begin a generation: nothing is cached."""
        self.cached = 0

    def _prefix_step(self, ids: torch.Tensor, temperature: float) -> None:
        """Body over `ids` `[1, count]`; the root's body output and its logits (into row 0)."""
        count = ids.shape[1]
        positions = torch.arange(count, device=self.device) + self.cache.write_position
        states = self.cache.forward(ids, positions, causal(count, self.device)).last_hidden_state[0]
        self.states[1].copy_(states[-1])
        if count > 1:
            self.states[0].copy_(states[-2])
        self.logits[:1].copy_(self._head(self.states[1:2], self.states[0:1], ids[:, -1], 0, temperature))

    def _node_step(self, depth: int, temperature: float) -> None:
        """Body over the padded node batch; every node's body output and logits."""
        states = self.cache.forward(self.ids, self.positions, self.block, base=self.base).last_hidden_state[0]
        self.states.index_copy_(0, self.rows, states)
        self.logits.copy_(self._head(states, self.states[self.parent_rows], self.ids[0], depth, temperature))

    def _head(self, hidden, previous, token_ids, depth: int, temperature: float) -> torch.Tensor:
        context = self.context.expand(hidden.shape[0], -1) if self.context.shape[1] else None
        return self.assistant.next_token_logits(hidden, previous, token_ids, depth, self.index, context, temperature)

    @torch.no_grad()
    def draft(self, committed: torch.Tensor, *, num_nodes: int, do_sample: bool, max_children: int | None = None,
              processors=None, temperature: float = 0.0, sibling_acceptance: SiblingAcceptance | None = None
              ) -> TokenTree:
        """A tree of at most `num_nodes` draft tokens after `committed` (1-D ids on the assistant's device, which
        extend those of the previous call since `start`). Under sampling, children are drawn without replacement
        from q, the processed (temperature / top-k / top-p) shortlist distribution; greedy trees take each node's
        most probable tokens. `temperature` (0: greedy) picks the shortlist schedule."""
        device, length, width = self.device, committed.shape[0], self.width
        start = max(min(self.cached, length - 2), 0)  # re-read two tokens: the router's input
        count = length - start
        self.cache.set_length(start)
        if start == 0:
            self.states[0].zero_()
        if self.context.shape[1]:
            self.context.copy_(self.assistant.context_tokens(committed[None], size=self.context.shape[1]))
        if start > 0 and count <= self.prefix.shape[1]:
            ids = self.prefix[:, :count]
            ids.copy_(committed[None, start:])
            shortlist = self.assistant.config.shortlist_at(0, temperature)
            self.cache.run(("prefix", count, *shortlist), lambda: self._prefix_step(ids, temperature))
        else:  # the prompt, eagerly (its first forward also allocates the static cache)
            self._prefix_step(committed[None, start:], temperature)
        self.cached = length
        self.base.fill_(length)

        rates = sibling_acceptance or SiblingAcceptance()
        per_node = min(width, max_children or width)
        # every candidate node: token, parent, depth, value; q once the node is forwarded
        tokens, parents, depths, values = [int(committed[-1])], [-1], [0], [1.0]
        probs: dict[int, torch.Tensor] = {}
        slot: dict[int, int] = {}  # forwarded node -> its cache position after `length`

        def expand(nodes: list[int], logits: torch.Tensor) -> None:
            """q for the forwarded `nodes` from their logits, then their candidate children."""
            if do_sample and processors:
                logits = processors(None, logits)
            q = logits.softmax(-1)
            counts = (q > 0).sum(-1).clamp(max=per_node).tolist()  # per node: a top-k / top-p q has few tokens
            if do_sample:  # Gumbel-top-k: the order of draws from q without replacement, every row at once
                drawn = (q.log() - torch.empty_like(q).exponential_().log()).topk(per_node).indices.tolist()
                scores = [rates.scores(per_node)] * len(nodes)
            else:
                top = q.topk(per_node)
                drawn, scores = top.indices.tolist(), top.values.tolist()
            for node, row, count, row_tokens, row_scores in zip(nodes, q, counts, drawn, scores):
                probs[node] = row
                for token, score in zip(row_tokens[:count], row_scores[:count]):
                    tokens.append(token)
                    parents.append(node)
                    depths.append(depths[node] + 1)
                    values.append(values[node] * score)

        def ranked(nodes) -> list[int]:
            return sorted(nodes, key=lambda n: (-values[n], n))  # ties: earlier first, so parents precede children

        expand([0], self.logits[:1].clone())
        for forward in range(self.max_depth - 1):
            kept = ranked(range(1, len(tokens)))[:num_nodes]  # a node outside them has no child inside them
            batch = [n for n in kept if n not in slot and depths[n] < self.max_depth][:width]
            if not batch:
                break
            # each node sees the committed prefix, its forwarded ancestors and itself; padding sees only itself
            before = forward * width
            ids, positions = [0] * width, [length] * width
            parent_rows, block = [1] * width, torch.zeros(width, self.capacity, dtype=torch.bool)
            block[torch.arange(width), torch.arange(before, before + width)] = True
            for i, node in enumerate(batch):
                slot[node] = before + i
                ids[i], positions[i] = tokens[node], length - 1 + depths[node]
                parent = parents[node]
                parent_rows[i] = 1 if parent == 0 else 2 + slot[parent]
                while parent > 0:
                    block[i, slot[parent]] = True
                    parent = parents[parent]
            self.ids.copy_(torch.tensor([ids]))
            self.positions.copy_(torch.tensor(positions))
            self.parent_rows.copy_(torch.tensor(parent_rows))
            self.rows.copy_(torch.arange(2 + before, 2 + before + width))
            self.block.copy_(block)
            depth = min(depths[n] for n in batch)
            shortlist = self.assistant.config.shortlist_at(depth, temperature)
            self.cache.run(("nodes", *shortlist), lambda: self._node_step(depth, temperature))
            expand(batch, self.logits[: len(batch)].clone())
        self.cache.set_length(length)

        tree = TokenTree(root_position=length - 1)
        number = {0: tree.add(tokens[0], -1)}
        for node in sorted(ranked(range(1, len(tokens)))[:num_nodes]):  # creation order: parents first
            number[node] = tree.add(tokens[node], number[parents[node]])
        for node, row in probs.items():
            if node in number:
                tree.probs[number[node]] = row
        return tree

    def release(self) -> None:
        self.cache.release()


def tree_drafter(assistant, length: int, max_depth: int, width: int) -> TreeDrafter:
    """The assistant's tree drafter, kept on it between calls so its graphs are captured once; rebuilt when a
    generation needs a longer cache or another tree shape."""
    drafter = assistant.__dict__.get("_dynaspec_tree_drafter")
    if (drafter is None or drafter.max_length < length or (drafter.max_depth, drafter.width) != (max_depth, width)
            or drafter.device != assistant.device or drafter.dtype != assistant.dtype
            or drafter.context.shape[1] < assistant.config.max_context_tokens):
        if drafter is not None:
            drafter.release()
        drafter = TreeDrafter(assistant, max(256, 2 * length), max_depth, width)
        assistant.__dict__["_dynaspec_tree_drafter"] = drafter
    drafter.start()
    return drafter
