"""DySpec token trees (arXiv 2410.11744): drafted where the target is most likely to accept.

A tree grows from its root, the last committed token. Each drafter forward takes the most valuable nodes not yet
forwarded (any depth; a node's value estimates the probability that the target accepts its whole path) and gives
each of them candidate children from its routed shortlist; the most valuable candidates become the tree. Only
nodes with children need a forward, so depth, not node count, sets the drafting cost.

Why a child is valued by measured acceptance, not by q of its token (DySpec's value):
- Greedy, the target takes a drafter's first choice far more often than q says: a drafter distilled from the
  target spreads q like the target's own distribution, whose top token often holds a third of the mass while the
  two models agree on it most of the time. Products of q then undervalue depth by that factor per level, and
  trees grow wide and shallow where a chain would be accepted whole.
- Sampling, children are drawn from q without replacement and verified by recursive rejection sampling (see
  `generation.py`), which is exact only if whether the i-th child exists is decided before it is drawn: valuing
  a child by q of its own token would bias it.
So the i-th child of a node is valued by its share: the chance, measured over earlier rounds, that the earlier
children were rejected and it was accepted (`SiblingAcceptance`; Sequoia, arXiv 2402.12374, values positions from
rates measured offline). The tree's shape then depends only on earlier rounds' outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .compat import output_cache
from .configuration_dynaspec import Shortlist
from .eager_draft import draft_tokens
from .engines import engine_for
from .fast_draft import MAX_GRAPH_TOKENS, draft_block
from .sampling import processors_key
from .static_cache import StaticCacheModel, causal, compiled
from .tree_pool import CandidatePool, add_children, chosen_tree, likeliest_children, next_nodes, nodes_to_verify

MEMORY = 64  # rounds over which a sibling acceptance rate fades


@dataclass(frozen=True)
class TreeConfig:
    """Shape of the draft tree. `TreeConfig()` sizes it automatically (`budget.py`): per generation, the chain or
    tree of at most `max_depth` drafts with the most expected tokens per second for this pair on this device.
    Setting `num_nodes` fixes the shape; `TreeConfig.chain(n)` drafts a plain chain of n (`DEFAULT_TREE`, what
    `dynaspec_hf.generate` drafts unless told otherwise, is a chain), and `TreeConfig.chain(n, runner_ups=1)` a
    chain with each draft's runner-up beside it as a leaf."""

    num_nodes: int | None = None  # draft tokens per tree; None: automatic
    max_depth: int = 7  # longest draft path: the drafter forwards this many times per tree
    width: int = 4  # nodes each drafter forward takes, and candidate children per node
    max_children: int | None = None  # per node, when fewer than `width`
    runner_ups: int = 0  # a chain's leaves beside each draft (`ChainDrafter`)

    @classmethod
    def chain(cls, length: int, runner_ups: int = 0) -> "TreeConfig":
        return cls(num_nodes=length * (1 + runner_ups), max_depth=length, width=1, max_children=1,
                   runner_ups=runner_ups)

    @property
    def is_automatic(self) -> bool:
        return self.num_nodes is None

    @property
    def is_chain(self) -> bool:
        return self.max_children == 1 and not self.is_automatic

    @property
    def children(self) -> int:
        """Candidate children a node may have: a chain's draft and its runner-ups, or a tree's own."""
        return 1 + self.runner_ups if self.is_chain else min(self.width, self.max_children or self.width)

    @property
    def probe(self) -> "TreeConfig":
        """The largest candidate of an automatic shape, drafted first: its rounds measure how often each child of a
        node is accepted, from which every candidate's accepted drafts are predicted (`budget.py`)."""
        return self.candidates()[-1]

    def candidates(self) -> list["TreeConfig"]:
        """What an automatic shape chooses from: chains of 1 to `max_depth` drafts, without and with a runner-up
        beside each, and trees of each depth from 2 with 2 or 4 nodes per level (the probe, the largest, last)."""
        chains = [TreeConfig.chain(depth, runner_ups) for runner_ups in (0, 1)
                  for depth in range(1, self.max_depth + 1)]
        trees = [TreeConfig(per_level * depth, depth, self.width, self.max_children)
                 for per_level in (2, 4) for depth in range(2, self.max_depth + 1)]
        return chains + trees

    @property
    def verified_tokens(self) -> int:
        """Tokens of one verification pass after the prompt: the re-fed accepted ones and the target's, then the
        drafts (a chain drafts at most `max_depth`; an automatic shape at most its probe's)."""
        if self.is_automatic:
            return self.probe.verified_tokens
        if self.is_chain:
            return self.max_depth + 1 + min(self.num_nodes, self.max_depth * (1 + self.runner_ups))
        return self.max_depth + 1 + self.num_nodes

    def validate(self) -> None:
        if min(1 if self.is_automatic else self.num_nodes, self.max_depth, self.width, self.max_children or 1) < 1:
            raise ValueError(f"Every TreeConfig field but runner_ups must be at least 1, got {self}.")
        if not 0 <= self.runner_ups < MAX_GRAPH_TOKENS or (self.runner_ups and not self.is_chain):
            raise ValueError(f"runner_ups (leaves beside a chain's drafts) takes a count from 0 to "
                             f"{MAX_GRAPH_TOKENS - 1}, for chains (TreeConfig.chain(length, runner_ups)), got {self}.")
        if self.is_automatic and (self.max_depth < 2 or min(self.width, self.max_children or self.width) < 2):
            raise ValueError(f"An automatic TreeConfig (num_nodes=None) chooses among trees, so it needs max_depth "
                             f"and children per node of at least 2, got {self}: give num_nodes for a fixed shape.")


