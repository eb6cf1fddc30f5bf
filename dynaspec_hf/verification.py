"""`TreeVerifier`: the target's verification pass of the package's own loop, on a static cache, replayed from a graph.

One pass reads the committed tokens the target has not cached yet (the previous round's accepted tokens and the
target's own token, as a causal chain) and the draft tree (each node sees the prefix and its ancestors), at
explicit positions. The pass is padded to a fixed number of tokens, `size`, so every round after the prompt replays
one CUDA graph: a padding token sees only itself, is written beyond the committed text and is overwritten by the
next pass. The prompt's pass, longer than `size`, runs eagerly. The cache keeps only committed tokens: the accepted
ones are fed again in the next pass, which costs a few positions in a pass that reads all the weights anyway.
The pass's inputs are built on the device from the draft nodes (`tree.DraftNodes`), so a tree drafter's nodes go
to the target without a read of the tree: the host reads it while the target's pass runs.

Under sampling, the verifier also runs recursive rejection sampling for every node of the tree at once, on the
device and replayed from a graph of its own, so the loop reads the outcome of a round in one device sync.
"""

from __future__ import annotations

import torch

from .engines import engine_for
from .static_cache import StaticCacheModel, causal
from .sampling import processors_key
from .tree import DraftNodes, TokenTree


