"""The state terms of the row-tile output and dx kernels as one batched matmul per call (torch.matmul: cuBLAS).

For every chunk c, group g and head of g: P[c, g, i, (head, p)] = sum_n rows[c_i, g, n] states[c, head, p, n],
with rows = C and states = the chunk states for the output (y_i gets exp(s_i) P), rows = B and states = the chunk
state gradients for dx (dx_i gets exp(s_last - s_i) dt'_i P). The row-tile kernels (tiles.py) otherwise form this
product themselves, one 64-token row tile at a time, each re-reading the chunk's state over all of d_state; as
one (chunk x d_state) by (d_state x heads_per_group * head_dim) product per chunk and group it is a large dense
GEMM. P is rounded to the inputs' dtype (one more rounding than the kernels' float32 accumulator).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import ChunkTable

__all__ = ["chunk_rows", "matmul_matches_kernels", "state_products"]


def matmul_matches_kernels(x: Tensor) -> bool:
    """Whether torch.matmul on x's dtype and device is as exact as the kernels' own products: 16-bit inputs
    (float32 accumulation) anywhere, float32 on the CPU. float32 on a GPU may run in TF32 (allow_tf32,
    set_float32_matmul_precision), where the kernels' float32 products are exact, so there they form the term."""
    return x.dtype != torch.float32 or not x.is_cuda


def chunk_rows(rows: Tensor, table: ChunkTable) -> Tensor:
    """rows (T, ngroups, dstate) as (nchunks, chunk_size, ngroups, dstate), zero past each chunk's end: a view
    when every chunk is full (they then lie end to end in order), else a copy gathered by the chunk table (whose
    indices are made once per table: ChunkTable.kept)."""
    nchunks, chunk = table.nchunks, table.chunk_size
    if table.ntokens == nchunks * chunk:
        return rows.view(nchunks, chunk, *rows.shape[1:])
    index, outside = table.kept("chunk rows", lambda: _gather_index(table))
    return rows[index].masked_fill_(outside[:, :, None, None], 0)


def _gather_index(table: ChunkTable) -> tuple[Tensor, Tensor]:
    """(nchunks, chunk_size) int64 token of each chunk row (clamped into the tokens), and where a row lies past its
    chunk's end."""
    offs = torch.arange(table.chunk_size, device=table.chunk_start.device, dtype=table.chunk_start.dtype)
    index = (table.chunk_start[:, None] + offs).clamp_(max=max(table.ntokens - 1, 0)).long()
    return index, offs >= table.chunk_len[:, None]


def state_products(rows: Tensor, states: Tensor, table: ChunkTable) -> Tensor:
    """P (nchunks, ngroups, chunk_size, heads_per_group * headdim) in rows.dtype: each chunk's rows (T, ngroups,
    dstate) times its states (nchunks, nheads, headdim, dstate, rows.dtype) transposed, per group; rows past a
    chunk's end are zero."""
    nchunks, nheads, headdim, dstate = states.shape
    ngroups = rows.shape[1]
    per_chunk = chunk_rows(rows, table).permute(0, 2, 1, 3)
    by_group = states.view(nchunks, ngroups, nheads // ngroups * headdim, dstate)
    return torch.matmul(per_chunk, by_group.transpose(2, 3))
