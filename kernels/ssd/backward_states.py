"""Backward SSD kernels that walk sequences or token rows: the gate, the state gradients, and the step size.

- `gate_bwd_kernel`: with z, dy = dout * silu(z) and dz = dout * y_pre * silu'(z).
- `state_bwd_kernel`: one program per (sequence, head, head_dim x d_state block) walks the sequence backwards carrying
  dh = dL/dh (float32 in registers): dh <- exp(sum of log-decays) dh + sum_t exp(s_t) dy_t C_t^T. It stores dh at
  every chunk end (dstates, (nchunks, nheads, headdim, dstate)), returns dL/d(initial state), and adds
  exp(s_last) <dh_end, h_in> (the path of the chunk's entering state to its end) to the gradient of the chunk's
  last cumulative log-decay, with h_in loaded an iteration ahead.
- `dt_bwd_kernel`: per (chunk, block of heads), turns the gradients with respect to the cumulative log-decay s
  (ds: exp(s_t) factors of outputs; dsend: exp(s_last - s_j) factors of the chunk-end state) and to dt' as a
  multiplier into dL/d dt (through the cumulative sums, softplus and clamp), dL/dA and dL/d dt_bias. Every term is
  summed where it arises (no difference of large sums), which keeps the bf16 gradients of dt accurate at chunk 256.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (dt_head_rows, exp_ftz, known_multiple, mm, prepare_dt_grad, raw_dt_rows, state_tile, step_factors,
                     step_log_decays, tile_heads)

__all__ = ["gate_bwd_kernel", "state_bwd_kernel", "dt_bwd_kernel"]


@triton.jit
def gate_bwd_kernel(
    dout_ptr, z_ptr, ypre_ptr, dy_ptr, dz_ptr, ntokens, headdim,
    stride_o_t, stride_o_h, stride_z_t, stride_z_h, stride_y_t, stride_y_h,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
):
    head = tl.program_id(1).to(tl.int64)  # times a head stride: may pass 2^31
    tok = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (tok < ntokens)[:, None] & (offs_p < headdim)[None, :]
    dout = tl.load(dout_ptr + tok[:, None] * stride_o_t + head * stride_o_h + offs_p[None, :], mask=mask,
                   other=0.0).to(tl.float32)
    z = tl.load(z_ptr + tok[:, None] * stride_z_t + head * stride_z_h + offs_p[None, :], mask=mask,
                other=0.0).to(tl.float32)
    ypre = tl.load(ypre_ptr + tok[:, None] * stride_y_t + head * stride_y_h + offs_p[None, :], mask=mask,
                   other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    out = tok[:, None] * stride_y_t + head * stride_y_h + offs_p[None, :]
    tl.store(dy_ptr + out, (dout * z * sig).to(dy_ptr.dtype.element_ty), mask=mask)
    tl.store(dz_ptr + out, (dout * ypre * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _last_token(rows, t_begin, t_end, local, CHUNK: tl.constexpr):
    """Index in the (nheads, ntokens) arrays of the last token of a sequence's chunk number `local`, for the head(s)
    at `rows` (common.tile_heads)."""
    return rows + tl.minimum(t_begin + (local + 1) * CHUNK, t_end) - 1


@triton.jit
def _chunk_entry(states_ptr, s_ptr, chunk0, local, head, rows, nheads, t_begin, t_end, state_size, tile,
                 mask_tile, CHUNK: tl.constexpr):
    """The (forward) state entering a sequence's chunk number `local`, and s at the chunk's last token."""
    h_in = tl.load(states_ptr + ((chunk0 + local).to(tl.int64) * nheads + head) * state_size + tile, mask=mask_tile,
                   other=0.0)
    return h_in, tl.load(s_ptr + _last_token(rows, t_begin, t_end, local, CHUNK))


@triton.jit
def _chunk_end(dh, h_in, s_end, dstates_ptr, ds_ptr, chunk0, local, head, rows, nheads, t_begin, t_end,
               state_size, tile, mask_tile, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, HEADS: tl.constexpr):
    """At the end of a sequence's chunk number `local`, whose end gradient is dh: stores dh, and adds to ds at the
    chunk's last token the log-decay term of the chunk's entering state h_in, which reaches the chunk's end decayed
    by exp(s_end): <dh, exp(s_end) h_in>, per head."""
    tl.store(dstates_ptr + ((chunk0 + local).to(tl.int64) * nheads + head) * state_size + tile,
             dh.to(dstates_ptr.dtype.element_ty), mask=mask_tile)
    per_row = tl.sum(dh * h_in.to(tl.float32), 1)
    if HEADS == 1:
        dot = tl.sum(per_row, 0)
    else:
        dot = tl.sum(tl.reshape(per_row, (2, BLOCK_P // 2)), 1)
    tl.atomic_add(ds_ptr + _last_token(rows, t_begin, t_end, local, CHUNK), exp_ftz(s_end) * dot, sem="relaxed")


@triton.jit
def state_bwd_kernel(
    dy_ptr, c_ptr, s_ptr, states_ptr, dfinal_ptr, dstates_ptr, dh0_ptr, ds_ptr,
    seq_start_ptr, seq_chunk_ptr,
    stride_dy_t, stride_dy_h, stride_c_t, stride_c_g,
    ntokens, nheads, headdim, dstate, heads_per_group, dy_desc, c_desc,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HEADS: tl.constexpr, HAS_DFINAL: tl.constexpr, ALIGNED: tl.constexpr, SCALE_B: tl.constexpr, TMA: tl.constexpr,
    PREC: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64) * HEADS
    group = head // heads_per_group
    t_begin = known_multiple(tl.load(seq_start_ptr + seq), ALIGNED)
    t_end = known_multiple(tl.load(seq_start_ptr + seq + 1), ALIGNED)
    chunk0 = tl.load(seq_chunk_ptr + seq)

    offs_t = tl.arange(0, BLOCK_T)
    offs_p, mask_p, offs_n, mask_n, tile, mask_tile = state_tile(headdim * HEADS, dstate, BLOCK_P, BLOCK_N)
    cols, rows = tile_heads(head, offs_p, ntokens, stride_dy_h, HEADS, BLOCK_P)
    state_size = headdim * dstate
    if TMA:  # the tile's first head_dim and d_state columns, for its descriptor boxes (as state_tile has them)
        p_start = tl.program_id(2) // tl.cdiv(dstate, BLOCK_N) * BLOCK_P
        n_start = tl.program_id(2) % tl.cdiv(dstate, BLOCK_N) * BLOCK_N
    seq_state = (seq * nheads + head).to(tl.int64) * state_size

    if HAS_DFINAL:
        dh = tl.load(dfinal_ptr + seq_state + tile, mask=mask_tile, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)

    steps_per_chunk: tl.constexpr = CHUNK // BLOCK_T
    nsteps = tl.cdiv(t_end - t_begin, BLOCK_T)
    # the walk (never empty: cu_seqlens has no empty sequences, segments have chunks) starts at the end of its last
    # chunk; every other chunk end comes after a step (the first step of the chunk after it), whose entering state
    # and last s are loaded one iteration earlier (loaded at the chunk end, the walk waited for them: H200, 8 x 8192,
    # 0.347 -> 0.314 ms at 64 x 64, 2.757 -> 2.476 at 128 x 256)
    last_local = (nsteps - 1) // steps_per_chunk
    h_in, s_end = _chunk_entry(states_ptr, s_ptr, chunk0, last_local, head, rows, nheads, t_begin, t_end,
                               state_size, tile, mask_tile, CHUNK)
    _chunk_end(dh, h_in, s_end, dstates_ptr, ds_ptr, chunk0, last_local, head, rows, nheads, t_begin, t_end,
               state_size, tile, mask_tile, CHUNK, BLOCK_P, HEADS)
    h_in, s_end = _chunk_entry(states_ptr, s_ptr, chunk0, tl.maximum(last_local - 1, 0), head, rows, nheads,
                               t_begin, t_end, state_size, tile, mask_tile, CHUNK)
    # each step's log-decays are differences of the forward's within-chunk s (to s before the step, 0 at a chunk's
    # start), loaded an iteration ahead: a cumulative sum and a sum over the step's tokens cost CTA barriers every step
    s_t, s_before, s_last = step_log_decays(s_ptr, rows, t_begin, t_end, nsteps - 1, offs_t, BLOCK_T,
                                            steps_per_chunk, HEADS)
    for i in range(0, nsteps):
        step = nsteps - 1 - i
        local = step // steps_per_chunk
        h_next, s_next = _chunk_entry(states_ptr, s_ptr, chunk0, tl.maximum((step - 1) // steps_per_chunk - 1, 0),
                                      head, rows, nheads, t_begin, t_end, state_size, tile, mask_tile, CHUNK)
        t0 = (t_begin + step * BLOCK_T).to(tl.int64)
        mask_t = offs_t < t_end - t0
        s_t_next, s_before_next, s_last_next = step_log_decays(
            s_ptr, rows, t_begin, t_end, tl.maximum(step - 1, 0), offs_t, BLOCK_T, steps_per_chunk, HEADS)
        if TMA:  # rows past the sequence's end are the next one's: zeroed in its last step, as masked loads leave them
            # (zeroed in every step: 8 -> 16-24 bytes of spills at 128 x 128 tiles, triton 3.6)
            dyt = dy_desc.load([t0.to(tl.int32), (head * headdim + p_start).to(tl.int32)])
            ct = c_desc.load([t0.to(tl.int32), (group * dstate + n_start).to(tl.int32)])
            if t_end - t0 < BLOCK_T:
                dyt = tl.where(mask_t[:, None], dyt, tl.zeros_like(dyt))
                ct = tl.where(mask_t[:, None], ct, tl.zeros_like(ct))
        else:
            dy_base = dy_ptr + t0 * stride_dy_t + head * stride_dy_h
            c_base = c_ptr + t0 * stride_c_t + group * stride_c_g
            dyt = tl.load(dy_base + offs_t[:, None] * stride_dy_t + cols[None, :],
                          mask=mask_t[:, None] & mask_p[None, :], other=0.0)
            ct = tl.load(c_base + offs_t[:, None] * stride_c_t + offs_n[None, :],
                         mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        w, decay = step_factors(exp_ftz(s_t - s_before), exp_ftz(s_last - s_before), mask_t, BLOCK_P, HEADS)
        if SCALE_B:  # C^T diag(w) dy with w on the C tile: the dy tile goes to the product as loaded
            dh = dh * decay + mm(tl.trans(dyt), (ct.to(tl.float32) * w).to(ct.dtype), PREC)
        else:
            dh = dh * decay + mm(tl.trans((dyt.to(tl.float32) * w).to(ct.dtype)), ct, PREC)
        if (step % steps_per_chunk == 0) & (local > 0):
            _chunk_end(dh, h_in, s_end, dstates_ptr, ds_ptr, chunk0, local - 1, head, rows, nheads, t_begin,
                       t_end, state_size, tile, mask_tile, CHUNK, BLOCK_P, HEADS)
        h_in, s_end = h_next, s_next
        s_t, s_before, s_last = s_t_next, s_before_next, s_last_next

    if dh0_ptr is not None:
        tl.store(dh0_ptr + seq_state + tile, dh, mask=mask_tile)


@triton.jit
def dt_bwd_kernel(
    dt_ptr, a_ptr, bias_ptr, dtp_ptr, ds_ptr, dsend_ptr, ddtp_ptr, ddt_ptr, da_ptr, dbias_ptr,
    chunk_start_ptr, chunk_len_ptr, stride_dt_t, stride_dt_h, stride_ddt_t, stride_ddt_h, ntokens, nheads, dt_lo, dt_hi,
    BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, ALIGNED: tl.constexpr,
):
    """One program per (chunk, block of BLOCK_H heads): the (heads, tokens) tiles of the (nheads, ntokens) arrays
    and of the (tokens, heads) raw steps and their gradient are each read or written whole, so the strided
    2-byte steps of the token-major dt travel as rows of BLOCK_H heads instead of one element per 32-byte sector."""
    heads, mask_h, c0, offs, mask, rows = dt_head_rows(chunk_start_ptr, chunk_len_ptr, ntokens, nheads, BLOCK, BLOCK_H,
                                                       ALIGNED)
    ds = tl.load(ds_ptr + rows, mask=mask, other=0.0)
    # dL/da_k for the log-decay a_k = dt'_k A: every s_t with t >= k in the chunk contains a_k, and the decay
    # from token j to the chunk end contains a_k for every j < k
    send = tl.load(dsend_ptr + rows, mask=mask, other=0.0)
    dlog = tl.sum(ds, 1)[:, None] - tl.cumsum(ds, 1) + ds + tl.cumsum(send, 1) - send
    dtp = tl.load(dtp_ptr + rows, mask=mask, other=0.0)
    a = tl.load(a_ptr + heads, mask=mask_h, other=0.0).to(tl.float32)
    grad = tl.load(ddtp_ptr + rows, mask=mask, other=0.0) + a[:, None] * dlog
    tl.atomic_add(da_ptr + heads, tl.sum(tl.where(mask, dtp * dlog, 0.0), 1), mask=mask_h, sem="relaxed")
    raw, bias = raw_dt_rows(dt_ptr, bias_ptr, stride_dt_t, stride_dt_h, heads, mask_h, c0, offs, mask, BLOCK_H,
                            HAS_BIAS)
    grad = tl.where(mask, prepare_dt_grad(raw, bias[:, None], grad, dt_lo, dt_hi, SOFTPLUS, HAS_LO, HAS_HI), 0.0)
    tl.store(ddt_ptr + (c0 + offs[None, :]) * stride_ddt_t + heads[:, None] * stride_ddt_h,
             grad.to(ddt_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + heads, tl.sum(grad, 1), mask=mask_h, sem="relaxed")
