"""Forward SSD kernels: the state pass and the chunk output.

Three launches (see benchmarks/NOTES-ssd.md for why this split):
1. `_decay_fwd_kernel`, one program per (chunk, block of heads): applies the step-size transform and writes dt' and
   the within-chunk cumulative log-decay s (both float32, (nheads, ntokens)).
2. `_state_fwd_kernel`, one program per (sequence, head, head_dim x d_state block): walks the sequence in token tiles,
   with each tile's s and dt' loaded a tile ahead, and carries the state h (float32 in registers), storing it at
   every chunk start (states, (nchunks, nheads, headdim, dstate), in the dot dtype; without a backward to come,
   only at the chunks where the output walks start, STORE_EVERY) and once at the end (final states, float32).
   The state pass is fused in: chunk states never go to memory on their own.
3. `_scan_fwd_kernel`, one program per (head and head_dim block, chunk): walks the chunk in token tiles from
   the state entering it, y_i = exp(s_i - s_prev) C_i h + sum_{j in tile, j<=i} (C_i . B_j) exp(s_i - s_j)
   dt'_j x_j (+ D x_i, * silu(z_i)), then h <- exp(s_last - s_prev) h + sum_j exp(s_last - s_j) dt'_j x_j B_j^T.
   Each x, B, C tile is read once per head, and C B^T is formed only for the tile on the diagonal.
   Where the state tile would not fit the registers (config.py), tiles.py's kernel per row tile runs instead,
   on C B^T from its `_cb_kernel` (launched on a second stream, streams.py, alongside the state pass); for
   bf16 / fp16 on Hopper, forward_wgmma.py's Gluon version of this walk, whose products overlap.
Where one walk per sequence, head and head_dim block fills the GPU (config.whole_walks) and there are no initial
states, step 2 does not run: the walks cover whole sequences from zero and store the chunk states (for a backward)
and the final states themselves, since they compute every chunk's state on their way anyway. There, on Hopper, a
d_state too wide for the Gluon walk's one-warpgroup state tile (256) walks in two warpgroups, one program per SM
(config.scan_one_per_sm_config), with the within-chunk term from the whole C B^T, read from `_cb_kernel`'s table.
Where the whole walks would be somewhat fewer than the SMs, the Gluon walk runs them anyway in that config: in two
warpgroups where each then has 64 head_dim columns, else one.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import (dot_precision, dt_head_rows, exp_ftz, head_chunk_program, known_multiple, mm, prepare_dt,
                     raw_dt_rows, state_tile, step_factors, step_log_decays, step_tokens, tile_heads)
from .config import (ONE_PER_SM_FILL, KernelConfig, dt_head_block, overlap, pow2, scan_config,
                     scan_one_per_sm_config, state_config, walk_reads_cb, whole_walks)
from .layout import ChunkTable, WalkTable
from .segments import carry_forward, chunk_walks, sm_count, state_walk
from .streams import Fork
from .tiles import cb_table_dtype, chunk_cb, scan_tiles

try:
    from .forward_wgmma import MIN_BLOCK_P, scan_fwd_wgmma
    from .wgmma import wgmma_supported
except ImportError:  # a Triton without Gluon's Hopper API (before 3.5): the Triton walk everywhere
    scan_fwd_wgmma = None

__all__ = ["ForwardResult", "dt_limit_flags", "ssd_forward"]


@triton.jit
def _decay_fwd_kernel(
    dt_ptr, a_ptr, bias_ptr, s_ptr, dtp_ptr, chunk_start_ptr, chunk_len_ptr, stride_dt_t, stride_dt_h, ntokens,
    nheads, dt_lo, dt_hi,
    BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, ALIGNED: tl.constexpr,
):
    """One program per (chunk, block of BLOCK_H heads): dt' from the raw steps (token-major, read as rows of
    BLOCK_H heads) and s, the cumulative log-decay within the chunk, both written to (nheads, ntokens) arrays."""
    heads, mask_h, c0, offs, mask, rows = dt_head_rows(chunk_start_ptr, chunk_len_ptr, ntokens, nheads, BLOCK, BLOCK_H,
                                                       ALIGNED)
    raw, bias = raw_dt_rows(dt_ptr, bias_ptr, stride_dt_t, stride_dt_h, heads, mask_h, c0, offs, mask, BLOCK_H,
                            HAS_BIAS)
    dt = tl.where(mask, prepare_dt(raw, bias[:, None], dt_lo, dt_hi, SOFTPLUS, HAS_LO, HAS_HI), 0.0)
    # the chunk kernels take exp(min(s_t - s_j, 0)) for t >= j, exact while no step grows the state: a step that
    # would (dt' A > 0) makes its log-decay NaN, so the head's outputs are NaN rather than silently wrong
    da = dt * tl.load(a_ptr + heads, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    da = tl.where(da > 0.0, float("nan"), da)
    tl.store(s_ptr + rows, tl.cumsum(da, 1), mask=mask)
    tl.store(dtp_ptr + rows, dt, mask=mask)


@triton.jit
def _step_vectors(s_ptr, dtp_ptr, rows, t_begin, t_end, step, offs_t, BLOCK_T: tl.constexpr,
                  STEPS_PER_CHUNK: tl.constexpr, HEADS: tl.constexpr):
    """`step_log_decays`'s s at a step's tokens, with dt' there (0 past the sequence's end; same shape), s before
    the step and s at its last token."""
    s_t, s_before, s_last = step_log_decays(s_ptr, rows, t_begin, t_end, step, offs_t, BLOCK_T, STEPS_PER_CHUNK,
                                            HEADS)
    t0 = (t_begin + step * BLOCK_T).to(tl.int64)
    return s_t, step_tokens(dtp_ptr, rows + t0, offs_t, t_end - t0, HEADS), s_before, s_last


@triton.jit
def _state_fwd_kernel(
    x_ptr, b_ptr, h0_ptr, states_ptr, final_ptr, s_ptr, dtp_ptr, seq_start_ptr, seq_chunk_ptr,
    stride_x_t, stride_x_h, stride_b_t, stride_b_g, ntokens, nheads, headdim, dstate, heads_per_group,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HEADS: tl.constexpr, HAS_H0: tl.constexpr, ALIGNED: tl.constexpr, SCALE_B: tl.constexpr, STORE_EVERY: tl.constexpr,
    PREC: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64) * HEADS  # head * stride_x_h passes 2^31 for head-major x of 1M tokens
    group = head // heads_per_group
    t_begin = known_multiple(tl.load(seq_start_ptr + seq), ALIGNED)
    t_end = known_multiple(tl.load(seq_start_ptr + seq + 1), ALIGNED)
    chunk0 = tl.load(seq_chunk_ptr + seq)

    offs_t = tl.arange(0, BLOCK_T)
    # with two heads per tile, their states are consecutive rows of the (.., nheads, headdim, dstate) arrays
    offs_p, mask_p, offs_n, mask_n, tile, mask_tile = state_tile(headdim * HEADS, dstate, BLOCK_P, BLOCK_N)
    cols, rows = tile_heads(head, offs_p, ntokens, stride_x_h, HEADS, BLOCK_P)
    state_size = headdim * dstate

    if HAS_H0:
        h = tl.load(h0_ptr + (seq * nheads + head).to(tl.int64) * state_size + tile, mask=mask_tile,
                    other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)

    steps_per_chunk: tl.constexpr = CHUNK // BLOCK_T
    nsteps = tl.cdiv(t_end - t_begin, BLOCK_T)
    # each step's s and dt' (from _decay_fwd_kernel) are loaded an iteration ahead, so that the step's decays do not
    # start with a wait
    s_t, dt_t, s_before, s_last = _step_vectors(s_ptr, dtp_ptr, rows, t_begin, t_end, 0, offs_t, BLOCK_T,
                                                steps_per_chunk, HEADS)
    for step in range(0, nsteps):
        t0 = (t_begin + step * BLOCK_T).to(tl.int64)
        mask_t = offs_t < t_end - t0
        if step % (steps_per_chunk * STORE_EVERY) == 0:
            chunk = (chunk0 + step // steps_per_chunk).to(tl.int64)
            tl.store(states_ptr + (chunk * nheads + head) * state_size + tile,
                     h.to(states_ptr.dtype.element_ty), mask=mask_tile)
        s_t_next, dt_t_next, s_before_next, s_last_next = _step_vectors(
            s_ptr, dtp_ptr, rows, t_begin, t_end, tl.minimum(step + 1, nsteps - 1), offs_t, BLOCK_T,
            steps_per_chunk, HEADS)
        x_base = x_ptr + t0 * stride_x_t + head * stride_x_h
        b_base = b_ptr + t0 * stride_b_t + group * stride_b_g
        xt = tl.load(x_base + offs_t[:, None] * stride_x_t + cols[None, :],
                     mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        bt = tl.load(b_base + offs_t[:, None] * stride_b_t + offs_n[None, :],
                     mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        w, decay = step_factors(exp_ftz(s_last - s_t) * dt_t, exp_ftz(s_last - s_before), mask_t, BLOCK_P, HEADS)
        if SCALE_B:  # B^T diag(w) x with w on the B tile: the x tile goes to the product as loaded
            h = h * decay + mm(tl.trans(xt), (bt.to(tl.float32) * w).to(bt.dtype), PREC)
        else:
            h = h * decay + mm(tl.trans((xt.to(tl.float32) * w).to(bt.dtype)), bt, PREC)
        s_t, dt_t, s_before, s_last = s_t_next, dt_t_next, s_before_next, s_last_next

    tl.store(final_ptr + (seq * nheads + head).to(tl.int64) * state_size + tile, h, mask=mask_tile)


@triton.jit
def _scan_fwd_kernel(
    x_ptr, b_ptr, c_ptr, cb_ptr, states_ptr, final_ptr, s_ptr, dtp_ptr, d_ptr, z_ptr, y_ptr, ypre_ptr,
    walk_chunk_ptr, walk_start_ptr, walk_len_ptr,
    stride_x_t, stride_x_h, stride_b_t, stride_b_g, stride_c_t, stride_c_g, stride_z_t, stride_z_h,
    stride_y_t, stride_y_h, ntokens, nheads, headdim, dstate, ngroups, heads_per_group, chunk_size,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, STEPS_PER_CHUNK: tl.constexpr,
    WHOLE: tl.constexpr, STORE_STATES: tl.constexpr, CB_TABLE: tl.constexpr,
    HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr, HAS_Z: tl.constexpr, ALIGNED: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (head and head_dim block, walk of layout.WalkTable): from the state entering the walk's first
    chunk, through its chunks in BLOCK_T-token steps (STEPS_PER_CHUNK to a chunk), carrying h in float32 from one
    chunk into the next; s, the log-decay, restarts from 0 at each chunk. WHOLE: walk w is all of sequence w, which
    starts from zero (no initial states) instead of a stored chunk state, and ends by storing its final state into
    final_ptr (unless None); STORE_STATES: it stores the state entering each of its chunks into states_ptr.
    CB_TABLE: the within-chunk term's C B^T is read from the per-chunk table at cb_ptr (tiles.chunk_cb, (nchunks,
    ngroups, chunk_size, chunk_size)) instead of formed from the step's C and B tiles."""
    head, group, offs_p, mask_p, walk, c0, clen = head_chunk_program(walk_start_ptr, walk_len_ptr, headdim,
                                                                      heads_per_group, BLOCK_P, 1, ALIGNED)
    chunk = tl.load(walk_chunk_ptr + walk).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    row = head * ntokens + c0
    x_base = x_ptr + c0 * stride_x_t + head * stride_x_h
    b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
    c_base = c_ptr + c0 * stride_c_t + group * stride_c_g
    y_off = c0 * stride_y_t + head * stride_y_h

    # h^T (d_state x head_dim block): the state after the tokens walked so far, decayed to the last of them
    h_tile = offs_p[None, :] * dstate + offs_n[:, None]
    h_mask = mask_n[:, None] & mask_p[None, :]
    if WHOLE:
        h = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        if STORE_STATES:
            tl.store(states_ptr + (chunk * nheads + head) * headdim * dstate + h_tile,
                     h.to(states_ptr.dtype.element_ty), mask=h_mask)
    else:
        h = tl.load(states_ptr + (chunk * nheads + head) * headdim * dstate + h_tile, mask=h_mask,
                    other=0.0).to(tl.float32)
    s_prev = tl.zeros((), dtype=tl.float32)
    for t0 in range(0, clen, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < clen
        s_t = tl.load(s_ptr + row + offs_t, mask=mask_t, other=0.0)
        dt_t = tl.load(dtp_ptr + row + offs_t, mask=mask_t, other=0.0)
        s_last = tl.load(s_ptr + row + tl.minimum(t0 + BLOCK_T, clen) - 1)
        c = tl.load(c_base + offs_t[:, None] * stride_c_t + offs_n[None, :],
                    mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        b = tl.load(b_base + offs_t[:, None] * stride_b_t + offs_n[None, :],
                    mask=mask_t[:, None] & mask_n[None, :], other=0.0)
        mask = mask_t[:, None] & mask_p[None, :]
        xt = tl.load(x_base + offs_t[:, None] * stride_x_t + offs_p[None, :], mask=mask, other=0.0)

        decay_in = tl.where(mask_t, exp_ftz(s_t - s_prev), 0.0)
        acc = mm(c, h.to(c.dtype), PREC) * decay_in[:, None]
        if CB_TABLE:  # the step's diagonal tile of its chunk's C B^T (chunk k of the walk, rows r of that chunk)
            k = t0 // BLOCK_T // STEPS_PER_CHUNK
            r = offs_t - k * chunk_size
            inside = r < tl.minimum(chunk_size, clen - k * chunk_size)
            cb = tl.load(cb_ptr + ((chunk + k) * ngroups + group) * chunk_size * chunk_size
                         + r[:, None] * chunk_size + r[None, :], mask=inside[:, None] & inside[None, :],
                         other=0.0).to(tl.float32)
        else:
            cb = mm(c, tl.trans(b), PREC)
        w = cb * exp_ftz(tl.minimum(s_t[:, None] - s_t[None, :], 0.0)) * dt_t[None, :]
        w = tl.where(offs_t[None, :] <= offs_t[:, None], w, 0.0)
        acc += mm(w.to(xt.dtype), xt, PREC)

        decay_out = tl.where(mask_t, exp_ftz(s_last - s_t) * dt_t, 0.0)
        xw = (xt.to(tl.float32) * decay_out[:, None]).to(b.dtype)
        h = h * exp_ftz(s_last - s_prev) + mm(tl.trans(b), xw, PREC)
        chunk_end = (t0 // BLOCK_T + 1) % STEPS_PER_CHUNK == 0
        s_prev = tl.where(chunk_end, 0.0, s_last)
        if STORE_STATES:
            if chunk_end & (t0 + BLOCK_T < clen):
                entered = chunk + (t0 // BLOCK_T + 1) // STEPS_PER_CHUNK
                tl.store(states_ptr + (entered * nheads + head) * headdim * dstate + h_tile,
                         h.to(states_ptr.dtype.element_ty), mask=h_mask)

        tile = offs_t[:, None] * stride_y_t + offs_p[None, :]
        if HAS_D:
            if D_HAS_HDIM:
                dvec = tl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
                acc += xt.to(tl.float32) * dvec[None, :]
            else:
                acc += xt.to(tl.float32) * tl.load(d_ptr + head).to(tl.float32)
        if HAS_Z:
            if ypre_ptr is not None:
                tl.store(ypre_ptr + y_off + tile, acc.to(ypre_ptr.dtype.element_ty), mask=mask)
            zt = tl.load(z_ptr + c0 * stride_z_t + head * stride_z_h + offs_t[:, None] * stride_z_t + offs_p[None, :],
                         mask=mask, other=0.0).to(tl.float32)
            acc = acc * zt * tl.sigmoid(zt)
        tl.store(y_ptr + y_off + tile, acc.to(y_ptr.dtype.element_ty), mask=mask)
    if WHOLE:
        if final_ptr is not None:
            tl.store(final_ptr + (walk * nheads + head) * headdim * dstate + h_tile, h, mask=h_mask)


class ForwardResult(NamedTuple):
    """Outputs of `ssd_forward` (tokens flattened: T = batch * seqlen).

    y (T, nheads, headdim) x.dtype; y_pre: y before the silu(z) gate (same shape; None without z or without a
    backward to come, keep_states False);
    final_states (nseqs, nheads, headdim, dstate) float32, None where not asked for and the output walks covered
    whole sequences; states (nchunks, nheads, headdim, dstate): the state
    entering each chunk, in the dot dtype (with keep_states False, only the rows of the output walks' first
    chunks are written, and with whole-sequence walks there are no rows);
    s, dtp (nheads, T) float32: within-chunk cumulative log-decay and the transformed step; cb (nchunks, ngroups,
    chunk, chunk) in tiles.cb_table_dtype: C B^T per chunk when the tiled output kernel (tiles.py) ran or the output
    walk read it (config.walk_reads_cb), else None.
    """

    y: Tensor
    y_pre: Optional[Tensor]
    final_states: Optional[Tensor]
    states: Tensor
    s: Tensor
    dtp: Tensor
    cb: Optional[Tensor]


def dt_limit_flags(dt_limit: tuple[float, float]) -> tuple[bool, bool, float, float]:
    """(has_lo, has_hi, lo, hi) for the kernels: a bound of -inf / inf is no bound."""
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    return lo != float("-inf"), hi != float("inf"), (lo if lo != float("-inf") else 0.0), \
        (hi if hi != float("inf") else 0.0)


def ssd_forward(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, table: ChunkTable, *,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
    dt_limit: tuple[float, float], initial_states: Optional[Tensor], keep_states: bool = True,
    final_states: bool = True,
) -> ForwardResult:
    """Runs the forward kernels on flattened inputs.

    x, z (T, nheads, headdim); dt (T, nheads); B, C (T, ngroups, dstate), all with a unit last stride and B, C
    in x.dtype; A, dt_bias (nheads,); D (nheads,) or (nheads, headdim); initial_states (nseqs, nheads, headdim,
    dstate) or None. keep_states: a backward is to come: store every chunk's state and y before the gate for it;
    without it the state pass stores only the states the output walks start from (H200, 8 x 8192 tokens, walks of 4
    chunks, state pass ms: 64 x 64 0.238 -> 0.225, 64 x 128 0.376 -> 0.352, 128 x 64 0.515 -> 0.484, 128 x 128
    0.745 -> 0.677), and no y before the gate. final_states: the caller wants them; without, whole-sequence output
    walks skip their store (float32, as large as 8 chunk states per sequence at chunk 256 in 16 bits: 268 MB at
    32 x 2048 tokens, 64 heads, 128 x 256).
    """
    ntokens, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1:]
    chunk = table.chunk_size
    per_group = nheads // ngroups
    fp32 = x.dtype == torch.float32
    prec = dot_precision(fp32)
    dev = x.device
    has_lo, has_hi, lo, hi = dt_limit_flags(dt_limit)

    out_cfg, whole = _output_config(x, dstate, table, initial_states is None)
    blocks = nheads * triton.cdiv(headdim, out_cfg.block_p)
    stored = table.nchunks if keep_states or not whole else 0
    states = torch.empty(stored, nheads, headdim, dstate, device=dev, dtype=x.dtype)
    final = (torch.empty(table.nseqs, nheads, headdim, dstate, device=dev, dtype=torch.float32)
             if final_states or not whole else None)
    s = torch.empty(nheads, ntokens, device=dev, dtype=torch.float32)
    dtp = torch.empty_like(s)
    h0 = initial_states.contiguous() if initial_states is not None else None
    # the output kernel per row tile reads the chunks' C B^T, and so may the walk (config.walk_reads_cb): formed on
    # a second stream alongside the state pass, into a table allocated before the fork (streams.Fork)
    reads_cb = not out_cfg.walk or walk_reads_cb(out_cfg, chunk)
    cb = (torch.empty(table.nchunks, ngroups, chunk, chunk, device=dev, dtype=cb_table_dtype(x.dtype)) if reads_cb
          else None)
    fork = Fork(dev, overlap("forward") and cb is not None)
    block_h = dt_head_block(nheads)
    _decay_fwd_kernel[(table.nchunks, triton.cdiv(nheads, block_h))](
        dt, A, dt_bias, s, dtp, table.chunk_start, table.chunk_len, dt.stride(0), dt.stride(1), ntokens, nheads,
        lo, hi, BLOCK=pow2(chunk), BLOCK_H=block_h, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_LO=has_lo, HAS_HI=has_hi, ALIGNED=table.aligned, num_warps=8,
    )
    if whole:
        walks = table.walks(max(table.seq_nchunks))
    else:
        walks = chunk_walks(table, out_cfg, blocks, dev) if out_cfg.walk else None
        _state_pass(x, B, s, dtp, h0, states, final, table, per_group, prec,
                    walks.span if walks is not None and not keep_states else 1)
    if cb is not None:
        with fork.side():
            chunk_cb(B, C, table, prec, out=cb)
    fork.join()

    y = torch.empty(ntokens, nheads, headdim, device=dev, dtype=x.dtype)
    y_pre = torch.empty_like(y) if z is not None and keep_states else None
    if out_cfg.walk:
        _output_walks(x, B, C, cb, states, final, s, dtp, D, z, y, y_pre, walks, whole, keep_states, table,
                      out_cfg, prec)
    else:
        scan_tiles(x, C, cb, states, s, dtp, D, z, y, y_pre, table, prec)
    return ForwardResult(y, y_pre, final, states, s, dtp, cb)


def _output_config(x: Tensor, dstate: int, table: ChunkTable, from_zero: bool) -> tuple[KernelConfig, bool]:
    """The output kernel's config (config.scan_config) and whether its walks cover whole sequences
    (config.whole_walks; only for sequences that start from zero). Where those walks would be fewer than the SMs
    but at least ONE_PER_SM_FILL of them, the Gluon walk runs them anyway, one program per SM
    (config.scan_one_per_sm_config). A d_state wider than the Gluon walk's one-warpgroup tile (256) walks whole in
    that config's two warpgroups, from ONE_PER_SM_FILL of the SMs up (H200, 8 x 8192 tokens, forward /
    forward+backward ms: 128 x 256 2.50-2.57 / 10.56-10.61 -> 2.26 / 10.39-10.48, 64 x 256 1.25-1.26 / 5.79-5.99 ->
    1.19-1.20 / 5.63-5.77 against one-warpgroup walks in d_state slices of 128, since removed), else in the row
    tiles: after a state pass the walks cost more (H200, 2 x 32768 tokens, 64 x 256 forward 2.05 -> 2.40 ms in
    slices)."""
    nheads, headdim = x.shape[1:]
    chunk = table.chunk_size
    gluon = scan_fwd_wgmma is not None and wgmma_supported(x, min(chunk, 64), min(pow2(dstate), 128))

    def whole(cfg: KernelConfig, fill: float = 1.0) -> bool:
        programs = nheads * triton.cdiv(headdim, cfg.block_p) * table.nseqs
        return bool(cfg.walk) and from_zero and whole_walks(cfg, chunk, programs, sm_count(x.device), fill)

    cfg = scan_config(headdim, dstate, chunk)
    if whole(cfg):
        return cfg, True
    one_per_sm = scan_one_per_sm_config(headdim, dstate, chunk) if gluon else None
    if one_per_sm is not None and whole(one_per_sm, ONE_PER_SM_FILL):
        return one_per_sm, True
    return cfg, False


def _output_walks(x: Tensor, B: Tensor, C: Tensor, cb: Optional[Tensor], states: Tensor, final: Optional[Tensor],
                  s: Tensor, dtp: Tensor, D: Optional[Tensor], z: Optional[Tensor], y: Tensor, y_pre: Optional[Tensor],
                  walks: WalkTable, whole: bool, keep_states: bool, table: ChunkTable, cfg: KernelConfig,
                  prec: str) -> None:
    """Writes y (and y_pre) by the output walk over `walks` (the Gluon one where cfg.wgmma asks and it can run),
    one launch over the whole d_state (config._whole_state_walk): whole walks also store the chunk states (where
    keep_states) and the final states (unless final is None). With the table cb (tiles.chunk_cb; None: the walk
    forms C B^T itself) it reads the within-chunk term's C B^T from there. Arguments as in ssd_forward."""
    ntokens, nheads, headdim = x.shape
    grid = (nheads * triton.cdiv(headdim, cfg.block_p), walks.count)
    gluon = (cfg.wgmma and scan_fwd_wgmma is not None and cfg.block_p >= MIN_BLOCK_P
             and wgmma_supported(x, cfg.block_m, cfg.block_n, cfg.num_warps))
    args = (x, B, C, cb, states, final, s, dtp, D, z, y, y_pre, walks.chunk, walks.start, walks.length, x.stride(0),
            x.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1), z.stride(0) if z is not None else 0,
            z.stride(1) if z is not None else 0, y.stride(0), y.stride(1), ntokens, nheads, headdim, B.shape[2],
            B.shape[1], nheads // B.shape[1], table.chunk_size)
    consts = dict(BLOCK_T=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n,
                  STEPS_PER_CHUNK=triton.cdiv(table.chunk_size, cfg.block_m), WHOLE=whole,
                  STORE_STATES=whole and keep_states, CB_TABLE=cb is not None, HAS_D=D is not None,
                  D_HAS_HDIM=D is not None and D.dim() == 2, HAS_Z=z is not None, ALIGNED=cfg.alignment(table.aligned))
    if gluon:
        scan_fwd_wgmma(grid, args, consts, cfg.num_warps, cfg.register_cap(), states, y, y_pre, cfg.tma)
    else:
        _scan_fwd_kernel[grid](*args, **consts, PREC=prec, **cfg.launch_options())


def _state_pass(x: Tensor, B: Tensor, s: Tensor, dtp: Tensor, h0: Optional[Tensor], states: Tensor, final: Tensor,
                table: ChunkTable, per_group: int, prec: str, every: int) -> None:
    """Writes the chunk states (those of every every-th chunk of a sequence) and the final states by
    `_state_fwd_kernel`, in segments where segments.state_walk chooses them; arguments as in ssd_forward."""
    ntokens, nheads, headdim = x.shape
    dstate = B.shape[2]
    walk = state_walk(table, state_config(headdim, dstate, table.chunk_size, per_group), "state", h0, final, every)
    cfg = walk.cfg
    _state_fwd_kernel[walk.grid](
        x, B, walk.init, states, walk.out, s, dtp, walk.start, walk.chunk,
        x.stride(0), x.stride(1), B.stride(0), B.stride(1), ntokens, nheads, headdim, dstate, per_group,
        CHUNK=table.chunk_size, BLOCK_T=cfg.block_m, BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, HEADS=cfg.heads,
        HAS_H0=walk.init is not None, ALIGNED=cfg.alignment(table.aligned), SCALE_B=bool(cfg.scale_b),
        STORE_EVERY=walk.every, PREC=prec, **cfg.launch_options(),
    )
    if walk.seg is not None:
        carry_forward(states, walk.out, final, h0, s, table, walk.seg, cfg)
