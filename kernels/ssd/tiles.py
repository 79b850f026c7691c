"""SSD kernels that work per (row tile, chunk): C B^T per chunk, and the tiled output and dx kernels.

- `_cb_kernel`: CB[c, g] = C_c B_c^T (chunk x chunk, float32) once per chunk and group (shared by the group's
  heads), lower-triangular tiles only. The backward's dCB and dB/dC kernels always use it.
- `_scan_tiles_kernel`: y_i = exp(s_i) C_i h_c + sum_{j<=i} CB_ij exp(s_i - s_j) dt'_j x_j (+ D x_i, * silu(z_i)),
  one program per (head and head_dim block, row tile, chunk), skipping tiles above the diagonal.
- `_dx_tiles_kernel`: the same terms as backward.py's `_dx_kernel`, one program per (head and head_dim block,
  source row tile, chunk), reading every target tile on or below the diagonal.
Both form their state term (C_i h_c, B_j dh_c^T) over d_state per row tile, or with PRODUCTS (config gemm, for
inputs the matmul computes as exactly: state_products.matmul_matches_kernels) read it from state_products.py's
batched matmul.
The chunk-walking kernels of forward.py and backward.py do the same work with fewer loads but carry a
d_state x head_dim tile in registers; config.py picks between them by shape (benchmarks/NOTES-ssd.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from .common import chunk_tile_pair, exp_ftz, head_chunk_program, mm
from .config import KernelConfig, bwd_dx_config, cb_config, cb_table_fp32, scan_config
from .descriptors import descriptors
from .layout import ChunkTable
from .state_products import matmul_matches_kernels, state_products

__all__ = ["cb_table_dtype", "chunk_cb", "dx_tiles", "scan_tiles"]


@triton.jit
def _cb_kernel(
    b_ptr, c_ptr, cb_ptr, chunk_start_ptr, chunk_len_ptr,
    stride_b_t, stride_b_g, stride_c_t, stride_c_g, ngroups, dstate,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    group, chunk, c0, clen, active, offs_m, mask_m, offs_k, mask_k = chunk_tile_pair(
        chunk_start_ptr, chunk_len_ptr, CHUNK, BLOCK_M, BLOCK_K, ALIGNED)
    if active:
        c_base = c_ptr + c0 * stride_c_t + group * stride_c_g
        b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for n0 in range(0, dstate, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < dstate
            c = tl.load(c_base + offs_m[:, None] * stride_c_t + offs_n[None, :],
                        mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            b = tl.load(b_base + offs_k[:, None] * stride_b_t + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc += mm(c, tl.trans(b), PREC)
        base = (chunk.to(tl.int64) * ngroups + group) * CHUNK * CHUNK
        tl.store(cb_ptr + base + offs_m[:, None] * CHUNK + offs_k[None, :], acc.to(cb_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _state_term(rows_base, stride_t, state_ptr, products_ptr, chunk, group, head, offs_m, mask_m, offs_p, mask_p,
                dstate, ngroups, heads_per_group, headdim, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                PRODUCTS: tl.constexpr, PREC: tl.constexpr):
    """The row tile's state term before its decay, float32 (BLOCK_M x BLOCK_P): rows offs_m of the chunk's rows
    (C or B, from rows_base with token stride stride_t) times its head's state (or state gradient) at state_ptr
    (headdim x dstate) transposed, over d_state in BLOCK_N slices; with PRODUCTS read from state_products.py's
    P (nchunks, ngroups, CHUNK, heads_per_group * headdim) instead."""
    if PRODUCTS:
        row = ((chunk * ngroups + group) * CHUNK + offs_m) * (heads_per_group * headdim)
        col = (head - group * heads_per_group) * headdim + offs_p
        return tl.load(products_ptr + row[:, None] + col[None, :], mask=mask_m[:, None] & mask_p[None, :],
                       other=0.0).to(tl.float32)
    acc = tl.zeros((offs_m.shape[0], offs_p.shape[0]), dtype=tl.float32)
    for n0 in range(0, dstate, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < dstate
        r = tl.load(rows_base + offs_m[:, None] * stride_t + offs_n[None, :], mask=mask_m[:, None] & mask_n[None, :],
                    other=0.0)
        h_t = tl.load(state_ptr + offs_p[None, :] * dstate + offs_n[:, None], mask=mask_n[:, None] & mask_p[None, :],
                      other=0.0)
        acc += mm(r, h_t.to(r.dtype), PREC)
    return acc


@triton.jit
def _scan_tiles_kernel(
    x_ptr, c_ptr, cb_ptr, states_ptr, products_ptr, s_ptr, dtp_ptr, d_ptr, z_ptr, y_ptr, ypre_ptr,
    chunk_start_ptr, chunk_len_ptr,
    stride_x_t, stride_x_h, stride_c_t, stride_c_g, stride_z_t, stride_z_h, stride_y_t, stride_y_h,
    ntokens, nheads, headdim, dstate, ngroups, heads_per_group,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, HAS_Z: tl.constexpr,
    PRODUCTS: tl.constexpr, ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    head, group, offs_p, mask_p, chunk, c0, clen = head_chunk_program(chunk_start_ptr, chunk_len_ptr, headdim,
                                                                       heads_per_group, BLOCK_P, 2, ALIGNED)
    pid_m = tl.program_id(1)
    if pid_m * BLOCK_M < clen:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < clen
        row = head.to(tl.int64) * ntokens + c0
        s_m = tl.load(s_ptr + row + offs_m, mask=mask_m, other=0.0)
        x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
        c_base = c_ptr + c0 * stride_c_t + group * stride_c_g

        # contribution of the state entering the chunk: exp(s_i) C_i h^T
        acc = _state_term(c_base, stride_c_t, states_ptr + (chunk * nheads + head) * headdim * dstate, products_ptr,
                          chunk, group, head, offs_m, mask_m, offs_p, mask_p, dstate, ngroups, heads_per_group,
                          headdim, CHUNK, BLOCK_N, PRODUCTS, PREC)
        acc = acc * exp_ftz(s_m)[:, None]

        # within-chunk contribution, tiles on or below the diagonal
        cb_base = cb_ptr + (chunk.to(tl.int64) * ngroups + group) * CHUNK * CHUNK
        k_end = tl.minimum((pid_m + 1) * BLOCK_M, clen)
        for k0 in range(0, k_end, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < clen
            cb = tl.load(cb_base + offs_m[:, None] * CHUNK + offs_k[None, :],
                         mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            s_k = tl.load(s_ptr + row + offs_k, mask=mask_k, other=0.0)
            dt_k = tl.load(dtp_ptr + row + offs_k, mask=mask_k, other=0.0)
            w = cb * exp_ftz(tl.minimum(s_m[:, None] - s_k[None, :], 0.0)) * dt_k[None, :]
            w = tl.where(offs_k[None, :] <= offs_m[:, None], w, 0.0)
            xk = tl.load(x_base + offs_k[:, None] * stride_x_t + offs_p[None, :],
                         mask=mask_k[:, None] & mask_p[None, :], other=0.0)
            acc += mm(w.to(xk.dtype), xk, PREC)

        mask = mask_m[:, None] & mask_p[None, :]
        if HAS_D:
            xm = tl.load(x_base + offs_m[:, None] * stride_x_t + offs_p[None, :], mask=mask, other=0.0).to(tl.float32)
            if D_HAS_HDIM:
                dvec = tl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
                acc += xm * dvec[None, :]
            else:
                acc += xm * tl.load(d_ptr + head).to(tl.float32)
        if HAS_Z:
            if ypre_ptr is not None:
                tl.store(ypre_ptr + c0 * stride_y_t + head * stride_y_h + offs_m[:, None] * stride_y_t
                         + offs_p[None, :], acc.to(ypre_ptr.dtype.element_ty), mask=mask)
            zt = tl.load(z_ptr + c0 * stride_z_t + head * stride_z_h + offs_m[:, None] * stride_z_t + offs_p[None, :],
                         mask=mask, other=0.0).to(tl.float32)
            acc = acc * zt * tl.sigmoid(zt)
        tl.store(y_ptr + c0 * stride_y_t + head * stride_y_h + offs_m[:, None] * stride_y_t + offs_p[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dx_tiles_kernel(
    x_ptr, dy_ptr, b_ptr, cb_ptr, dstates_ptr, products_ptr, s_ptr, dtp_ptr, d_ptr,
    dx_ptr, ddtp_ptr, dd_ptr, chunk_start_ptr, chunk_len_ptr,
    stride_x_t, stride_x_h, stride_dy_t, stride_dy_h, stride_b_t, stride_b_g,
    stride_dx_t, stride_dx_h,
    ntokens, nheads, headdim, dstate, ngroups, heads_per_group, b_desc, dstates_desc, cb_desc, dy_desc,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, PRODUCTS: tl.constexpr,
    TMA: tl.constexpr, ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    """TMA: the state term's and the source loop's tiles come through `_dx_descriptors`' boxes; their rows past
    the chunk's end reach only rows of dx that are not stored, but those of dy are zeroed in the chunk's last source
    tile, as masked loads leave them (0 times the next sequence's values, NaN included)."""
    head, group, offs_p, mask_p, chunk, c0, clen = head_chunk_program(chunk_start_ptr, chunk_len_ptr, headdim,
                                                                       heads_per_group, BLOCK_P, 2, ALIGNED)
    pid_j = tl.program_id(1)
    if pid_j * BLOCK_M < clen:
        offs_j = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_j = offs_j < clen
        row = head.to(tl.int64) * ntokens + c0
        s_j = tl.load(s_ptr + row + offs_j, mask=mask_j, other=0.0)
        dt_j = tl.load(dtp_ptr + row + offs_j, mask=mask_j, other=0.0)
        s_last = tl.load(s_ptr + row + clen - 1)
        x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
        dy_base = dy_ptr + c0 * stride_dy_t + head * stride_dy_h
        b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
        mask = mask_j[:, None] & mask_p[None, :]
        tile_j = offs_j[:, None] * stride_x_t + offs_p[None, :]
        tile_dy = offs_j[:, None] * stride_dy_t + offs_p[None, :]

        # through the chunk's end state (exp(s_last - s_j) B_j dh^T) and through the outputs of the same chunk
        # (W_jt dy_t over the tiles on or below the diagonal, W_jt = CB_tj exp(s_t - s_j))
        if TMA:
            # transposed, dx^T = dh B_j^T + sum_t dy_t^T W_jt^T, so that every product reads both operands from
            # shared memory: as W dy, with W a register operand, ptxas serialized every wgmma of the 8-warp build
            # (triton 3.6, 128 x 256; "non wgmma instructions defining accumulator registers")
            p0 = (tl.program_id(0) % tl.cdiv(headdim, BLOCK_P)) * BLOCK_P  # the block's first head_dim column
            acc_t = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)
            for n0 in range(0, dstate, BLOCK_N):
                r = b_desc.load([(c0 + pid_j * BLOCK_M).to(tl.int32), (group * dstate + n0).to(tl.int32)])
                h = dstates_desc.load([((chunk * nheads + head) * headdim + p0).to(tl.int32), n0])
                acc_t += mm(h.to(r.dtype), tl.trans(r), PREC)
            acc_t = acc_t * exp_ftz(s_last - s_j)[None, :]
            cb_row = (chunk * ngroups + group) * CHUNK
            for t0 in range(pid_j * BLOCK_M, clen, BLOCK_K):
                offs_t = t0 + tl.arange(0, BLOCK_K)
                mask_t = offs_t < clen
                cb_tj = cb_desc.load([(cb_row + t0).to(tl.int32), (pid_j * BLOCK_M).to(tl.int32)]).to(tl.float32)
                dyt = dy_desc.load([(c0 + t0).to(tl.int32), (head * headdim + p0).to(tl.int32)])
                if clen - t0 < BLOCK_K:
                    dyt = tl.where(mask_t[:, None], dyt, tl.zeros_like(dyt))
                s_t = tl.load(s_ptr + row + offs_t, mask=mask_t, other=0.0)
                w_t = cb_tj * exp_ftz(tl.minimum(s_t[:, None] - s_j[None, :], 0.0))
                w_t = tl.where((offs_t[:, None] >= offs_j[None, :]) & mask_t[:, None], w_t, 0.0)
                acc_t += mm(tl.trans(dyt), w_t.to(dyt.dtype), PREC)
            acc = tl.trans(acc_t)
        else:
            acc = _state_term(b_base, stride_b_t, dstates_ptr + (chunk * nheads + head) * headdim * dstate,
                              products_ptr, chunk, group, head, offs_j, mask_j, offs_p, mask_p, dstate, ngroups,
                              heads_per_group, headdim, CHUNK, BLOCK_N, PRODUCTS, PREC)
            acc = acc * exp_ftz(s_last - s_j)[:, None]
            cb_base = cb_ptr + (chunk.to(tl.int64) * ngroups + group) * CHUNK * CHUNK
            for t0 in range(pid_j * BLOCK_M, clen, BLOCK_K):
                offs_t = t0 + tl.arange(0, BLOCK_K)
                mask_t = offs_t < clen
                cb_t = tl.load(cb_base + offs_t[None, :] * CHUNK + offs_j[:, None],
                               mask=mask_j[:, None] & mask_t[None, :], other=0.0).to(tl.float32)
                dyt = tl.load(dy_base + offs_t[:, None] * stride_dy_t + offs_p[None, :],
                              mask=mask_t[:, None] & mask_p[None, :], other=0.0)
                s_t = tl.load(s_ptr + row + offs_t, mask=mask_t, other=0.0)
                w = cb_t * exp_ftz(tl.minimum(s_t[None, :] - s_j[:, None], 0.0))
                w = tl.where((offs_t[None, :] >= offs_j[:, None]) & mask_t[None, :], w, 0.0)
                acc += mm(w.to(dyt.dtype), dyt, PREC)

        xj = tl.load(x_base + tile_j, mask=mask, other=0.0).to(tl.float32)
        dyj = tl.load(dy_base + tile_dy, mask=mask, other=0.0).to(tl.float32)
        ddt = tl.sum(acc * xj, 1)
        dx = acc * dt_j[:, None]
        if HAS_D:
            if D_HAS_HDIM:
                dvec = tl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
                dx += dyj * dvec[None, :]
                tl.atomic_add(dd_ptr + head * headdim + offs_p, tl.sum(dyj * xj, 0), mask=mask_p, sem="relaxed")
            else:
                dval = tl.load(d_ptr + head).to(tl.float32)
                dx += dyj * dval
                tl.atomic_add(dd_ptr + head, tl.sum(tl.sum(dyj * xj, 1), 0), sem="relaxed")
        tl.store(dx_ptr + c0 * stride_dx_t + head * stride_dx_h + offs_j[:, None] * stride_dx_t + offs_p[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.atomic_add(ddtp_ptr + row + offs_j, ddt, mask=mask_j, sem="relaxed")


def cb_table_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the C B^T table for inputs of `dtype`: theirs (config.cb_table_fp32: float32 if asked)."""
    return torch.float32 if cb_table_fp32() else dtype


def chunk_cb(B: Tensor, C: Tensor, table: ChunkTable, prec: str, out: Optional[Tensor] = None) -> Tensor:
    """C B^T per chunk and group, (nchunks, ngroups, chunk, chunk) in `cb_table_dtype` (float32 accumulation);
    tiles above the diagonal unset. Written into `out` when given (that shape, any float dtype)."""
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    cb = out if out is not None else torch.empty(table.nchunks, ngroups, chunk, chunk, device=B.device,
                                                 dtype=cb_table_dtype(B.dtype))
    cfg = cb_config(dstate, chunk)
    grid = ((chunk // cfg.block_m) * (chunk // cfg.block_k), ngroups, table.nchunks)
    _cb_kernel[grid](
        B, C, cb, table.chunk_start, table.chunk_len, B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        ngroups, dstate, CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n,
        ALIGNED=cfg.alignment(table.aligned), PREC=prec, **cfg.launch_options(),
    )
    return cb


def _state_products(cfg: KernelConfig, rows: Tensor, states: Tensor, table: ChunkTable) -> Optional[Tensor]:
    """state_products.state_products(rows, states, table) where the row-tile kernel's config asks for it (gemm) and
    the matmul is as exact as the kernels' own product (matmul_matches_kernels; rows has the inputs' dtype), else
    None: the kernel forms its state term itself."""
    return state_products(rows, states, table) if cfg.gemm and matmul_matches_kernels(rows) else None


def scan_tiles(x: Tensor, C: Tensor, cb: Tensor, states: Tensor, s: Tensor, dtp: Tensor, D: Optional[Tensor],
               z: Optional[Tensor], y: Tensor, y_pre: Optional[Tensor], table: ChunkTable, prec: str) -> None:
    """Writes y (and y_pre) by `_scan_tiles_kernel`; arguments as in forward.ssd_forward."""
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = C.shape[1:]
    chunk = table.chunk_size
    cfg = scan_config(headdim, dstate, chunk)
    products = _state_products(cfg, C, states, table)
    grid = (nheads * triton.cdiv(headdim, cfg.block_p), chunk // cfg.block_m, table.nchunks)
    _scan_tiles_kernel[grid](
        x, C, cb, states, products, s, dtp, D, z, y, y_pre, table.chunk_start, table.chunk_len,
        x.stride(0), x.stride(1), C.stride(0), C.stride(1),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0, y.stride(0), y.stride(1),
        ntokens, nheads, headdim, dstate, ngroups, nheads // ngroups,
        CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n,
        HAS_D=D is not None, D_HAS_HDIM=D is not None and D.dim() == 2, HAS_Z=z is not None,
        PRODUCTS=products is not None, ALIGNED=cfg.alignment(table.aligned), PREC=prec, **cfg.launch_options(),
    )


def dx_tiles(x: Tensor, dy: Tensor, B: Tensor, cb: Tensor, dstates: Tensor, s: Tensor, dtp: Tensor,
             D: Optional[Tensor], dx: Tensor, ddtp: Tensor, dD: Optional[Tensor], table: ChunkTable,
             prec: str) -> None:
    """Writes dx and adds to ddtp, dD by `_dx_tiles_kernel`; arguments as in backward.ssd_backward."""
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    cfg = bwd_dx_config(headdim, dstate, chunk)
    products = _state_products(cfg, B, dstates, table)
    descs = _dx_descriptors(B, dstates, cb, dy, cfg) if products is None else None
    grid = (nheads * triton.cdiv(headdim, cfg.block_p), chunk // cfg.block_m, table.nchunks)
    _dx_tiles_kernel[grid](
        x, dy, B, cb, dstates, products, s, dtp, D, dx, ddtp, dD, table.chunk_start,
        table.chunk_len, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), B.stride(0), B.stride(1),
        dx.stride(0), dx.stride(1), ntokens, nheads, headdim, dstate, ngroups,
        nheads // ngroups, *(descs if descs is not None else (None,) * 4), CHUNK=chunk, BLOCK_M=cfg.block_m,
        BLOCK_K=cfg.block_k, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, HAS_D=D is not None,
        D_HAS_HDIM=D is not None and D.dim() == 2, PRODUCTS=products is not None, TMA=descs is not None,
        ALIGNED=cfg.alignment(table.aligned), PREC=prec, **cfg.launch_options(),
    )


def _dx_descriptors(B: Tensor, dstates: Tensor, cb: Tensor, dy: Tensor,
                    cfg: KernelConfig) -> Optional[tuple[TensorDescriptor, ...]]:
    """Descriptors of the dx row-tile kernel's tiles (forming its own state term), or None (cfg.tma 0; head_dim or
    d_state not a multiple of the kernel's blocks, whose boxes would take the next head's or group's columns; a
    layout TMA cannot address): B (ntokens, ngroups * dstate) in boxes of block_m x block_n, the state gradients
    (nchunks * nheads * headdim, dstate) in boxes of block_p x block_n, the C B^T table (nchunks * ngroups * chunk,
    chunk) in boxes of block_k x block_m, dy (ntokens, nheads * headdim) in boxes of block_k x
    block_p."""
    headdim, dstate = dstates.shape[2:]
    if cfg.tma == 0 or headdim % cfg.block_p or dstate % cfg.block_n:
        return None
    return descriptors((B, [cfg.block_m, cfg.block_n]), (dstates[..., None, :], [cfg.block_p, cfg.block_n]),
                       (cb[..., None, :], [cfg.block_k, cfg.block_m]), (dy, [cfg.block_k, cfg.block_p]))
