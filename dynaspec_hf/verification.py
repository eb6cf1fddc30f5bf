"""`TreeVerifier`: the target's verification pass of the package's own loop, on a static cache, replayed from a graph.

One pass reads the committed tokens the target has not cached yet (the previous round's accepted tokens and the
target's own token, as a causal chain) and the draft tree (each node sees the prefix and its ancestors), at
explicit positions. The pass is padded to a fixed number of tokens, `size`, so every round after the prompt replays
one CUDA graph: a padding token sees only itself, is written beyond the committed text and is overwritten by the
next pass. The prompt's pass, longer than `size`, runs eagerly. The cache keeps only committed tokens: the accepted
ones are fed again in the next pass, which costs a few positions in a pass that reads all the weights anyway.
"""

from __future__ import annotations

import torch

from .static_cache import StaticCacheModel, causal
from .tree import TokenTree


class TreeVerifier:
    """Verifies token trees of up to `size` tokens (re-fed chain + nodes) for one `target` at batch 1.
    `compile_options`: `torch.compile` options for the replayed pass (`StaticCacheModel`)."""

    def __init__(self, target, max_length: int, size: int, compile_options: dict | None = None):
        self.model = StaticCacheModel(target, max_length, compile_options)
        self.size, self.cached, self.passes = size, 0, 0  # passes: this generation's, replays included
        device = target.device
        # a replayed pass's inputs, written on the host and sent in one copy (building them with device operations
        # was ~15 launches, about 1 ms of host time with the device idle, per round): tokens, positions, which
        # token sees which (`[size, size]`, as 0/1) and the write position, which the graph sets itself
        self.staged = torch.zeros(2 * size + size * size + 1, dtype=torch.long, device=device)
        self.host = torch.zeros(self.staged.shape, dtype=torch.long, pin_memory=device.type == "cuda")
        self.sent = None  # the event after the last copy out of `host`: its end frees `host` for the next pass
        self.ids, self.positions = self.staged[:size], self.staged[size : 2 * size]
        self.block, self.length = self.staged[2 * size : -1].view(size, size), self.staged[-1]
        self.logits = torch.zeros(size, target.config.get_text_config().vocab_size, dtype=torch.float32, device=device)

    def start(self) -> None:
        """Begin a generation: nothing is cached."""
        self.cached = self.passes = 0

    @torch.no_grad()
    def verify(self, committed: torch.Tensor, tree: TokenTree) -> torch.Tensor:
        """Target logits (float32 `[len(tree), vocab]`) after the root and after every draft node, in one forward.

        `committed` (1-D) extends what the previous call committed; on return the cache holds exactly it.
        """
        chain = committed[self.cached :].tolist()  # the tokens committed since the last pass: a few
        n_chain, count = len(chain), len(chain) + len(tree) - 1
        if count > self.size:  # the prompt's pass: longer than `size`, unpadded and eager, built on the device
            ids, positions, block = _pass_inputs(chain, tree, self.cached, count, self.ids.device)
            self.model.set_length(self.cached)
            logits = self._forward(ids, positions, block, keep=len(tree))
        else:
            if self.sent is not None:
                self.sent.synchronize()
            ids, positions, block = _pass_inputs(chain, tree, self.cached, self.size, "cpu")
            torch.cat([ids, positions, block.flatten(), torch.tensor([self.cached])], out=self.host)
            self.staged.copy_(self.host, non_blocking=True)
            if self.staged.is_cuda:
                self.sent = torch.cuda.Event()
                self.sent.record()
            self.model.run(self.size, self._replayed_step)
            logits = self.logits[n_chain - 1 : count].clone()
        self.cached = committed.shape[0]
        self.model.set_length(self.cached)
        self.passes += 1
        return logits

    def _replayed_step(self) -> None:
        self.model.set_length(self.length)
        self.logits.copy_(self._forward(self.ids, self.positions, self.block.bool(), keep=0))

    def _forward(self, ids, positions, block, keep: int) -> torch.Tensor:
        """The target over `ids` `[T]` written at the cache's write position; float32 logits of the last `keep`
        (0: all)."""
        return self.model.forward(ids[None], positions, block, logits_to_keep=keep).logits[0].float()


def _pass_inputs(chain: list[int], tree: TokenTree, cached: int, padded: int, device):
    """A pass's tokens, positions and `[padded, padded]` visibility: the committed `chain` from position `cached`
    as a causal chain, then the tree's drafts (each sees the chain and its ancestors); a padding token sees only
    itself."""
    n_chain, count = len(chain), len(chain) + len(tree) - 1
    ids = torch.zeros(padded, dtype=torch.long, device=device)
    ids[:count] = torch.tensor(chain + tree.tokens[1:], dtype=torch.long, device=device)
    positions = torch.zeros(padded, dtype=torch.long, device=device)
    positions[:n_chain] = torch.arange(cached, cached + n_chain, device=device)
    positions[n_chain:count] = tree.positions(device)
    block = torch.eye(padded, dtype=torch.bool, device=device)
    block[:count, :n_chain] = causal(count, device)[:, :n_chain]  # drafts see the whole chain
    block[n_chain:count, n_chain:count] = tree.ancestor_mask(device)
    return ids, positions, block


def tree_verifier(target, length: int, size: int, compile_options: dict | None = None) -> TreeVerifier:
    """The target's verifier, kept on the target between calls so its graph is captured once; rebuilt when a
    generation needs a longer cache, another padded size or other compile options."""
    verifier = target.__dict__.get("_dynaspec_tree_verifier")
    if (verifier is None or verifier.model.max_length < length or verifier.size != size
            or verifier.model.device != target.device or verifier.model.dtype != target.dtype
            or verifier.model.compile_options != compile_options):
        if verifier is not None:
            verifier.model.release()
        verifier = TreeVerifier(target, max(256, 2 * length), size, compile_options)
        target.__dict__["_dynaspec_tree_verifier"] = verifier
    verifier.start()
    return verifier