# the own loop's default: the fastest shape of the published benchmark (BENCHMARKS.md)
DEFAULT_TREE = TreeConfig.chain(6)


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

    def nodes(self, device=None) -> "DraftNodes":
        """The draft nodes as the verification pass reads them."""
        n = len(self) - 1
        rows = [node - 1 for node in range(1, len(self)) for _ in self.paths[node]]
        columns = [ancestor - 1 for node in range(1, len(self)) for ancestor in self.paths[node]]
        visible = torch.zeros(n, n, dtype=torch.bool)
        visible[torch.tensor(rows, dtype=torch.long), torch.tensor(columns, dtype=torch.long)] = True
        positions = torch.tensor(self.depths[1:], dtype=torch.long) + self.root_position
        return DraftNodes(*(t.to(device) for t in (torch.tensor(self.tokens[1:], dtype=torch.long), positions, visible)))


@dataclass
class DraftNodes:
    """A tree's draft nodes (not the root, the last committed token) as the target's verification pass reads them,
    numbered as in the `TokenTree`, on the device: tokens `[n]`, sequence positions `[n]` and which
    node sees which `[n, n]` (itself and its ancestors). Nodes past the tree's are padding, which sees only itself.
    A tree drafter builds them on the device, so the target's pass needs no read of the tree first."""

    tokens: torch.Tensor
    positions: torch.Tensor
    visible: torch.Tensor

    def first(self, count: int) -> "DraftNodes":
        return DraftNodes(self.tokens[:count], self.positions[:count], self.visible[:count, :count])


