"""Forward SSD kernels: chunk states, C B^T per chunk, and the chunk output.

Three launches (see benchmarks/NOTES-ssd.md for why this split):
1. `_state_fwd_kernel`, one program per (sequence, head, head_dim block): walks the sequence in token tiles,
   applies the step-size transform, writes dt' and the within-chunk cumulative log-decay s (both float32,
   (nheads, ntokens)), and carries the state h (float32 in registers), storing it at every chunk start
   (states, (nchunks, nheads, headdim, dstate), in the dot dtype) and once at the end (final states, float32).
   The state pass is fused in: chunk states never go to memory on their own.
2. `_cb_kernel`: CB[c, g] = C_c B_c^T (chunk x chunk, float32) once per chunk and group (shared by the group's
   heads), lower-triangular tiles only.
3. `_scan_fwd_kernel`: y_i = exp(s_i) C_i h_c + sum_{j<=i} CB_ij exp(s_i - s_j) dt'_j x_j (+ D x_i, * silu(z_i)),
   one program per (head and head_dim block, row tile, chunk), skipping tiles above the diagonal.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import dot_precision, mm, prepare_dt
from .config import cb_config, pow2, scan_config, state_config
from .layout import ChunkTable

__all__ = ["ForwardResult", "dt_limit_flags", "ssd_forward"]


@triton.jit
def _state_fwd_kernel(
    x_ptr, dt_ptr, a_ptr, b_ptr, bias_ptr, h0_ptr, states_ptr, final_ptr, s_ptr, dtp_ptr,
    seq_start_ptr, seq_chunk_ptr,
    stride_x_t, stride_x_h, stride_dt_t, stride_dt_h, stride_b_t, stride_b_g,
    ntokens, nheads, headdim, dstate, heads_per_group, dt_lo, dt_hi,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
    HAS_H0: tl.constexpr, PREC: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)  # head * stride_x_h passes 2^31 for head-major x of 1M tokens
    pid_p = tl.program_id(2)
    group = head // heads_per_group
    t_begin = tl.load(seq_start_ptr + seq)
    t_end = tl.load(seq_start_ptr + seq + 1)
    chunk0 = tl.load(seq_chunk_ptr + seq)

    offs_t = tl.arange(0, BLOCK_T)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    tile = offs_p[:, None] * dstate + offs_n[None, :]
    mask_tile = mask_p[:, None] & mask_n[None, :]
    state_size = headdim * dstate

    a = tl.load(a_ptr + head).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + head).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + (seq * nheads + head).to(tl.int64) * state_size + tile, mask=mask_tile,
                    other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)

    steps_per_chunk: tl.constexpr = CHUNK // BLOCK_T
    carry = tl.zeros((), dtype=tl.float32)
    nsteps = tl.cdiv(t_end - t_begin, BLOCK_T)
    for step in range(0, nsteps):
        t0 = (t_begin + step * BLOCK_T).to(tl.int64)
        mask_t = offs_t < t_end - t0
        if step % steps_per_chunk == 0:
            chunk = (chunk0 + step // steps_per_chunk).to(tl.int64)
            tl.store(states_ptr + (chunk * nheads + head) * state_size + tile,
                     h.to(states_ptr.dtype.element_ty), mask=mask_tile)
        carry = tl.where(step % steps_per_chunk == 0, 0.0, carry)
        dt = tl.load(dt_ptr + t0 * stride_dt_t + head * stride_dt_h + offs_t * stride_dt_t, mask=mask_t,
                     other=0.0).to(tl.float32)
        dt = prepare_dt(dt, bias, dt_lo, dt_hi, SOFTPLUS, HAS_LO, HAS_HI)
        dt = tl.where(mask_t, dt, 0.0)
        da = dt * a
        cs = tl.cumsum(da, 0)
        total = tl.sum(da, 0)
        row = head.to(tl.int64) * ntokens + t0
        if pid_p == 0:
            tl.store(s_ptr + row + offs_t, carry + cs, mask=mask_t)
            tl.store(dtp_ptr + row + offs_t, dt, mask=mask_t)
        carry += total

        x_base = x_ptr + t0 * stride_x_t + head * stride_x_h
        b_base = b_ptr + t0 * stride_b_t + group * stride_b_g
        xt = tl.load(x_base + offs_t[:, None] * stride_x_t + offs_p[None, :],
                     mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        bt = tl.load(b_base + offs_t[:, None] * stride_b_t + offs_n[None, :],
                     mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        w = tl.exp(total - cs) * dt
        xw = (xt.to(tl.float32) * w[:, None]).to(bt.dtype)
        h = h * tl.exp(total) + mm(tl.trans(xw), bt, PREC)

    tl.store(final_ptr + (seq * nheads + head).to(tl.int64) * state_size + tile, h, mask=mask_tile)


@triton.jit
def _cb_kernel(
    b_ptr, c_ptr, cb_ptr, chunk_start_ptr, chunk_len_ptr,
    stride_b_t, stride_b_g, stride_c_t, stride_c_g, ngroups, dstate,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    tiles_k: tl.constexpr = CHUNK // BLOCK_K
    pid_m = tl.program_id(0) // tiles_k
    pid_k = tl.program_id(0) % tiles_k
    group = tl.program_id(1).to(tl.int64)
    chunk = tl.program_id(2)
    c0 = tl.load(chunk_start_ptr + chunk).to(tl.int64)
    clen = tl.load(chunk_len_ptr + chunk)
    if (pid_k * BLOCK_K <= pid_m * BLOCK_M + BLOCK_M - 1) & (pid_m * BLOCK_M < clen):
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_m = offs_m < clen
        mask_k = offs_k < clen
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
def _scan_fwd_kernel(
    x_ptr, c_ptr, cb_ptr, states_ptr, s_ptr, dtp_ptr, d_ptr, z_ptr, y_ptr, ypre_ptr,
    chunk_start_ptr, chunk_len_ptr,
    stride_x_t, stride_x_h, stride_c_t, stride_c_g, stride_z_t, stride_z_h, stride_y_t, stride_y_h,
    ntokens, nheads, headdim, dstate, ngroups, heads_per_group,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, HAS_Z: tl.constexpr,
    PREC: tl.constexpr,
):
    blocks_p = tl.cdiv(headdim, BLOCK_P)
    head = (tl.program_id(0) // blocks_p).to(tl.int64)
    pid_p = tl.program_id(0) % blocks_p
    pid_m = tl.program_id(1)
    chunk = tl.program_id(2).to(tl.int64)
    group = head // heads_per_group
    c0 = tl.load(chunk_start_ptr + chunk).to(tl.int64)
    clen = tl.load(chunk_len_ptr + chunk)
    if pid_m * BLOCK_M < clen:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_m = offs_m < clen
        mask_p = offs_p < headdim
        row = head.to(tl.int64) * ntokens + c0
        s_m = tl.load(s_ptr + row + offs_m, mask=mask_m, other=0.0)
        x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
        c_base = c_ptr + c0 * stride_c_t + group * stride_c_g

        # contribution of the state entering the chunk: exp(s_i) C_i h^T
        acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        state_base = states_ptr + (chunk * nheads + head) * headdim * dstate
        for n0 in range(0, dstate, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < dstate
            c = tl.load(c_base + offs_m[:, None] * stride_c_t + offs_n[None, :],
                        mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            h_t = tl.load(state_base + offs_p[None, :] * dstate + offs_n[:, None],
                          mask=mask_n[:, None] & mask_p[None, :], other=0.0)
            acc += mm(c, h_t.to(c.dtype), PREC)
        acc = acc * tl.exp(s_m)[:, None]

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
            w = cb * tl.exp(tl.minimum(s_m[:, None] - s_k[None, :], 0.0)) * dt_k[None, :]
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
            tl.store(ypre_ptr + c0 * stride_y_t + head * stride_y_h + offs_m[:, None] * stride_y_t + offs_p[None, :],
                     acc.to(ypre_ptr.dtype.element_ty), mask=mask)
            zt = tl.load(z_ptr + c0 * stride_z_t + head * stride_z_h + offs_m[:, None] * stride_z_t + offs_p[None, :],
                         mask=mask, other=0.0).to(tl.float32)
            acc = acc * zt * tl.sigmoid(zt)
        tl.store(y_ptr + c0 * stride_y_t + head * stride_y_h + offs_m[:, None] * stride_y_t + offs_p[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=mask)


class ForwardResult(NamedTuple):
    """Outputs of `ssd_forward` (tokens flattened: T = batch * seqlen).

    y (T, nheads, headdim) x.dtype; y_pre: y before the silu(z) gate (same shape; None without z);
    final_states (nseqs, nheads, headdim, dstate) float32; states (nchunks, nheads, headdim, dstate): the state
    entering each chunk, in the dot dtype; cb (nchunks, ngroups, chunk, chunk) float32: C B^T per chunk;
    s, dtp (nheads, T) float32: within-chunk cumulative log-decay and the transformed step.
    """

    y: Tensor
    y_pre: Optional[Tensor]
    final_states: Tensor
    states: Tensor
    cb: Tensor
    s: Tensor
    dtp: Tensor


def dt_limit_flags(dt_limit: tuple[float, float]) -> tuple[bool, bool, float, float]:
    """(has_lo, has_hi, lo, hi) for the kernels: a bound of -inf / inf is no bound."""
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    return lo != float("-inf"), hi != float("inf"), (lo if lo != float("-inf") else 0.0), \
        (hi if hi != float("inf") else 0.0)


def ssd_forward(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, table: ChunkTable, *,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
    dt_limit: tuple[float, float], initial_states: Optional[Tensor],
) -> ForwardResult:
    """Runs the three forward kernels on flattened inputs.

    x, z (T, nheads, headdim); dt (T, nheads); B, C (T, ngroups, dstate), all with a unit last stride and B, C
    in x.dtype; A, dt_bias (nheads,); D (nheads,) or (nheads, headdim); initial_states (nseqs, nheads, headdim,
    dstate) or None.
    """
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    per_group = nheads // ngroups
    fp32 = x.dtype == torch.float32
    prec = dot_precision(fp32)
    dev = x.device
    has_lo, has_hi, lo, hi = dt_limit_flags(dt_limit)

    states = torch.empty(table.nchunks, nheads, headdim, dstate, device=dev, dtype=x.dtype)
    final = torch.empty(table.nseqs, nheads, headdim, dstate, device=dev, dtype=torch.float32)
    s = torch.empty(nheads, ntokens, device=dev, dtype=torch.float32)
    dtp = torch.empty_like(s)
    h0 = initial_states.contiguous() if initial_states is not None else None
    cfg = state_config(headdim, dstate, chunk)
    grid = (table.nseqs, nheads, triton.cdiv(headdim, cfg.block_p))
    _state_fwd_kernel[grid](
        x, dt, A, B, dt_bias, h0, states, final, s, dtp, table.seq_start, table.seq_chunk,
        x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1),
        ntokens, nheads, headdim, dstate, per_group, lo, hi,
        CHUNK=chunk, BLOCK_T=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_N=pow2(dstate),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LO=has_lo, HAS_HI=has_hi,
        HAS_H0=h0 is not None, PREC=prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    cb = torch.empty(table.nchunks, ngroups, chunk, chunk, device=dev, dtype=torch.float32)
    cfg = cb_config(dstate, chunk)
    grid = ((chunk // cfg.block_m) * (chunk // cfg.block_k), ngroups, table.nchunks)
    _cb_kernel[grid](
        B, C, cb, table.chunk_start, table.chunk_len, B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        ngroups, dstate, CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, PREC=prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    y = torch.empty(ntokens, nheads, headdim, device=dev, dtype=x.dtype)
    y_pre = torch.empty_like(y) if z is not None else None
    cfg = scan_config(headdim, dstate, chunk)
    grid = (nheads * triton.cdiv(headdim, cfg.block_p), chunk // cfg.block_m, table.nchunks)
    _scan_fwd_kernel[grid](
        x, C, cb, states, s, dtp, D, z, y, y_pre, table.chunk_start, table.chunk_len,
        x.stride(0), x.stride(1), C.stride(0), C.stride(1),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0, y.stride(0), y.stride(1),
        ntokens, nheads, headdim, dstate, ngroups, per_group,
        CHUNK=chunk, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n,
        HAS_D=D is not None, D_HAS_HDIM=D is not None and D.dim() == 2, HAS_Z=z is not None, PREC=prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return ForwardResult(y, y_pre, final, states, cb, s, dtp)
