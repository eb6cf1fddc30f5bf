"""`TokenClusters`: the partition of the vocabulary the router chooses from, plus an optional frequency core.

Clusters have equal size (the last ones padded with -1) so the head can store them as contiguous blocks of
fixed shape. The core is a frequency-ranked token list; any prefix of it is a static (FR-Spec) shortlist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TokenClusters:
    cluster_token_ids: torch.Tensor  # [num_clusters, cluster_size], -1 = padding
    core_token_ids: torch.Tensor  # [core_size], most frequent first
    vocab_size: int

    def __post_init__(self):
        self.cluster_token_ids = torch.as_tensor(self.cluster_token_ids, dtype=torch.long).cpu()
        self.core_token_ids = torch.as_tensor(self.core_token_ids, dtype=torch.long).cpu().reshape(-1)
        self.validate()

    @property
    def num_clusters(self) -> int:
        return self.cluster_token_ids.shape[0]

    @property
    def cluster_size(self) -> int:
        return self.cluster_token_ids.shape[1]

    @property
    def core_size(self) -> int:
        return self.core_token_ids.numel()

    def validate(self) -> None:
        """Every token in exactly one cluster, every core token valid and unique."""
        check_cluster_token_ids(self.cluster_token_ids, self.vocab_size)
        core = self.core_token_ids
        if core.numel() and (core.min() < 0 or core.max() >= self.vocab_size or core.unique().numel() != core.numel()):
            raise ValueError(f"The frequency core must hold distinct token ids in [0, {self.vocab_size}).")

    def with_core(self, counts: torch.Tensor, core_size: int) -> "TokenClusters":
        """The same clusters with the `core_size` most frequent tokens (by `counts`) as the core."""
        counts = _check_counts(counts, self.vocab_size)
        return TokenClusters(self.cluster_token_ids, _frequency_order(counts)[:core_size], self.vocab_size)

    @classmethod
    def from_frequencies(cls, counts: torch.Tensor, num_clusters: int, core_size: int = 0) -> "TokenClusters":
        """Clusters are bands of frequency rank (cluster 0 = most frequent tokens); ties broken by token id."""
        counts = _check_counts(counts, None)
        order = _frequency_order(counts)
        size = math.ceil(counts.numel() / num_clusters)
        padded = torch.full((num_clusters * size,), -1, dtype=torch.long)
        padded[: order.numel()] = order
        return cls(padded.view(num_clusters, size), order[:core_size], counts.numel())

    @classmethod
    def from_embeddings(
        cls, weight: torch.Tensor, num_clusters: int, *, seed: int = 0, iterations: int = 10
    ) -> "TokenClusters":
        """Balanced spherical k-means on the normalized rows of the drafter's output embedding.

        Every cluster holds at most `ceil(V / num_clusters)` tokens, so the head's blocks have one static shape.
        Deterministic for a given seed.
        """
        vocab_size = weight.shape[0]
        if not 1 <= num_clusters <= vocab_size:
            raise ValueError(f"num_clusters must be in [1, {vocab_size}], got {num_clusters}.")
        size = math.ceil(vocab_size / num_clusters)
        rows = F.normalize(weight.detach().float(), dim=-1)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        init = torch.randperm(vocab_size, generator=generator)[:num_clusters].to(rows.device)
        centroids = rows[init]
        for _ in range(iterations):
            assignment = _balanced_assign(rows @ centroids.T, size)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, rows)
            empty = sums.norm(dim=-1) == 0
            centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=-1))
        assignment = _balanced_assign(rows @ centroids.T, size).cpu()
        return cls(_group(assignment, num_clusters, size), torch.empty(0, dtype=torch.long), vocab_size)


def check_cluster_token_ids(cluster_token_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise unless the non-padding entries are each token of `range(vocab_size)` exactly once."""
    ids = cluster_token_ids.reshape(-1)
    ids = ids[ids >= 0].cpu()
    if ids.numel() and ids.max() >= vocab_size:
        raise ValueError(f"Cluster token id {int(ids.max())} is outside the vocabulary of {vocab_size} tokens.")
    seen = torch.bincount(ids, minlength=vocab_size)
    missing, repeated = (seen == 0).sum().item(), (seen > 1).sum().item()
    if missing or repeated:
        raise ValueError(
            f"Clusters must cover the vocabulary of {vocab_size} tokens exactly once: {missing} tokens are in no "
            f"cluster and {repeated} are in more than one."
        )


def _check_counts(counts, vocab_size: int | None) -> torch.Tensor:
    counts = torch.as_tensor(counts).reshape(-1).double()
    if vocab_size is not None and counts.numel() != vocab_size:
        raise ValueError(f"Got {counts.numel()} token counts for a vocabulary of {vocab_size} tokens.")
    if (counts < 0).any():
        raise ValueError("Token counts must be non-negative.")
    return counts


def _frequency_order(counts: torch.Tensor) -> torch.Tensor:
    """Token ids by descending count, ties by ascending id (stable, hence deterministic)."""
    return torch.sort(-counts, stable=True).indices


def _balanced_assign(similarity: torch.Tensor, capacity: int) -> torch.Tensor:
    """Assign each row to a column, most similar first, with at most `capacity` rows per column.

    Rounds of proposals: every unassigned row proposes to its best open column; each column keeps its most
    similar proposers up to its remaining capacity. Ends because every round fills a column or assigns everyone.
    """
    num_rows, num_cols = similarity.shape
    assignment = torch.full((num_rows,), -1, dtype=torch.long, device=similarity.device)
    remaining = torch.full((num_cols,), capacity, dtype=torch.long, device=similarity.device)
    open_rows = torch.arange(num_rows, device=similarity.device)
    while open_rows.numel():
        sim = similarity[open_rows].masked_fill(remaining[None, :] == 0, float("-inf"))
        best_sim, best_col = sim.max(dim=-1)
        # sort proposers by column, then by descending similarity, and rank them within their column
        order = torch.sort(-best_sim, stable=True).indices
        order = order[torch.sort(best_col[order], stable=True).indices]
        cols = best_col[order]
        starts = torch.searchsorted(cols, cols, right=False)
        rank = torch.arange(cols.numel(), device=cols.device) - starts
        accepted = rank < remaining[cols]
        assignment[open_rows[order[accepted]]] = cols[accepted]
        remaining -= torch.bincount(cols[accepted], minlength=num_cols)
        open_rows = open_rows[assignment[open_rows] < 0]
    return assignment


def _group(assignment: torch.Tensor, num_clusters: int, size: int) -> torch.Tensor:
    """[num_clusters, size] token ids per cluster (ascending), padded with -1."""
    order = torch.sort(assignment, stable=True).indices
    cols = assignment[order]
    rank = torch.arange(cols.numel()) - torch.searchsorted(cols, cols)
    table = torch.full((num_clusters, size), -1, dtype=torch.long)
    table[cols, rank] = order
    return table