class ChainDrafter:
    """Chains, as token trees of width 1, for the own loop: drafted by the assistant's chain drafter on its static
    cache (`draft_block`: CUDA-graph steps on CUDA, eager ones elsewhere), as in transformers' loop on the GPU.

    With `runner_ups`, each draft gets that many leaves beside it: the tokens its draft step would have drafted
    next (the next likeliest greedy; further draws without replacement from q when sampling), verified in the same
    target pass. A leaf needs no drafter forward, so a runner-up costs only a few verified tokens, and where the
    target rejects a chain's draft for its runner-up, the round gains that token."""

    def __init__(self, assistant, max_depth: int, compile_options: dict | None = None, runner_ups: int = 0):
        self.assistant, self.max_depth, self.compile_options = assistant, max_depth, compile_options
        self.shape = TreeConfig.chain(max_depth, runner_ups)
        self.cache = None  # the chain drafter's cache between rounds
        self.layouts = {}  # (drafts, runner-ups) -> their depths and visibility, built on the device once

    @torch.no_grad()
    def draft_nodes(self, committed: torch.Tensor, *, num_nodes: int, do_sample: bool, processors=None,
                    temperature: float = 0.0, max_depth: int | None = None, runner_ups: int | None = None
                    ) -> DraftNodes:
        """Draft a chain of at most `num_nodes` (and `max_depth`) drafts after `committed` (1-D ids that extend the
        previous call's), each with `runner_ups` leaves beside it (default: the shape's), and return its nodes as
        the verification pass reads them, without waiting for the device (`tree` reads the chain); under sampling
        each chain node keeps q, the distribution its children were drawn from."""
        runner_ups = self.shape.runner_ups if runner_ups is None else runner_ups
        length = committed.shape[0]
        out = draft_block(self.assistant, committed[None], min(num_nodes, max_depth or self.max_depth), self.cache,
                          do_sample=do_sample, logits_processor=processors, temperature=temperature,
                          compile_options=self.compile_options, static_cache=True, keep_scores=do_sample,
                          runner_ups=runner_ups)
        self.cache = output_cache(out)
        drafts = out.sequences[0, length - 1 :]  # the root, then the drafts
        count = drafts.shape[0] - 1
        leaves = out.runner_ups[0] if runner_ups else None
        self.drafted = length, drafts, leaves, [scores[0].softmax(-1) for scores in out.scores] if do_sample else None
        if (count, runner_ups) not in self.layouts:  # the shape's positions and mask, copied to the device once
            layout = chain_tree([0] * (count + 1), [[0] * runner_ups] * count, root_position=0).nodes(drafts.device)
            self.layouts[count, runner_ups] = layout.positions, layout.visible
        depths, visible = self.layouts[count, runner_ups]
        tokens = drafts[1:] if leaves is None else torch.cat([drafts[1:, None], leaves], 1).flatten()
        return DraftNodes(tokens, depths + (length - 1), visible)

    def tree(self) -> TokenTree:
        """The chain `draft_nodes` drafted last, with its runner-ups, as a token tree (numbered as its nodes)."""
        length, drafts, leaves, q = self.drafted
        tokens = drafts.tolist()
        return chain_tree(tokens, leaves.tolist() if leaves is not None else [[] for _ in tokens[1:]], length - 1, q)

    def update(self, trials: list[tuple[int, int | None]]) -> None:
        """A chain's shape does not learn from outcomes."""


def chain_tree(tokens: list[int], leaves: list[list[int]], root_position: int,
               q: list[torch.Tensor] | None = None) -> TokenTree:
    """A chain as a token tree: the root and drafts `tokens`, each draft numbered before the runner-ups beside it
    (`leaves`, one list per draft), which share its parent; under sampling each chain node keeps q (`q[i]`: what
    the children at draft position i were drawn from)."""
    tree = TokenTree(root_position=root_position)
    parent = tree.add(tokens[0], -1)
    for position, (token, runner_ups) in enumerate(zip(tokens[1:], leaves)):
        node = tree.add(token, parent)
        for leaf in runner_ups:
            tree.add(leaf, parent)
        if q is not None:  # q for rejection sampling; greedy acceptance reads the tokens
            tree.probs[parent] = q[position]
        parent = node
    return tree


