"""Backward SSD kernels that work per chunk, and the launcher of the whole backward pass.

With dh_c = dL/d(state at the end of chunk c) (from backward_states), per chunk and head:
- `_dx_kernel`, one program per (head and head_dim block, chunk) walking the chunk backwards and carrying
  g = exp(s_last - s_ref) dh_c + sum over later tokens of exp(s_t - s_ref) C_t^T dy_t (or tiles.py's kernel per
  row tile, as config.py picks): dxp_j = exp(s_last - s_j) dh_c B_j + sum_{t>=j} CB_tj exp(s_t - s_j) dy_t;
  dx_j = dt'_j dxp_j + D dy_j; dL/d dt'_j (as a multiplier) = x_j . dxp_j; dL/dD.
- `_dcb_kernel`: dCB_tj = sum over the group's heads of exp(s_t - s_j) dt'_j (dy_t . x_j), t >= j; per head the
  score terms G_tj = dCB_tj CB_tj, whose row sums add to (and column sums take from) the log-decay gradient.
- `_dbc_kernel`: dC_t = sum_heads exp(s_t) dy_t h_c + sum_{j<=t} dCB_tj B_j;
  dB_j = sum_heads dt'_j exp(s_last - s_j) x_j dh_c + sum_{t>=j} dCB_tj C_t; and from the per-head terms of the
  first sums, two log-decay gradients: C_t . exp(s_t) dy_t h_c = dy_t . exp(s_t) C_t h_c (the entering state's
  output) and B_j . dt'_j exp(s_last - s_j) x_j dh_c (the path to the chunk's end state). The dx kernels would
  need a product per term for them (C_t h_c, B_j dh_c) where here they cost a row sum.
Sums shared between programs are accumulated with relaxed atomics: only later launches read them (or launches
on the other stream: the backward runs the state-gradient pass alongside `_dcb_kernel`, then `_dbc_kernel`
alongside the dx kernel, on two streams, streams.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from .backward_states import dt_bwd_kernel, gate_bwd_kernel, state_bwd_kernel
from .common import chunk_extent, chunk_tile_pair, dot_precision, exp_ftz, head_chunk_program, mm
from .config import (KernelConfig, bwd_dbc_config, bwd_dcb_config, bwd_dx_config, dc_beside_state_pass, dt_head_block,
                     overlap, pow2, state_bwd_config)
from .descriptors import descriptors
from .forward import ForwardResult, dt_limit_flags
from .layout import ChunkTable
from .segments import carry_backward, chunk_walks, state_walk
from .streams import Fork
from .tiles import chunk_cb, dx_tiles

try:
    from .backward_wgmma import dx_wgmma
    from .wgmma import wgmma_supported, wgmma_tiles
except ImportError:  # a Triton without Gluon's Hopper API (before 3.5): the Triton kernels everywhere
    dx_wgmma = None

__all__ = ["Gradients", "ssd_backward"]


@triton.jit
def _dx_kernel(
    x_ptr, dy_ptr, b_ptr, c_ptr, dstates_ptr, s_ptr, dtp_ptr, d_ptr,
    dx_ptr, ddtp_ptr, dd_ptr, walk_chunk_ptr, walk_start_ptr, walk_len_ptr,
    stride_x_t, stride_x_h, stride_dy_t, stride_dy_h, stride_b_t, stride_b_g, stride_c_t, stride_c_g,
    stride_dx_t, stride_dx_h, ntokens, nheads, headdim, dstate, heads_per_group,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, STEPS_PER_CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (head and head_dim block, walk of layout.WalkTable), walking the walk's chunks backwards in
    BLOCK_T-token tiles (STEPS_PER_CHUNK to a chunk) from the gradient of the state at the end of its last chunk."""
    head, group, offs_p, mask_p, walk, c0, clen = head_chunk_program(walk_start_ptr, walk_len_ptr, headdim,
                                                                      heads_per_group, BLOCK_P, 1, ALIGNED)
    chunk_tokens: tl.constexpr = STEPS_PER_CHUNK * BLOCK_T
    chunk = tl.load(walk_chunk_ptr + walk).to(tl.int64) + (clen - 1) // chunk_tokens  # the walk's last chunk
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    row = head * ntokens + c0
    x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
    dy_base = dy_ptr + c0 * stride_dy_t + head * stride_dy_h
    b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
    c_base = c_ptr + c0 * stride_c_t + group * stride_c_g
    dx_base = dx_ptr + c0 * stride_dx_t + head * stride_dx_h
    if HAS_D:
        if D_HAS_HDIM:
            dvec = tl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            dval = tl.load(d_ptr + head).to(tl.float32)
    # dL/dD per channel: column sums of dy * x per step; per head: row sums per step, reduced across the rows (and
    # warps) once at the end
    if D_HAS_HDIM:
        dd = tl.zeros((BLOCK_P,), dtype=tl.float32)
    else:
        dd = tl.zeros((BLOCK_T,), dtype=tl.float32)

    # g^T (d_state x head_dim block): the gradient of the state after the tile being walked, decayed to the last
    # token of that tile (ref): the walk-end state's gradient dh decayed from the walk's last token, plus the
    # sum over the walk's later tokens t of exp(s_t - s_ref) C_t^T dy_t. s restarts at each chunk: g, referred to
    # the first token of the chunk after the tile, decays into the state between the chunks by that token's s
    # (carried), then as the tile's chunk's s says
    g = tl.load(dstates_ptr + (chunk * nheads + head) * headdim * dstate + offs_p[None, :] * dstate
                + offs_n[:, None], mask=mask_n[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
    ntiles = tl.cdiv(clen, BLOCK_T)
    for i in range(0, ntiles):
        t0 = (ntiles - 1 - i) * BLOCK_T
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < clen
        s_t = tl.load(s_ptr + row + offs_t, mask=mask_t, other=0.0)
        dt_t = tl.load(dtp_ptr + row + offs_t, mask=mask_t, other=0.0)
        t_after = t0 + BLOCK_T
        carried = tl.load(s_ptr + row + t_after, mask=(t_after % chunk_tokens == 0) & (t_after < clen), other=0.0)
        s_ref = tl.load(s_ptr + row + tl.minimum(t_after, clen) - 1) + carried
        mask_tn = mask_t[:, None] & mask_n[None, :]
        b = tl.load(b_base + offs_t[:, None] * stride_b_t + offs_n[None, :], mask=mask_tn, other=0.0)
        c = tl.load(c_base + offs_t[:, None] * stride_c_t + offs_n[None, :], mask=mask_tn, other=0.0)
        mask = mask_t[:, None] & mask_p[None, :]
        xt = tl.load(x_base + offs_t[:, None] * stride_x_t + offs_p[None, :], mask=mask, other=0.0)
        dyt = tl.load(dy_base + offs_t[:, None] * stride_dy_t + offs_p[None, :], mask=mask, other=0.0)
        # through the state after this tile (g, before this tile's update), then g moves to the previous tile
        acc = mm(b, g.to(b.dtype), PREC) * tl.where(mask_t, exp_ftz(s_ref - s_t), 0.0)[:, None]
        s_prev = tl.load(s_ptr + row + t0 - 1 + (t0 % chunk_tokens == 0).to(tl.int32))
        dyw = (dyt.to(tl.float32) * tl.where(mask_t, exp_ftz(s_t - s_prev), 0.0)[:, None]).to(c.dtype)
        g = g * exp_ftz(s_ref - s_prev) + mm(tl.trans(c), dyw, PREC)
        # through the outputs of this tile (t' >= t)
        bc = mm(b, tl.trans(c), PREC)
        w = bc * exp_ftz(tl.minimum(s_t[None, :] - s_t[:, None], 0.0))
        w = tl.where(offs_t[None, :] >= offs_t[:, None], w, 0.0)
        acc += mm(w.to(dyt.dtype), dyt, PREC)
        xf = xt.to(tl.float32)
        dyf = dyt.to(tl.float32)

        dx = acc * dt_t[:, None]
        if HAS_D:
            if D_HAS_HDIM:
                dx += dyf * dvec[None, :]
            else:
                dx += dyf * dval
            dd += tl.sum(dyf * xf, 0 if D_HAS_HDIM else 1)
        tl.store(dx_base + offs_t[:, None] * stride_dx_t + offs_p[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=mask)
        tl.atomic_add(ddtp_ptr + row + offs_t, tl.sum(acc * xf, 1), mask=mask_t, sem="relaxed")
    if HAS_D:
        if D_HAS_HDIM:
            tl.atomic_add(dd_ptr + head * headdim + offs_p, dd, mask=mask_p, sem="relaxed")
        else:
            tl.atomic_add(dd_ptr + head, tl.sum(dd, 0), sem="relaxed")


@triton.jit
def _tile_vectors(s_ptr, dtp_ptr, row, offs_m, mask_m, offs_k, mask_k):
    """A head's log-decays s at a tile's rows and columns and its steps dt' at the columns (row: the offset of the
    head's chunk in the (nheads, ntokens) arrays)."""
    s_m = tl.load(s_ptr + row + offs_m, mask=mask_m, other=0.0)
    s_k = tl.load(s_ptr + row + offs_k, mask=mask_k, other=0.0)
    return s_m, s_k, tl.load(dtp_ptr + row + offs_k, mask=mask_k, other=0.0)


@triton.jit
def _dcb_kernel(
    x_ptr, dy_ptr, s_ptr, dtp_ptr, cb_ptr, dcb_ptr, ds_ptr, chunk_start_ptr, chunk_len_ptr,
    stride_x_t, stride_x_h, stride_dy_t, stride_dy_h,
    ntokens, headdim, ngroups, heads_per_group,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCKS_P: tl.constexpr, ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    group, chunk, c0, clen, active, offs_m, mask_m, offs_k, mask_k = chunk_tile_pair(
        chunk_start_ptr, chunk_len_ptr, CHUNK, BLOCK_M, BLOCK_K, ALIGNED)
    if active:
        causal = (offs_k[None, :] <= offs_m[:, None]) & mask_k[None, :]
        base = (chunk.to(tl.int64) * ngroups + group) * CHUNK * CHUNK
        tile = offs_m[:, None] * CHUNK + offs_k[None, :]
        cb = tl.load(cb_ptr + base + tile, mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        s_m, s_k, dt_k = _tile_vectors(s_ptr, dtp_ptr, (group * heads_per_group).to(tl.int64) * ntokens + c0,
                                       offs_m, mask_m, offs_k, mask_k)
        for r in range(0, heads_per_group):
            head = group * heads_per_group + r
            row = head.to(tl.int64) * ntokens + c0
            dy_base = dy_ptr + c0 * stride_dy_t + head * stride_dy_h
            x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
            head_next = group * heads_per_group + tl.minimum(r + 1, heads_per_group - 1)
            s_m_next, s_k_next, dt_k_next = _tile_vectors(s_ptr, dtp_ptr, head_next.to(tl.int64) * ntokens + c0,
                                                          offs_m, mask_m, offs_k, mask_k)
            g = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
            # head_dim steps unrolled, so that Triton prefetches the head loop's tiles (num_stages - 1 heads ahead);
            # the log-decays and steps come from the previous iteration, so the exponentials wait for no load
            for ip in tl.static_range(BLOCKS_P):
                offs_p = ip * BLOCK_P + tl.arange(0, BLOCK_P)
                mask_p = offs_p < headdim
                dym = tl.load(dy_base + offs_m[:, None] * stride_dy_t + offs_p[None, :],
                              mask=mask_m[:, None] & mask_p[None, :], other=0.0)
                xk = tl.load(x_base + offs_k[:, None] * stride_x_t + offs_p[None, :],
                             mask=mask_k[:, None] & mask_p[None, :], other=0.0)
                g += mm(dym, tl.trans(xk.to(dym.dtype)), PREC)
            w = tl.where(causal, g * exp_ftz(tl.minimum(s_m[:, None] - s_k[None, :], 0.0)) * dt_k[None, :], 0.0)
            acc += w
            # the score term G_tj = dCB_tj CB_tj adds to the log-decay gradient of row t and takes from column j. The
            # sums are added as 2-D tensors, so that no reduction crosses the warps and no 1-D result is converted
            # for its atomic (13 -> 5 CTA barriers per head): each row sum from the tile's first column, and the
            # column sums of each warp's quarter of the rows (4 partial sums per column)
            score = w * cb
            rows = tl.broadcast_to(offs_m[:, None], (BLOCK_M, BLOCK_K))
            first = tl.broadcast_to(tl.arange(0, BLOCK_K)[None, :] == 0, (BLOCK_M, BLOCK_K))
            tl.atomic_add(ds_ptr + row + rows, tl.broadcast_to(tl.sum(score, 1)[:, None], (BLOCK_M, BLOCK_K)),
                          mask=first & mask_m[:, None], sem="relaxed")
            quarters = tl.sum(tl.reshape(score, (4, BLOCK_M // 4, BLOCK_K)), 1)
            tl.atomic_add(ds_ptr + row + tl.broadcast_to(offs_k[None, :], (4, BLOCK_K)), -quarters,
                          mask=tl.broadcast_to(mask_k[None, :], (4, BLOCK_K)), sem="relaxed")
            s_m, s_k, dt_k = s_m_next, s_k_next, dt_k_next
        tl.store(dcb_ptr + base + tile, acc, mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _dbc_kernel(
    x_ptr, dy_ptr, b_ptr, c_ptr, states_ptr, dstates_ptr, dcb_ptr, s_ptr, dtp_ptr, db_ptr, dc_ptr, ds_ptr,
    dsend_ptr, chunk_start_ptr, chunk_len_ptr,
    stride_x_t, stride_x_h, stride_dy_t, stride_dy_h, stride_b_t, stride_b_g, stride_c_t, stride_c_g,
    stride_db_t, stride_db_g,
    ntokens, nheads, headdim, dstate, ngroups, heads_per_group, dy_desc, x_desc, states_desc, dstates_desc,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCKS_P: tl.constexpr, SIDE: tl.constexpr, TMA: tl.constexpr, ALIGNED: tl.constexpr,
    PREC: tl.constexpr,
):
    """One program per (row tile x d_state block, group, chunk). SIDE 0 computes dC (with its log-decay terms into
    ds), 1 dB (into dsend), 2 both in one program. TMA: the head loop's tiles (dy or x, the states or their
    gradients) come through the descriptors of `_dbc_descriptors`; their rows past the chunk's end are then the
    next chunk's, which reach only the rows of dC and dB that are not stored."""
    DC: tl.constexpr = SIDE != 1
    DB: tl.constexpr = SIDE != 0
    blocks_n = tl.cdiv(dstate, BLOCK_N)
    pid_r = tl.program_id(0) // blocks_n
    pid_n = tl.program_id(0) % blocks_n
    group = tl.program_id(1).to(tl.int64)
    chunk = tl.program_id(2).to(tl.int64)
    c0, clen = chunk_extent(chunk_start_ptr, chunk_len_ptr, chunk, ALIGNED)
    if pid_r * BLOCK_M < clen:
        offs_r = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_r = offs_r < clen
        mask_n = offs_n < dstate
        dtype = b_ptr.dtype.element_ty
        b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
        c_base = c_ptr + c0 * stride_c_t + group * stride_c_g
        mask_rn = mask_r[:, None] & mask_n[None, :]
        dc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if DC:
            c_r = tl.load(c_base + offs_r[:, None] * stride_c_t + offs_n[None, :], mask=mask_rn, other=0.0)
        if DB:
            b_r = tl.load(b_base + offs_r[:, None] * stride_b_t + offs_n[None, :], mask=mask_rn, other=0.0)
        # row sums of C_r dc and B_r db so far: each head's log-decay terms (below) are their increments, which
        # keeps no per-head copy of dc, db in registers (the sums grow over at most a group's heads)
        dc_seen = tl.zeros((BLOCK_M,), dtype=tl.float32)
        db_seen = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for r in range(0, heads_per_group):
            head = group * heads_per_group + r
            row = head.to(tl.int64) * ntokens + c0
            s_r = tl.load(s_ptr + row + offs_r, mask=mask_r, other=0.0)
            state = (chunk * nheads + head) * headdim * dstate
            if DC:
                to_out = exp_ftz(s_r)
                dy_base = dy_ptr + c0 * stride_dy_t + head * stride_dy_h
            if DB:
                dt_r = tl.load(dtp_ptr + row + offs_r, mask=mask_r, other=0.0)
                s_last = tl.load(s_ptr + row + clen - 1)
                to_end = dt_r * exp_ftz(s_last - s_r)
                x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
            # head_dim steps unrolled, so that the head loop is the innermost loop and Triton prefetches its copies
            # (num_stages - 1 heads ahead; behind a runtime head_dim loop each head waited for its own loads)
            for ip in tl.static_range(BLOCKS_P):
                offs_p = ip * BLOCK_P + tl.arange(0, BLOCK_P)
                mask_p = offs_p < headdim
                mask = mask_r[:, None] & mask_p[None, :]
                tile = offs_p[:, None] * dstate + offs_n[None, :]
                mask_tile = mask_p[:, None] & mask_n[None, :]
                if TMA:
                    token_row = (c0 + pid_r * BLOCK_M).to(tl.int32)
                    col = (head * headdim + ip * BLOCK_P).to(tl.int32)
                    state_row = ((chunk * nheads + head) * headdim + ip * BLOCK_P).to(tl.int32)
                    col_n = (pid_n * BLOCK_N).to(tl.int32)
                if DC:
                    if TMA:
                        dyr = dy_desc.load([token_row, col]).to(tl.float32)
                        h = states_desc.load([state_row, col_n]).to(dtype)
                    else:
                        dyr = tl.load(dy_base + offs_r[:, None] * stride_dy_t + offs_p[None, :],
                                      mask=mask, other=0.0).to(tl.float32)
                        h = tl.load(states_ptr + state + tile, mask=mask_tile, other=0.0).to(dtype)
                    dc += mm((dyr * to_out[:, None]).to(dtype), h, PREC)
                if DB:
                    if TMA:
                        xr = x_desc.load([token_row, col]).to(tl.float32)
                        dh = dstates_desc.load([state_row, col_n]).to(dtype)
                    else:
                        xr = tl.load(x_base + offs_r[:, None] * stride_x_t + offs_p[None, :],
                                     mask=mask, other=0.0).to(tl.float32)
                        dh = tl.load(dstates_ptr + state + tile, mask=mask_tile, other=0.0).to(dtype)
                    db += mm((xr * to_end[:, None]).to(dtype), dh, PREC)
            # this head's terms with C_r (B_r) are the log-decay gradients of the entering state's output
            # exp(s_r) C_r h_in (of the path to the chunk's end state, dt'_r exp(s_last - s_r) x_r . dh B_r)
            if DC:
                dc_sum = tl.sum(dc * c_r.to(tl.float32), 1)
                tl.atomic_add(ds_ptr + row + offs_r, dc_sum - dc_seen, mask=mask_r, sem="relaxed")
                dc_seen = dc_sum
            if DB:
                db_sum = tl.sum(db * b_r.to(tl.float32), 1)
                tl.atomic_add(dsend_ptr + row + offs_r, db_sum - db_seen, mask=mask_r, sem="relaxed")
                db_seen = db_sum

        cb_base = dcb_ptr + (chunk.to(tl.int64) * ngroups + group) * CHUNK * CHUNK
        if DC:
            r_end = tl.minimum((pid_r + 1) * BLOCK_M, clen)
            for k0 in range(0, r_end, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < r_end
                g = tl.load(cb_base + offs_r[:, None] * CHUNK + offs_k[None, :],
                            mask=mask_r[:, None] & mask_k[None, :], other=0.0)
                g = tl.where(offs_k[None, :] <= offs_r[:, None], g, 0.0)
                bk = tl.load(b_base + offs_k[:, None] * stride_b_t + offs_n[None, :],
                             mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                dc += mm(g.to(dtype), bk, PREC)
        if DB:
            for t0 in range(pid_r * BLOCK_M, clen, BLOCK_K):
                offs_t = t0 + tl.arange(0, BLOCK_K)
                mask_t = offs_t < clen
                g = tl.load(cb_base + offs_t[None, :] * CHUNK + offs_r[:, None],
                            mask=mask_r[:, None] & mask_t[None, :], other=0.0)
                g = tl.where(offs_t[None, :] >= offs_r[:, None], g, 0.0)
                ct = tl.load(c_base + offs_t[:, None] * stride_c_t + offs_n[None, :],
                             mask=mask_t[:, None] & mask_n[None, :], other=0.0)
                db += mm(g.to(dtype), ct, PREC)

        out = c0 * stride_db_t + group * stride_db_g
        tile = offs_r[:, None] * stride_db_t + offs_n[None, :]
        if DC:
            tl.store(dc_ptr + out + tile, dc.to(dc_ptr.dtype.element_ty), mask=mask_rn)
        if DB:
            tl.store(db_ptr + out + tile, db.to(db_ptr.dtype.element_ty), mask=mask_rn)


def _dbc_descriptors(x: Tensor, dy: Tensor, states: Tensor, dstates: Tensor,
                     cfg: KernelConfig) -> Optional[tuple[TensorDescriptor, ...]]:
    """Descriptors of the dB/dC kernel's head-loop tiles, or None (cfg.tma 0, or -1 with both gradients in one program,
    where ptxas serializes the kernel's wgmma with them: triton 3.6, sm_90; head_dim not a multiple of the head_dim
    step, whose boxes would take the next head's columns; a layout TMA cannot address): x and dy as rows of tokens
    (ntokens, nheads * headdim) in boxes of block_m x block_p, the states and their gradients as rows of head_dim
    (nchunks * nheads * headdim, dstate) in boxes of block_p x block_n."""
    headdim = states.shape[2]
    if cfg.tma == 0 or (cfg.tma < 0 and not cfg.split) or headdim % cfg.block_p:
        return None
    token_box, state_box = [cfg.block_m, cfg.block_p], [cfg.block_p, cfg.block_n]
    return descriptors((dy, token_box), (x, token_box), (states[..., None, :], state_box),
                       (dstates[..., None, :], state_box))


def _state_bwd_descriptors(dy: Tensor, C: Tensor, cfg: KernelConfig) -> Optional[tuple[TensorDescriptor, ...]]:
    """Descriptors of the state-gradient pass's step tiles, or None (cfg.tma 0 or -1: TMA was the slower, 1.79 against
    1.71 ms at 128 x 256 on an H200, RESULTS.md; head_dim not a multiple of the tile's head_dim block, or d_state of
    its d_state block, whose boxes would take the next head's or group's columns; a layout TMA cannot address): dy
    as rows of tokens (ntokens, nheads * headdim) in boxes of block_m x block_p (two heads' columns where cfg.heads
    is 2), C as (ntokens, ngroups * dstate) in boxes of block_m x block_n."""
    headdim, dstate = dy.shape[2], C.shape[2]
    if cfg.tma <= 0 or (headdim * cfg.heads) % cfg.block_p or dstate % cfg.block_n:
        return None
    return descriptors((dy, [cfg.block_m, cfg.block_p]), (C, [cfg.block_m, cfg.block_n]))


class Gradients(NamedTuple):
    """Gradients from `ssd_backward`, shaped like the flattened inputs of ssd_forward (None where not asked)."""

    dx: Tensor
    ddt: Tensor
    dA: Tensor
    dB: Tensor
    dC: Tensor
    dD: Optional[Tensor]
    dz: Optional[Tensor]
    ddt_bias: Optional[Tensor]
    dinitial_states: Optional[Tensor]


def _dx(x: Tensor, dy: Tensor, B: Tensor, C: Tensor, cb: Tensor, dstates: Tensor, fwd: ForwardResult,
        D: Optional[Tensor], dx: Tensor, ddtp: Tensor, dD: Optional[Tensor], table: ChunkTable, prec: str) -> None:
    """Launches the dx kernel config.py picks (the Gluon walk, the Triton walk or the kernel per row tile): writes
    dx and adds to ddtp (dL/d dt') and dD."""
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    gluon = dx_wgmma is not None and wgmma_supported(x, min(chunk, 64), pow2(dstate))
    cfg = bwd_dx_config(headdim, dstate, chunk, wgmma=gluon)
    if not cfg.walk:
        dx_tiles(x, dy, B, cb, dstates, fwd.s, fwd.dtp, D, dx, ddtp, dD, table, prec)
        return
    blocks = nheads * triton.cdiv(headdim, cfg.block_p)
    walks = chunk_walks(table, cfg, blocks, x.device)
    grid = (blocks, walks.count)
    args = (x, dy, B, C, dstates, fwd.s, fwd.dtp, D, dx, ddtp, dD, walks.chunk, walks.start, walks.length,
            x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), B.stride(0), B.stride(1), C.stride(0),
            C.stride(1), dx.stride(0), dx.stride(1), ntokens, nheads, headdim, dstate,
            nheads // ngroups)
    consts = dict(BLOCK_T=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n,
                  STEPS_PER_CHUNK=triton.cdiv(chunk, cfg.block_m), HAS_D=D is not None,
                  D_HAS_HDIM=D is not None and D.dim() == 2, ALIGNED=cfg.alignment(table.aligned))
    if cfg.wgmma and gluon and wgmma_tiles(cfg.block_m, cfg.block_n):
        dx_wgmma(grid, args, consts, cfg.register_cap(), cfg.tma)
    else:
        _dx_kernel[grid](*args, **consts, PREC=prec, **cfg.launch_options())


def ssd_backward(
    dout: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    table: ChunkTable, fwd: ForwardResult, *, D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
    dt_softplus: bool, dt_limit: tuple[float, float], initial_grad: bool = True,
) -> Gradients:
    """Runs the backward kernels. dout (T, nheads, headdim) = dL/dy; dfinal = dL/d(final states) or None;
    initial_grad: the caller wants dL/d(initial states) (without, the state-gradient pass over whole sequences skips
    its store, float32 and as large as the forward's final states, and Gradients.dinitial_states is None).

    Other arguments as given to (and returned by) ssd_forward. Gradients of A, D, dt_bias are float32 sums.
    """
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    per_group = nheads // ngroups
    prec = dot_precision(x.dtype == torch.float32)
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)
    has_lo, has_hi, lo, hi = dt_limit_flags(dt_limit)
    dout = dout.contiguous()

    dz = None
    if z is not None:
        y_pre = fwd.y_pre
        dy = torch.empty_like(dout)
        dz = torch.empty(ntokens, nheads, headdim, device=dev, dtype=z.dtype)
        grid = (triton.cdiv(ntokens, 32), nheads)
        gate_bwd_kernel[grid](
            dout, z, y_pre, dy, dz, ntokens, headdim, dout.stride(0), dout.stride(1), z.stride(0), z.stride(1),
            y_pre.stride(0), y_pre.stride(1), BLOCK_T=32, BLOCK_P=pow2(headdim),
        )
    else:
        dy = dout

    # the three (nheads, ntokens) sums the kernels accumulate into, zeroed by one fill
    ds, dsend, ddtp = torch.zeros(3, nheads, ntokens, **f32).unbind(0)
    dstates = torch.empty_like(fwd.states)
    dh0 = torch.empty(table.nseqs, nheads, headdim, dstate, **f32)
    dfinal = dfinal.contiguous() if dfinal is not None else None
    walk = state_walk(table, state_bwd_config(headdim, dstate, chunk, per_group), "state_bwd", dfinal, dh0)
    cb = fwd.cb if fwd.cb is not None else chunk_cb(B, C, table, prec)
    dx = torch.empty(ntokens, nheads, headdim, device=dev, dtype=x.dtype)
    dD = torch.zeros(D.shape, **f32) if D is not None else None
    dcb = torch.empty(table.nchunks, ngroups, chunk, chunk, **f32)

    dB = torch.empty(ntokens, ngroups, dstate, device=dev, dtype=B.dtype)
    dC = torch.empty_like(dB)
    dbc_cfg = bwd_dbc_config(headdim, dstate, chunk)
    dbc_descs = _dbc_descriptors(x, dy, fwd.states, dstates, dbc_cfg)

    def dbc(side: int) -> None:
        grid = ((chunk // dbc_cfg.block_m) * triton.cdiv(dstate, dbc_cfg.block_n), ngroups, table.nchunks)
        _dbc_kernel[grid](
            x, dy, B, C, fwd.states, dstates, dcb, fwd.s, fwd.dtp, dB, dC, ds, dsend, table.chunk_start,
            table.chunk_len,
            x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), B.stride(0), B.stride(1), C.stride(0),
            C.stride(1), dB.stride(0), dB.stride(1), ntokens, nheads, headdim, dstate, ngroups, per_group,
            *(dbc_descs if dbc_descs is not None else (None,) * 4),
            CHUNK=chunk, BLOCK_M=dbc_cfg.block_m, BLOCK_K=dbc_cfg.block_k, BLOCK_P=dbc_cfg.block_p,
            BLOCK_N=dbc_cfg.block_n, BLOCKS_P=triton.cdiv(headdim, dbc_cfg.block_p), SIDE=side,
            TMA=dbc_descs is not None, ALIGNED=dbc_cfg.alignment(table.aligned), PREC=prec,
            **dbc_cfg.launch_options(),
        )

    # two streams: the state-gradient pass alongside dCB (and dC, config.dc_beside_state_pass), which do not need its
    # dstates; then the dx kernel alongside dB/dC (or dB), which need them
    early_dc = bool(dbc_cfg.split) and dc_beside_state_pass(dstate)
    fork = Fork(dev, overlap("backward"))
    with fork.side():
        cfg = walk.cfg
        descs = _state_bwd_descriptors(dy, C, cfg)
        state_bwd_kernel[walk.grid](
            dy, C, fwd.s, fwd.states, walk.init, dstates, walk.out if initial_grad or walk.seg is not None else None,
            ds, walk.start, walk.chunk,
            dy.stride(0), dy.stride(1), C.stride(0), C.stride(1), ntokens, nheads, headdim, dstate, per_group,
            *(descs if descs is not None else (None, None)),
            CHUNK=chunk, BLOCK_T=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, HEADS=cfg.heads,
            HAS_DFINAL=walk.init is not None, ALIGNED=cfg.alignment(table.aligned), SCALE_B=bool(cfg.scale_b),
            TMA=descs is not None, PREC=prec,
            **cfg.launch_options(),
        )
        if walk.seg is not None:
            carry_backward(dstates, walk.out, dh0, dfinal, fwd.states, fwd.s, ds, table, walk.seg, cfg)

    cfg = bwd_dcb_config(headdim, chunk)
    grid = ((chunk // cfg.block_m) * (chunk // cfg.block_k), ngroups, table.nchunks)
    args = (x, dy, fwd.s, fwd.dtp, cb, dcb, ds, table.chunk_start, table.chunk_len,
            x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), ntokens, headdim, ngroups, per_group)
    consts = dict(CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
                  ALIGNED=cfg.alignment(table.aligned))
    _dcb_kernel[grid](*args, **consts, BLOCK_P=cfg.block_p, BLOCKS_P=triton.cdiv(headdim, cfg.block_p), PREC=prec,
                      **cfg.launch_options())
    if early_dc:
        dbc(0)
    fork.join()
    fork.follow()
    _dx(x, dy, B, C, cb, dstates, fwd, D, dx, ddtp, dD, table, prec)
    with fork.side():
        for side in (1,) if early_dc else (0, 1) if dbc_cfg.split else (2,):
            dbc(side)
    fork.join()

    ddt = torch.empty(ntokens, nheads, device=dev, dtype=dt.dtype)
    dA = torch.zeros(nheads, **f32)
    dbias = torch.zeros(nheads, **f32) if dt_bias is not None else None
    block_h = dt_head_block(nheads)
    dt_bwd_kernel[(table.nchunks, triton.cdiv(nheads, block_h))](
        dt, A, dt_bias, fwd.dtp, ds, dsend, ddtp, ddt, dA, dbias, table.chunk_start, table.chunk_len,
        dt.stride(0), dt.stride(1), ddt.stride(0), ddt.stride(1), ntokens, nheads, lo, hi,
        BLOCK=pow2(chunk), BLOCK_H=block_h, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LO=has_lo,
        HAS_HI=has_hi, ALIGNED=table.aligned, num_warps=8,
    )
    return Gradients(dx, ddt, dA, dB, dC, dD, dz, dbias, dh0 if initial_grad else None)
