"""A Triton kernel for the shortlist head: logits of the chosen cluster blocks, read in place.

`ShortlistHead`'s portable path gathers the chosen blocks into a new tensor and multiplies it, which reads and
writes every chosen row once more than needed. Here each program reads its rows straight from the cluster-ordered
weight, indexed by the routed cluster id, so the head moves only the shortlist's bytes (draft steps are
memory-bound: one hidden vector against k x cluster_size rows).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def triton_kernel_applies(hidden: torch.Tensor) -> bool:
    return triton is not None and hidden.is_cuda


if triton is not None:

    @triton.jit
    def _block_logits_kernel(hidden_ptr, blocks_ptr, cluster_ids_ptr, out_ptr, num_chosen, cluster_size, hidden_size,
                             BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        slot = tl.program_id(0)  # (batch row, chosen cluster), row-major
        hidden_ptr += (slot // num_chosen) * hidden_size
        rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < cluster_size
        cluster = tl.load(cluster_ids_ptr + slot).to(tl.int64)
        row_offsets = (cluster * cluster_size + rows.to(tl.int64)) * hidden_size
        acc = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for start in range(0, hidden_size, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < hidden_size
            h = tl.load(hidden_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            w = tl.load(blocks_ptr + row_offsets[:, None] + cols[None, :],
                        mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * h[None, :], axis=1)
        tl.store(out_ptr + slot * cluster_size + rows, acc, mask=row_mask)


# Rows per program, hidden chunk, warps: the fastest of the settings benchmarks/gpu_checks.py compares across its
# drafter shapes; many small programs keep enough loads in flight.
LAUNCH = dict(block_rows=4, block_d=512, num_warps=2)


def block_logits(hidden: torch.Tensor, blocks: torch.Tensor, cluster_ids: torch.Tensor, **launch) -> torch.Tensor:
    """`hidden` [B, d], `blocks` [C, s, d] contiguous, `cluster_ids` [B, k] (each row its own clusters) -> logits
    [B, k * s] in hidden's dtype."""
    launch = {**LAUNCH, **launch}
    (batch, num_chosen), (_, cluster_size, hidden_size) = cluster_ids.shape, blocks.shape
    out = torch.empty(batch, num_chosen * cluster_size, dtype=torch.float32, device=hidden.device)
    if num_chosen == 0:
        return out.to(hidden.dtype)
    grid = (batch * num_chosen, triton.cdiv(cluster_size, launch["block_rows"]))
    _block_logits_kernel[grid](hidden.contiguous(), blocks, cluster_ids.contiguous(), out, num_chosen, cluster_size,
                               hidden_size, BLOCK_ROWS=launch["block_rows"], BLOCK_D=launch["block_d"],
                               num_warps=launch["num_warps"])
    return out.to(hidden.dtype)