@dataclass
class SiblingAcceptance:
    """How often a node's i-th child is accepted once the earlier children were rejected (Laplace's rule: 1/2 before
    any evidence), over one generation's rounds in one drafting mode, older rounds fading: how often the target
    takes the drafter's first choice depends on the text, so an earlier text's rates would misprice this one's
    trees. A tree values its children by their `shares` (see the module's docstring for why not by q); the
    automatic shape (`budget.py`) prices its candidates by them.
    """

    accepted: list[float] = field(default_factory=list)
    reached: list[float] = field(default_factory=list)

    def rate(self, index: int) -> float:
        if index >= len(self.reached):
            return 0.5
        return (self.accepted[index] + 1) / (self.reached[index] + 2)

    def shares(self, count: int) -> list[float]:
        """The chance that a node's i-th child is the accepted one, given the node is, for its first `count`
        children: the earlier ones rejected and it accepted. Non-increasing, so the tree keeps a prefix of each
        node's draws (a later draw stands for q only given the earlier ones): each rate is capped by the one before
        it (a child seldom tried is not valued above an earlier one by its prior)."""
        shares, rate, missed = [], 1.0, 1.0
        for index in range(count):
            rate = min(self.rate(index), rate)
            shares.append(missed * rate)
            missed *= 1 - rate
        return shares

    def record_round(self, trials: list[tuple[int, int | None]]) -> None:
        """One round's outcomes (`generation.accept`'s trials), after fading the earlier ones over `MEMORY`
        rounds."""
        self.fade(1 - 1 / MEMORY)
        for candidates, accepted_index in trials:
            self.record(candidates, accepted_index)

    def fade(self, keep: float) -> None:
        """Weigh every earlier outcome by `keep`."""
        self.accepted = [keep * count for count in self.accepted]
        self.reached = [keep * count for count in self.reached]

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
    """Drafts token trees for one `DynaSpecAssistant` at batch 1, on a static cache of its drafter, on the device.

    Two graph replays per tree. The prefix: one forward over the committed tokens not cached yet, which gives the
    root's body output. The expansion: the root's head, then `max_depth - 1` drafter forwards, each over the
    `width` most valuable candidates not forwarded yet (any depth), which gives each of them
    `min(width, max_children)` candidate children; then the most valuable candidates form the tree. A candidate's
    value estimates the probability that its path is accepted: the product of the `SiblingAcceptance` shares of
    the child indices along it. Leaves need no forward, so a tree of depth d costs d drafter forwards, like a chain
    of d.

    The candidates live in fixed device buffers (`tree_pool.CandidatePool`), and the choice of the next nodes (a
    sort by value) runs on the device too, compiled with the forwards, so the whole expansion is one CUDA-graph
    replay, which also lays out the tree's nodes for the target's pass (`draft_nodes`); the host reads the tree
    once, while the target verifies it (`tree`). A node forward whose nodes are all padding (every chosen
    candidate already forwarded) still runs: static shapes cost one spare forward. Each node gets the shortlist of
    its own draft position: a forward computes the head once per distinct shortlist its nodes' positions use (once,
    for a schedule that does not change with the position). Greedy trees choose children from the shortlist rows
    alone; sampled ones keep every forwarded node's q over the vocabulary.
    """

    def __init__(self, assistant, max_length: int, max_depth: int, width: int, compile_options: dict | None = None):
        self.assistant, self.max_depth, self.width = assistant, max_depth, width
        self.forwards = max(max_depth - 1, 1)  # node forwards per tree
        self.capacity = width * self.forwards  # cache positions the node forwards of one tree take
        self.max_length = max_length
        self.cache = StaticCacheModel(assistant.drafter, max_length + self.capacity, compile_options)
        self.device, self.dtype = device, dtype = assistant.device, assistant.dtype
        hidden_size, vocab = assistant.config.drafter_config.hidden_size, assistant.config.vocab_size
        long = dict(dtype=torch.long, device=device)
        self.prefix = torch.zeros(1, max_depth + 2, **long)  # re-read + accepted + bonus
        self.base = torch.zeros((), **long)  # the committed length: where the nodes start in the cache
        self.budget = torch.zeros((), **long)  # draft nodes wanted
        self.depth_limit = torch.zeros((), **long)  # the tree's depth: no node forward takes a node this deep
        self.child_shares = torch.ones(width, dtype=torch.float32, device=device)  # `SiblingAcceptance.shares`
        # written by the host each round and copied without waiting for the device (the round's sync has passed)
        self.child_shares_host = torch.ones(width, dtype=torch.float32, pin_memory=device.type == "cuda")
        # body outputs and q by row: 0 unused (padding writes there), 1 the root, 2 + slot a forwarded node; the
        # body output before the root is row 0 of `states`
        self.states = torch.zeros(2 + self.capacity, hidden_size, dtype=dtype, device=device)
        self.q = torch.zeros(2 + self.capacity, vocab, dtype=torch.float32, device=device)
        size = 1 + width + self.forwards * width * width
        self.pool = CandidatePool.empty(size, self.capacity, device)
        self.result = torch.zeros(4, size, **long)  # what the host reads (`chosen_tree`), after the target's pass starts
        self.result_host = torch.zeros(4, size, dtype=torch.long, pin_memory=device.type == "cuda")
        self.result_read = torch.cuda.Event() if device.type == "cuda" else None
        # the tree's draft nodes as the target's pass reads them (`nodes_to_verify`)
        self.nodes = DraftNodes(torch.zeros(size - 1, **long), torch.zeros(size - 1, **long),
                                torch.zeros(size - 1, size - 1, dtype=torch.bool, device=device))
        self.slots = torch.arange(self.capacity, device=device).view(self.forwards, width)
        self.own_slots = torch.eye(self.capacity, dtype=torch.bool, device=device).view(self.forwards, width, -1)
        # where each node forward's children go in the pool (the root's children first)
        self.spans = torch.arange(1, size, device=device)
        # each node forward and the bookkeeping around them, fused into a few kernels where the forwards are
        # compiled (`tree_pool.py`); the root's children are grown outside any node forward
        self.node_forward = compiled(self._node_forward, compile_options)
        self.add_children = compiled(add_children, compile_options)
        self.greedy_children = compiled(self._greedy_children, compile_options)
        self.chosen_tree = compiled(chosen_tree, compile_options)
        self.nodes_to_verify = compiled(nodes_to_verify, compile_options)
        self.context = torch.full((1, assistant.config.max_context_tokens), -1, dtype=torch.long, device=device)
        self.index = assistant.lm_head.index()
        self.start()

    def start(self, shape: TreeConfig | None = None) -> None:
        """Begin a generation of trees of `shape` (default: the drafter's largest): nothing cached."""
        self.shape = shape or TreeConfig(self.width * self.forwards, self.max_depth, self.width)
        self.cached = 0
        self._expansions = {}  # this generation's expansion plans, graph keys and sibling acceptance rates

    def update(self, trials: list[tuple[int, int | None]]) -> None:
        """Count a round's outcomes (`accept`'s trials) into the sibling acceptance its tree was valued by."""
        self.rates.record_round(trials)

    def _prefix_step(self, ids: torch.Tensor) -> None:
        """Body over `ids` `[1, count]`; the root's body output (and the one before it) and token; the context
        slots updated by `ids`."""
        count = ids.shape[1]
        positions = torch.arange(count, device=self.device) + self.cache.write_position
        states = self.cache.forward(ids, positions, causal(count, self.device)).last_hidden_state[0]
        self.states[1].copy_(states[-1])
        if count > 1:
            self.states[0].copy_(states[-2])
        self.pool.token[:1].copy_(ids[0, -1:])
        if self.context.shape[1]:  # the context slots follow the committed text, inside the prefix's graph
            self.context.copy_(self.assistant.context_tokens(ids, size=self.context.shape[1], recent=self.context))

    def _context(self, hidden: torch.Tensor, shortlist: Shortlist) -> torch.Tensor | None:
        """The context slots for each row of `hidden`, where `shortlist` has any."""
        return self.context.expand(hidden.shape[0], -1) if shortlist.context else None

    def _expansion(self, plan: list[list[tuple[Shortlist, list[int]]]], do_sample: bool, per_node: int,
                   processors) -> None:
        """The whole expansion and the final choice, device work only (what the graph captures). `plan` is
        `shortlist_plan`'s: the root's shortlist, then each node forward's with the draft positions that use them."""
        pool, width = self.pool, self.width
        pool.value.fill_(float("-inf"))
        pool.value[:1].fill_(1.0)  # the root: always ranked first, and already forwarded (the prefix)
        pool.forwarded.zero_()
        pool.forwarded[:1].fill_(True)
        pool.depth[:1].zero_()
        pool.row[:1].fill_(1)
        pool.ancestors[:1].zero_()
        root, nodes = plan[0], plan[1:]
        self._grow(self.spans[:width], self.states[1:2], self.states[0:1], pool.token[:1], pool.depth[:1], root,
                   torch.zeros(1, dtype=torch.long, device=self.device), pool.forwarded[:1], pool.ancestors[:1],
                   pool.row[:1], do_sample, per_node, processors)
        for forward, shortlists in enumerate(nodes):
            span = self.spans[width + forward * width * width : width + (forward + 1) * width * width]
            self.node_forward(self.slots[forward], self.own_slots[forward], span, shortlists, do_sample, per_node,
                              processors)
        chosen = self.chosen_tree(pool, self.budget)
        self.result.copy_(chosen)
        for buffer, value in zip((self.nodes.tokens, self.nodes.positions, self.nodes.visible),
                                 self.nodes_to_verify(pool, chosen[0] > 0, self.base, self.max_depth)):
            buffer.copy_(value)

    def _node_forward(self, slots: torch.Tensor, own_slots: torch.Tensor, span: torch.Tensor, shortlists,
                      do_sample: bool, per_node: int, processors) -> None:
        """One node forward: choose its nodes (into cache `slots`), the drafter's body over them, and their children
        into the pool at `span`. One function, so that compiled it fuses across its parts (a choice's outputs into
        the body's inputs and mask, the body's outputs into the head and the pool's writes)."""
        pool = self.pool
        batch, valid, rows, ids, positions, block, parent_rows = next_nodes(
            pool, self.budget, self.depth_limit, self.base, slots, own_slots)
        states = self.cache.forward(ids, positions, block, base=self.base).last_hidden_state[0]
        self.states[2 + slots] = states
        self._grow(span, states, self.states[parent_rows], ids[0], pool.depth[batch], shortlists, batch, valid,
                   block, rows, do_sample, per_node, processors)

    def _grow(self, span: torch.Tensor, hidden: torch.Tensor, previous: torch.Tensor, token_ids: torch.Tensor,
              depths: torch.Tensor, shortlists, parents: torch.Tensor, valid: torch.Tensor, ancestors: torch.Tensor,
              rows: torch.Tensor, do_sample: bool, per_node: int, processors) -> None:
        """The candidate children of the forwarded `parents` (real where `valid`; body outputs `hidden`, each from
        the shortlist of its depth) into the pool at `span`, `width` each (`ancestors`: the slots each child
        sees), each valued by its parent's value times its index's share. Greedy, without a sampling tail: each
        parent's likeliest tokens, from its shortlist rows alone. Otherwise q over the vocabulary goes into the
        parents' `rows` (recursive rejection sampling reads it), and sampled children are drawn from it without
        replacement."""
        if not do_sample and not any(shortlist.tail for shortlist, _ in shortlists):
            tokens, count = by_position(depths, shortlists, lambda shortlist: self.greedy_children(
                hidden, previous, token_ids, shortlist))
        else:
            logits = by_position(depths, shortlists, lambda shortlist: (self.assistant.draft_step(
                hidden, previous, token_ids, shortlist, self.index, self._context(hidden, shortlist)),))[0]
            if do_sample and processors:
                logits = processors(None, logits)
            q = (logits - logits.logsumexp(-1, keepdim=True)).exp()  # softmax; its CUDA kernel runs a block per row
            self.q.index_copy_(0, rows, q)
            if do_sample:  # the order of draws from q without replacement, every row at once
                tokens = draft_tokens(logits, do_sample=True, runner_ups=self.width - 1)
            else:
                tokens = q.topk(self.width).indices
            count = (q > 0).sum(-1, keepdim=True)  # a top-k / top-p q has few tokens
        shares = self.child_shares.expand(tokens.shape[0], -1)
        self.add_children(self.pool, span, tokens, shares, count, parents, valid, ancestors, per_node)

    def _greedy_children(self, hidden, previous, token_ids, shortlist: Shortlist):
        """Router, head and the likeliest children of each row, from the shortlist's rows alone."""
        logits, tokens, _ = self.assistant.shortlist_logits(hidden, previous, token_ids, shortlist, self.index,
                                                            self._context(hidden, shortlist))
        return likeliest_children(logits, tokens, self.width)

    def shortlist_plan(self, temperature: float, max_depth: int) -> list[list[tuple[Shortlist, list[int]]]]:
        """The root's shortlist, then per node forward (`max_depth - 1` of them) the distinct shortlists of the
        draft positions its nodes can have (forward f takes nodes of depth 1..f+1, and a node of depth d drafts
        position d). Where one shortlist serves all of a forward's nodes its positions are left out, so node
        forwards of every depth are the same call (one compiled function)."""
        plan = [[(self.assistant.config.shortlist_at(0, temperature), [])]]
        for forward in range(max_depth - 1):
            shortlists: dict[Shortlist, list[int]] = {}
            for position in range(1, forward + 2):
                shortlists.setdefault(self.assistant.config.shortlist_at(position, temperature), []).append(position)
            plan.append(list(shortlists.items()) if len(shortlists) > 1 else [(next(iter(shortlists)), [])])
        return plan

    def draft(self, committed: torch.Tensor, **options) -> TokenTree:
        """`draft_nodes`, then the tree it drafted."""
        self.draft_nodes(committed, **options)
        return self.tree()

    @torch.no_grad()
    def draft_nodes(self, committed: torch.Tensor, *, num_nodes: int, do_sample: bool, processors=None,
                    temperature: float = 0.0, max_depth: int | None = None, max_children: int | None = None,
                    sibling_acceptance: SiblingAcceptance | None = None) -> DraftNodes:
        """Draft a tree of at most `num_nodes` draft tokens and `max_depth` levels (at most the drafter's) after
        `committed` (1-D ids on the assistant's device, which extend those of the previous call since `start`), and
        return its draft nodes as the verification pass reads them, without waiting for the device: `tree` reads the
        tree, so the host builds it while the target verifies.
        Under sampling, children are drawn without replacement from q, the processed (temperature / top-k / top-p)
        shortlist distribution; greedy trees take each node's most probable tokens. Children are valued by the shares
        of `sibling_acceptance` (default: this generation's, for this drafting mode). `temperature` (0: greedy) picks
        the shortlist schedule."""
        length = committed.shape[0]
        start = max(min(self.cached, length - 2), 0)  # re-read two tokens: the router's input
        count = length - start
        self.cache.set_length(start)
        if start == 0:
            self.states[0].zero_()
            self.context.fill_(-1)
        if start > 0 and count <= self.prefix.shape[1]:
            ids = self.prefix[:, :count]
            ids.copy_(committed[None, start:])
            self.cache.run(("prefix", count), lambda: self._prefix_step(ids))
        else:  # the prompt, eagerly (its first forward also allocates the static cache)
            self._prefix_step(committed[None, start:])
        self.cached = length
        self.base.fill_(length)
        self.budget.fill_(num_nodes)
        per_node = min(self.width, max_children or self.shape.max_children or self.width)
        max_depth = min(max_depth or self.max_depth, self.max_depth)
        self.depth_limit.fill_(max_depth)
        settings = (temperature, max_depth, do_sample, per_node, processors_key(processors) if do_sample else ())
        if settings not in self._expansions:  # once per generation, not per round: host work the device waits for
            plan = self.shortlist_plan(temperature, max_depth)
            hashable = tuple(tuple((shortlist, tuple(positions)) for shortlist, positions in forward) for forward in plan)
            self._expansions[settings] = plan, ("tree", *settings[1:], hashable), SiblingAcceptance()
        plan, key, rates = self._expansions[settings]
        self.rates = sibling_acceptance or rates
        self.child_shares_host.copy_(torch.tensor(self.rates.shares(self.width), dtype=torch.float32))
        self.child_shares.copy_(self.child_shares_host, non_blocking=True)
        self.cache.run(key, lambda: self._expansion(plan, do_sample, per_node, processors))
        self.cache.set_length(length)
        self.result_host.copy_(self.result, non_blocking=True)
        if self.result_read is not None:
            self.result_read.record()
        # a sampled tree keeps its q past the next draft; greedy reads none
        self.drafted = length, self.q.clone() if do_sample else None
        return self.nodes.first(num_nodes)  # the tree's nodes come first

    def tree(self) -> TokenTree:
        """The tree `draft_nodes` drafted last, read once its expansion is done (the target's pass may still run)."""
        if self.result_read is not None:
            self.result_read.synchronize()
        chosen, tokens, parents, rows = self.result_host.tolist()
        length, q = self.drafted
        tree = TokenTree(root_position=length - 1)
        number = {0: tree.add(tokens[0], -1)}
        tree.probs[0] = None if q is None else q[1]
        for node in range(1, len(chosen)):  # pool order: parents first
            if chosen[node]:
                number[node] = tree.add(tokens[node], number[parents[node]])
                if q is not None and rows[node]:
                    tree.probs[number[node]] = q[rows[node]]
        return tree

    def release(self) -> None:
        self.cache.release()


