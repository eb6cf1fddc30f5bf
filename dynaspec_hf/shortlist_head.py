"""`ShortlistHead`: an output layer that computes logits only for the rows of a shortlist.

Rows are stored as `[core rows; cluster 0 rows; cluster 1 rows; ...]`: the frequency core first (most frequent
token first, so any prefix is a static shortlist), then every cluster as one contiguous block of `cluster_size`
rows. A shortlist of k clusters is k whole blocks, so its shape is fixed for a fixed k and the full
vocabulary product is never needed.
"""

from __future__ import annotations

import torch
from torch import nn

from .clusters import TokenClusters, check_cluster_token_ids
from .logit_transform import LogitTransform
from .triton_head import block_logits, triton_kernel_applies


class ShortlistHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, num_clusters: int, cluster_size: int, core_size: int,
                 transform: LogitTransform = LogitTransform()):
        super().__init__()
        self.vocab_size = vocab_size
        self.transform = transform  # the drafter family's final-logit transform (softcapping, scaling)
        self.weight = nn.Parameter(torch.zeros(core_size + num_clusters * cluster_size, hidden_size))
        self.register_buffer("core_token_ids", torch.arange(core_size, dtype=torch.long))
        self.register_buffer("cluster_token_ids", torch.full((num_clusters, cluster_size), -1, dtype=torch.long))
        # "triton": read the chosen blocks in place (CUDA, batch 1; see triton_head.py); "gather": portable path.
        self.kernel = "triton"
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

    def row_token_ids(self) -> torch.Tensor:
        """Token id of every stored row (-1 for padding)."""
        return torch.cat([self.core_token_ids, self.cluster_token_ids.reshape(-1)])

    def check_layout(self) -> None:
        """Raise if the stored clusters do not partition the vocabulary (e.g. a damaged checkpoint)."""
        check_cluster_token_ids(self.cluster_token_ids, self.vocab_size)

    def core_rank(self) -> torch.Tensor:
        """`[num_clusters, cluster_size]` rank of each cluster row's token in the core (`core_size` if absent)."""
        rank = torch.full((self.vocab_size + 1,), self.core_size, dtype=torch.long, device=self.weight.device)
        rank[self.core_token_ids] = torch.arange(self.core_size, device=rank.device)
        return rank[self.cluster_token_ids]  # -1 padding reads the extra last slot

    def forward(
        self,
        hidden: torch.Tensor,
        cluster_ids: torch.Tensor | None,
        num_core: int,
        core_rank: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the shortlist rows for `hidden` `[B, d]`.

        `cluster_ids` `[B, k]` picks cluster blocks (None: all clusters, i.e. the full vocabulary); the first
        `num_core` core tokens are added. The logits are the drafter's own: its family's transform is applied. Returns `(logits [B, R], token_ids [B, R])`; padding rows and cluster rows
        whose token is already among the active core rows get logit `-inf` and token id -1, so no token is counted
        twice.
        """
        batch = hidden.shape[0]
        core_size, size = self.core_size, self.cluster_token_ids.shape[1]
        blocks = self.weight[core_size:].view(self.num_clusters, size, -1)
        logits, token_ids = [], []
        if num_core:
            logits.append(hidden @ self.weight[:num_core].T)
            token_ids.append(self.core_token_ids[:num_core].expand(batch, -1))
        if cluster_ids is None:
            logits.append(hidden @ blocks.reshape(-1, blocks.shape[-1]).T)
            ids = self.cluster_token_ids.reshape(1, -1).expand(batch, -1)
            rank = None if core_rank is None else core_rank.reshape(1, -1)
        else:
            if self.kernel == "triton" and triton_kernel_applies(hidden):
                logits.append(block_logits(hidden, blocks, cluster_ids))
            else:
                chosen = blocks[cluster_ids]  # [B, k, s, d]
                logits.append(torch.einsum("bd,bksd->bks", hidden, chosen).reshape(batch, -1))
            ids = self.cluster_token_ids[cluster_ids].reshape(batch, -1)
            rank = None if core_rank is None else core_rank[cluster_ids].reshape(batch, -1)
        if num_core and core_rank is None:
            raise ValueError("Pass `core_rank` (from `core_rank()`) when core rows are active, to drop duplicates.")
        if not self.transform.is_identity:  # before masking: a soft cap would turn -inf into -cap
            logits = [self.transform(part) for part in logits]
        invalid = ids < 0
        if num_core:
            invalid = invalid | (rank < num_core)
        logits[-1] = logits[-1].masked_fill(invalid, float("-inf"))
        token_ids.append(ids.masked_fill(invalid, -1))
        logits, token_ids = torch.cat(logits, dim=-1), torch.cat(token_ids, dim=-1)
        self.rows_computed += logits.shape[0] * logits.shape[1]
        self.calls += 1
        return logits, token_ids
