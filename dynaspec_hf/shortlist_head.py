"""`ShortlistHead`: an output layer that computes logits only for the rows of a shortlist.

Rows are stored as `[core rows; cluster 0 rows; cluster 1 rows; ...]`: the frequency core first (most frequent
token first, so any prefix is a static shortlist), then every cluster as one contiguous block of `cluster_size`
rows. A shortlist of k clusters is k whole blocks, so its shape is fixed for a fixed k and the full
vocabulary product is never needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .clusters import TokenClusters, check_cluster_token_ids
from .logit_transform import LogitTransform
from .triton_head import block_logits, triton_kernel_applies


class ShortlistHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, num_clusters: int, cluster_size: int, core_size: int,
                 transform: LogitTransform = LogitTransform(), tail_rank: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.transform = transform  # the drafter family's final-logit transform (softcapping, scaling)
        self.weight = nn.Parameter(torch.zeros(core_size + num_clusters * cluster_size, hidden_size))
        self.register_buffer("core_token_ids", torch.arange(core_size, dtype=torch.long))
        self.register_buffer("cluster_token_ids", torch.full((num_clusters, cluster_size), -1, dtype=torch.long))
        # log of each token's share of its cluster's corpus frequency: spreads a cluster's routed mass over its
        # tokens when sampling drafts from outside the shortlist (`DynaSpecConfig.sampling_tail`)
        self.register_buffer("token_log_share", torch.zeros(vocab_size))
        # or, with `tail_rank` r > 0, the drafter's own logits outside the shortlist from a rank-r copy of the
        # cluster rows (`tail_rows` @ `tail_basis`), filled by `set_tail_rank` (saved weights)
        self.tail_rank = tail_rank
        if tail_rank:
            self.register_buffer("tail_rows", torch.zeros(num_clusters * cluster_size, tail_rank))
            self.register_buffer("tail_basis", torch.zeros(tail_rank, hidden_size))
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero `rows_computed` (rows multiplied) and `calls`: lets tests and benchmarks count head work."""
        self.rows_computed, self.calls = 0, 0

    @property
    def core_size(self) -> int:
        return self.core_token_ids.numel()

    @property
    def num_clusters(self) -> int:
        return self.cluster_token_ids.shape[0]

    @torch.no_grad()
    def load_full_head(self, full_weight: torch.Tensor, clusters: TokenClusters) -> None:
        """Lay out a `[vocab_size, hidden]` output matrix (e.g. a drafter's `lm_head.weight`) by `clusters`."""
        if full_weight.shape != (self.vocab_size, self.weight.shape[1]):
            raise ValueError(
                f"Expected a head weight of shape {(self.vocab_size, self.weight.shape[1])}, got {tuple(full_weight.shape)}."
            )
        if clusters.cluster_token_ids.shape != self.cluster_token_ids.shape or clusters.core_size != self.core_size:
            raise ValueError(
                f"Clusters {tuple(clusters.cluster_token_ids.shape)} with a core of {clusters.core_size} do not match "
                f"this head's layout {tuple(self.cluster_token_ids.shape)} with a core of {self.core_size}."
            )
        self.core_token_ids.copy_(clusters.core_token_ids)
        self.cluster_token_ids.copy_(clusters.cluster_token_ids)
        row_ids = self.row_token_ids()
        rows = full_weight.to(self.weight.device, self.weight.dtype)[row_ids.clamp(min=0)]
        self.weight.copy_(rows.masked_fill(row_ids[:, None] < 0, 0))
        self.set_token_shares(torch.ones(self.vocab_size))

    @torch.no_grad()
    def set_token_shares(self, counts: torch.Tensor) -> None:
        """Set `token_log_share` from corpus token counts `[vocab]` (add-one smoothed, so every token can be drawn)."""
        counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
        if counts.numel() != self.vocab_size or (counts < 0).any():
            raise ValueError(f"Expected {self.vocab_size} non-negative token counts, got {counts.numel()} values.")
        cluster = ShortlistIndex.of(self).token_cluster.cpu()
        counts = counts + 1
        totals = torch.zeros(self.num_clusters, dtype=torch.float64).index_add_(0, cluster, counts)
        self.token_log_share.copy_((counts / totals[cluster]).log())

    @torch.no_grad()
    def set_tail_rank(self, rank: int) -> None:
        """Estimate the tail by a rank-`rank` copy of the cluster rows (0: routed mass shared by corpus counts): the
        best rank-r approximation of the rows, from the top eigenvectors of their Gram matrix."""
        for name in ("tail_rows", "tail_basis"):
            self._buffers.pop(name, None)
        self.tail_rank = rank
        if not rank:
            return
        rows = self.weight[self.core_size :].float()
        basis = torch.linalg.eigh(rows.T @ rows).eigenvectors[:, -rank:]  # [d, r], eigenvalues ascending
        self.register_buffer("tail_rows", (rows @ basis).to(self.weight.dtype))
        self.register_buffer("tail_basis", basis.T.contiguous().to(self.weight.dtype))

    def tail_logits(self, hidden: torch.Tensor, index: "ShortlistIndex") -> torch.Tensor:
        """The drafter's float32 logits of every token `[B, vocab]` (token-id order) from the rank-`tail_rank` copy
        of the rows, on the scale of the shortlist's exact ones: the sampling tail's estimate outside the
        shortlist."""
        logits = self.transform((hidden @ self.tail_basis.T) @ self.tail_rows.T).float()
        return logits[:, index.cluster_row]  # a token's own row: padding rows are never read

    def row_token_ids(self) -> torch.Tensor:
        """Token id of every stored row (-1 for padding)."""
        return torch.cat([self.core_token_ids, self.cluster_token_ids.reshape(-1)])

    def check_layout(self) -> None:
        """Raise if the stored clusters do not partition the vocabulary (e.g. a damaged checkpoint)."""
        check_cluster_token_ids(self.cluster_token_ids, self.vocab_size)

    def index(self) -> "ShortlistIndex":
        """Per-token lookups the forward pass needs; compute once per draft block, not per step."""
        return ShortlistIndex.of(self)

    def forward(
        self,
        hidden: torch.Tensor,
        cluster_ids: torch.Tensor | None,
        num_core: int,
        index: "ShortlistIndex | None" = None,
        context_ids: torch.Tensor | None = None,
        kernel: str = "triton",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the shortlist rows for `hidden` `[B, d]`.

        The shortlist is the first `num_core` core tokens, the cluster blocks `cluster_ids` `[B, k]` (None: all
        clusters, i.e. the full vocabulary) and the tokens `context_ids` `[B, M]` (distinct, -1 for an empty slot).
        The logits are the drafter's own: its family's transform is applied. Returns `(logits [B, R], token_ids
        [B, R])`; padding rows, and rows whose token an earlier part already holds, get logit `-inf` and token
        id -1, so no token is counted twice. `index` (from `index()`) is needed with a core or context tokens.
        `kernel`: "triton" reads the chosen cluster blocks in place on CUDA (`triton_head.py`); "gather" copies
        them first (the portable path, and the CPU's).
        """
        if kernel not in ("triton", "gather"):
            raise ValueError(f"`kernel` is 'triton' or 'gather', not {kernel!r}.")
        batch = hidden.shape[0]
        core_size, size = self.core_size, self.cluster_token_ids.shape[1]
        blocks = self.weight[core_size:].view(self.num_clusters, size, -1)
        if (num_core or context_ids is not None) and index is None:
            raise ValueError("Pass `index` (from `index()`) when core rows or context tokens are active.")
        logits, token_ids, invalid = [], [], []
        if num_core:
            logits.append(hidden @ self.weight[:num_core].T)
            token_ids.append(self.core_token_ids[:num_core].expand(batch, -1))
            invalid.append(None)
        if cluster_ids is None:
            logits.append(hidden @ blocks.reshape(-1, blocks.shape[-1]).T)
            ids = self.cluster_token_ids.reshape(1, -1).expand(batch, -1)
        else:
            if kernel == "triton" and triton_kernel_applies(hidden):
                logits.append(block_logits(hidden, blocks, cluster_ids))
            else:
                chosen = blocks[cluster_ids]  # [B, k, s, d]
                logits.append(torch.einsum("bd,bksd->bks", hidden, chosen).reshape(batch, -1))
            ids = self.cluster_token_ids[cluster_ids].reshape(batch, -1)
        token_ids.append(ids)
        invalid.append((ids < 0) | (index.in_core(ids, num_core) if num_core else False))
        if context_ids is not None:
            rows = index.token_row[context_ids]  # -1 reads the last slot
            logits.append(torch.einsum("bd,bmd->bm", hidden, self.weight[rows]))
            token_ids.append(context_ids)
            held = context_ids < 0
            if num_core:
                held = held | index.in_core(context_ids, num_core)
            if cluster_ids is None:
                held = torch.ones_like(held)
            elif cluster_ids.shape[1]:
                cluster = (rows - core_size).div(size, rounding_mode="floor")
                held = held | (cluster[:, :, None] == cluster_ids[:, None, :]).any(-1)
            invalid.append(held)
        if not self.transform.is_identity:  # before masking: a soft cap would turn -inf into -cap
            logits = [self.transform(part) for part in logits]
        for i, mask in enumerate(invalid):
            if mask is not None:
                logits[i] = logits[i].masked_fill(mask, float("-inf"))
                token_ids[i] = token_ids[i].masked_fill(mask, -1)
        logits, token_ids = torch.cat(logits, dim=-1), torch.cat(token_ids, dim=-1)
        if not torch.compiler.is_compiling():  # a count in a compiled graph would recompile it every call
            self.rows_computed += logits.shape[0] * logits.shape[1]
            self.calls += 1
        return logits, token_ids


@dataclass
class ShortlistIndex:
    """Per-token lookups of a `ShortlistHead`'s layout (slot `vocab_size` stands for token id -1)."""

    token_row: torch.Tensor  # [vocab + 1] the stored row of each token's cluster entry
    core_rank: torch.Tensor  # [vocab + 1] rank of each token in the frequency core (core_size if absent)
    token_cluster: torch.Tensor  # [vocab] the cluster of each token
    cluster_row: torch.Tensor  # [vocab] each token's row among the cluster blocks (its stored row less the core)

    @classmethod
    def of(cls, head: ShortlistHead) -> "ShortlistIndex":
        device, vocab_size = head.weight.device, head.vocab_size
        row_ids = head.cluster_token_ids.reshape(-1)
        token_row = torch.empty(vocab_size + 1, dtype=torch.long, device=device)
        token_row[row_ids.masked_fill(row_ids < 0, vocab_size)] = head.core_size + torch.arange(len(row_ids), device=device)
        token_row[vocab_size] = head.core_size  # any stored row: what it reads is masked
        core_rank = torch.full((vocab_size + 1,), head.core_size, dtype=torch.long, device=device)
        core_rank[head.core_token_ids] = torch.arange(head.core_size, device=device)
        cluster_row = token_row[:vocab_size] - head.core_size
        token_cluster = cluster_row.div(head.cluster_token_ids.shape[1], rounding_mode="floor")
        return cls(token_row, core_rank, token_cluster, cluster_row)

    def in_core(self, token_ids: torch.Tensor, num_core: int) -> torch.Tensor:
        """Whether each token id (-1 allowed) is among the first `num_core` core tokens."""
        return self.core_rank[token_ids] < num_core