def by_position(depths: torch.Tensor, shortlists, compute) -> tuple[torch.Tensor, ...]:
    """`compute(shortlist)`'s tensors for each of a node forward's distinct `shortlists` (with the draft positions
    that use them), merged row by row: each node's from the shortlist of its depth (the first serves padding)."""
    merged = None
    for shortlist, positions in shortlists:
        part = compute(shortlist)
        if merged is None:
            merged = part
            continue
        uses = torch.zeros_like(depths, dtype=torch.bool)
        for position in positions:
            uses = uses | (depths == position)
        merged = tuple(torch.where(uses.view(-1, *[1] * (new.ndim - 1)), new, old) for new, old in zip(part, merged))
    return merged


def drafting_mode(assistant, do_sample: bool, temperature: float, processors) -> tuple:
    """What a draft's cost and acceptance depend on besides the models: greedy or sampled, the shortlist schedule
    the temperature picks, and the sampling processors' settings."""
    return do_sample, repr(assistant.config.schedule(temperature)), processors_key(processors) if do_sample else ()


def drafter_for(assistant, length: int, shape, compile_options: dict | None = None) -> ChainDrafter | TreeDrafter:
    """The drafting engine for a generation of `length` positions with tree shape `shape` (a `TreeConfig`): a chain
    drafter, or the assistant's tree drafter, kept on it between generations (`engines.py`)."""
    if shape.is_chain:
        return ChainDrafter(assistant, shape.max_depth, compile_options, shape.runner_ups)
    settings = (shape.max_depth, shape.width, assistant.device, assistant.dtype, assistant.config.max_context_tokens,
                compile_options)
    drafter = engine_for(assistant, "tree drafter", length, settings,
                         lambda size: TreeDrafter(assistant, size, shape.max_depth, shape.width, compile_options))
    drafter.start(shape)
    return drafter