class TreeVerifier:
    """Verifies token trees of up to `size` tokens (re-fed chain + nodes) for one `target` at batch 1, in passes
    padded to the size a call asks for (one graph per size). `compile_options`: `torch.compile` options for the
    replayed pass (`StaticCacheModel`)."""

    def __init__(self, target, max_length: int, size: int, compile_options: dict | None = None):
        self.model = StaticCacheModel(target, max_length, compile_options)
        self.size, self.cached = size, 0
        device = target.device
        # a replayed pass's inputs, built on the device while the drafter's work is still queued: tokens,
        # positions, which token sees which (`[size, size]`, as 0/1) and the write position, which the graph sets
        self.staged = torch.zeros(_staged_length(size), dtype=torch.long, device=device)
        self.logits = torch.zeros(size, target.config.get_text_config().vocab_size, dtype=torch.float32, device=device)
        # sampling's inputs and outputs, one row per tree node (`size` rows hold any tree the pass holds)
        self.node_logits, self.node_q = torch.zeros_like(self.logits), torch.zeros_like(self.logits)
        # children's tokens, `[rows, width]` of a round's sample step at the front (pinned on the host, so the
        # copy does not wait for the device)
        self.candidates = torch.full((size * size,), -1, dtype=torch.long, device=device)
        self.candidates_host = torch.full((size * size,), -1, dtype=torch.long, pin_memory=device.type == "cuda")
        # the nodes in the order the sample step's rows take them: nodes with children first
        self.order = torch.zeros(size, dtype=torch.long, device=device)
        self.order_host = torch.zeros(size, dtype=torch.long, pin_memory=device.type == "cuda")
        self.outcomes = torch.zeros(2, size, dtype=torch.long, device=device)

    def start(self) -> None:
        """Begin a generation: nothing is cached."""
        self.cached = 0

    @property
    def max_length(self) -> int:
        return self.model.max_length

    def release(self) -> None:
        self.model.release()

    @torch.no_grad()
    def verify(self, committed: torch.Tensor, nodes: DraftNodes, size: int | None = None) -> torch.Tensor:
        """Target logits (float32 `[1 + n, vocab]`) after the root and after each of the n draft `nodes`, in one
        forward padded to `size` tokens (at most the verifier's; default: it). Reads nothing from the device, so
        the pass queues behind a drafter's work that is still running.

        `committed` (1-D) extends what the previous call committed; on return the cache holds exactly it.
        """
        size = size or self.size
        if size > self.size:
            raise ValueError(f"This verifier passes at most {self.size} tokens, not {size}.")
        chain = committed[self.cached :]  # the tokens committed since the last pass: a few
        n_chain, count = chain.shape[0], chain.shape[0] + nodes.tokens.shape[0]
        if count > size:  # the prompt's pass: longer than `size`, unpadded and eager
            ids, positions, block = _pass_inputs(chain, nodes, self.cached, count)
            self.model.set_length(self.cached)
            logits = self._forward(ids, positions, block, keep=count - n_chain + 1)
        else:
            ids, positions, block = _pass_inputs(chain, nodes, self.cached, size)
            torch.cat([ids, positions, block.flatten().long(), ids.new_full((1,), self.cached)],
                      out=self.staged[: _staged_length(size)])
            self.model.run(size, lambda: self._replayed_step(size))
            logits = self.logits[n_chain - 1 : count].clone()
        self.cached = committed.shape[0]
        self.model.set_length(self.cached)
        return logits

    @torch.no_grad()
    def sample(self, tree: TokenTree, logits: torch.Tensor, processors) -> tuple[list[int], list[int]]:
        """Every node's outcome of recursive rejection sampling over its children, against the target's
        distribution (`processors` applied to `logits`, as `verify` returned them): the index of the accepted child
        or -1, and the node's token. All nodes at once, replayed from a graph (its ~100 small operations, launched one
        by one, would cost more than the pass they follow). One device sync reads the outcomes.

        The step's rows take the nodes with children first, and only those rows run the rejection passes: a leaf
        only draws its token from p, so a tree's rejection work follows its parents, not its size."""
        count, width = len(tree), max(1, *(len(children) for children in tree.children))
        order = sorted(range(count), key=lambda node: -len(tree.children[node]))  # parents first
        parents = sum(1 for children in tree.children if children)
        rows = min(self.size, sampled_rows(count))
        parent_rows = min(rows, sampled_rows(max(parents, 1)))
        # the pinned staging buffers: the last round's copies from them are done (its outcomes were read)
        candidates = self.candidates_host[: parent_rows * width].view(parent_rows, width)
        candidates.fill_(-1)
        candidates[:parents] = torch.tensor([[tree.tokens[c] for c in tree.children[node]]
                                             + [-1] * (width - len(tree.children[node])) for node in order[:parents]],
                                            dtype=torch.long).view(parents, width)
        self.candidates[: parent_rows * width].copy_(self.candidates_host[: parent_rows * width], non_blocking=True)
        self.order_host[:count] = torch.tensor(order, dtype=torch.long)
        self.order[:count].copy_(self.order_host[:count], non_blocking=True)
        torch.index_select(logits, 0, self.order[:count], out=self.node_logits[:count])
        if parents:  # q of the nodes with children
            torch.stack([tree.probs[node] for node in order[:parents]], out=self.node_q[:parents])
        self.model.run(("sample", rows, parent_rows, width, processors_key(processors)),
                       lambda: self._sample_step(rows, parent_rows, width, processors))
        accepted, tokens = [0] * count, [0] * count
        for row, (index, token) in enumerate(zip(*self.outcomes[:, :count].tolist())):
            accepted[order[row]], tokens[order[row]] = index, token
        return accepted, tokens

    def _sample_step(self, rows: int, parent_rows: int, width: int, processors) -> None:
        """Recursive rejection sampling over the first `rows` nodes, the first `parent_rows` with candidates (rows
        past the tree's have none)."""
        logits = processors(None, self.node_logits[:rows]) if processors else self.node_logits[:rows]
        candidates = self.candidates[: parent_rows * width].view(parent_rows, width)
        self.outcomes[:, :rows].copy_(torch.stack(recursive_rejection_sample(logits.softmax(-1),
                                                                             self.node_q[:parent_rows], candidates)))

    def _replayed_step(self, size: int) -> None:
        """The pass of `size` tokens from the staged inputs: tokens, positions, which token sees which (`[size,
        size]`, as 0/1), then the write position, which the graph sets itself."""
        ids, positions = self.staged[:size], self.staged[size : 2 * size]
        block = self.staged[2 * size : 2 * size + size * size].view(size, size).bool()
        self.model.set_length(self.staged[2 * size + size * size])
        self.logits[:size].copy_(self._forward(ids, positions, block, keep=0))

    def _forward(self, ids, positions, block, keep: int) -> torch.Tensor:
        """The target over `ids` `[T]` written at the cache's write position; float32 logits of the last `keep`
        (0: all)."""
        return self.model.forward(ids[None], positions, block, logits_to_keep=keep).logits[0].float()


def sampled_rows(count: int) -> int:
    """Rows the sampling step of a tree of `count` nodes (the root included) runs over: a graph per power of two, not
    one of the verifier's whole size."""
    return 1 << (count - 1).bit_length()


def _staged_length(size: int) -> int:
    """Staged numbers of a pass of `size` tokens: ids, positions, the visibility matrix and the write position."""
    return 2 * size + size * size + 1


def _pass_inputs(chain: torch.Tensor, nodes: DraftNodes, cached: int, padded: int):
    """A pass's tokens, positions and `[padded, padded]` visibility, on the device: the committed `chain` from
    position `cached` as a causal chain, then the draft `nodes` (each sees the chain and what `nodes` lets it);
    a padding token sees only itself."""
    device, n_chain = chain.device, chain.shape[0]
    count = n_chain + nodes.tokens.shape[0]
    ids = torch.zeros(padded, dtype=torch.long, device=device)
    ids[:n_chain] = chain
    ids[n_chain:count] = nodes.tokens
    positions = torch.zeros(padded, dtype=torch.long, device=device)
    positions[:n_chain] = torch.arange(cached, cached + n_chain, device=device)
    positions[n_chain:count] = nodes.positions
    block = torch.eye(padded, dtype=torch.bool, device=device)
    block[:count, :n_chain] = causal(count, device)[:, :n_chain]  # drafts see the whole chain
    block[n_chain:count, n_chain:count] = nodes.visible
    return ids, positions, block


def recursive_rejection_sample(p: torch.Tensor, q: torch.Tensor, candidates: torch.LongTensor
                               ) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Per row, one token distributed exactly as `p` (`[rows, vocab]`), given the row's `candidates` (`[m, width]`,
    -1 for none, for the first m rows; the rows after them have none) drawn in order from `q` (`[m, vocab]`)
    without replacement (Jeon et al., 2024; SpecInfer). Device work only, every row at once.

    Candidate i is accepted with probability min(1, p_i(x)/q_i(x)); after a rejection p becomes the normalized
    residual max(p_i - q_i, 0) and x is removed from q. A candidate with q_i(x) = 0 is no draw (q had no tokens
    left, which does not depend on the draws) and is skipped. Returns `(index of the accepted candidate or -1, token)`:
    the candidate, or after every rejection a draw from the last residual (from p for a row without candidates).

    Each rejection costs a few passes over the vocabulary of the first m rows, not a dozen: p is kept unnormalized
    beside its row sum, and q as its draws' complement beside the mass left, so only the residual itself is computed
    in full.
    """
    rows = torch.arange(candidates.shape[0], device=p.device)
    accepted = torch.full_like(rows, -1)
    leaves = p[rows.shape[0] :].float()  # rows without candidates: a draw from p alone
    p = p[: rows.shape[0]].float()
    p_mass = p.sum(-1)  # p_i = p / p_mass
    q = q.float().clone()  # q_i = q / q_mass, its rejected draws zeroed
    q_mass = q.sum(-1)
    for index in range(candidates.shape[1]):
        token = candidates[:, index]
        x = token.clamp(min=0)
        q_x, p_x = q[rows, x], p[rows, x]
        live = (accepted < 0) & (token >= 0) & (q_x > 0)
        take = live & (torch.rand(rows.shape, device=p.device) * q_x * p_mass < p_x * q_mass)
        accepted = torch.where(take, index, accepted)
        rejected = live & ~take
        # the residual max(p_i - q_i, 0), unnormalized: rows not rejected subtract nothing
        scale = torch.where(rejected, p_mass / q_mass.clamp(min=torch.finfo(q.dtype).tiny), 0.0)
        residual = torch.addcmul(p, q, scale[:, None], value=-1).clamp_(min=0)
        residual_mass = residual.sum(-1)
        # a zero residual (p == q) has rejection probability zero; where rounding makes one, p stays
        keep = rejected & (residual_mass > 0)
        p, p_mass = torch.where(keep[:, None], residual, p), torch.where(keep, residual_mass, p_mass)
        q[rows, x] = torch.where(rejected, 0.0, q_x)
        q_mass = torch.where(rejected, q_mass - q_x, q_mass)
    tokens = torch.where(accepted >= 0, candidates[rows, accepted.clamp(min=0)], _draw(p))
    return torch.cat([accepted, accepted.new_full(leaves.shape[:1], -1)]), torch.cat([tokens, _draw(leaves)])


def _draw(p: torch.Tensor) -> torch.LongTensor:
    """A token per row from the unnormalized `p` (`[rows, vocab]`): the exponential race, no normalization needed."""
    return (p / torch.empty_like(p).exponential_()).argmax(-1)


def tree_verifier(target, length: int, size: int, compile_options: dict | None = None) -> TreeVerifier:
    """The target's verifier for a generation of `length` positions and passes of `size` tokens, kept on the
    target (`engines.py`)."""
    settings = (size, target.device, target.dtype, compile_options)
    verifier = engine_for(target, "verifier", length, settings,
                          lambda max_length: TreeVerifier(target, max_length, size, compile_options))
    verifier.start()
    return verifier
