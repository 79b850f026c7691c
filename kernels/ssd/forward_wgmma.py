"""The forward output walk with asynchronous warpgroup MMA (Gluon, Hopper only).

Same program and arithmetic as forward.py's `_scan_fwd_kernel` (one program per head and head_dim block, walk of
one or more chunks; a walk through them in 64-token tiles carrying the state h, head_dim block x d_state, in
float32), written in Gluon so that the four products of a tile are in flight together instead of one after
another (Triton waits for each wgmma right after issuing it, benchmarks/NOTES-ssd.md):

    C B^T, C h, B^T (decay_out * x) issued at once; the masked decay of C B^T computed while the last two run;
    then W x accumulated onto decay_in * C h.

A walk may instead read C B^T's tile from the per-chunk table (CB_TABLE, config.walk_reads_cb: the two-warpgroup
walk over d_state 256), into one more shared buffer, so that each step issues three products.

The head_dim block is the state update's M, so at least 64 rows (MIN_BLOCK_P). In 4 warps (one warpgroup) the state
tile has 64 or 128 d_state columns; in 8 warps (two warpgroups, wgmma.mma_layout) each warpgroup takes half of every
product's columns (half of the d_state columns of the state, half of the head_dim block of y), and the state tile
may be the whole d_state of 256 (192-200 KB of shared memory: one program per SM). The state is kept in shared
memory as the states array holds it (head_dim rows, d_state contiguous), so that whole walks copy each chunk state
out by TMA (`states_descriptor`), an asynchronous copy that the walk's fences do not wait for.

Tiles of x, B and C are copied into shared memory one step ahead, into two buffers: by TMA onto one mbarrier per
buffer where `tma_arguments` allows, else by cp.async. y leaves through shared memory: by TMA in whole tiles where
`tma_arguments` allows, else in 16-byte row pieces per thread.

Differences from the Triton walk, all within bf16 rounding: a D per head is added to the diagonal of W (so D x_i
comes out of the W x product, with D rounded to the dot dtype: y differs from mamba_ssm by ~2.7e-3 instead of
~1e-3, relative), and with z the gate multiplies y after its rounding to the output dtype. For bf16 / fp16
inputs on sm_90 with the walk's tile sizes (wgmma.wgmma_tiles); forward.py runs the Triton kernel everywhere else,
and the CPU interpreter cannot run Gluon, so the tests compare the two on a GPU (tests/kernels/test_ssd_wgmma.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .wgmma import (barrier as _barrier, copy_layout, copy_step, copy_tile, exp_ftz, input_descriptors, mma_layout,
                    rows_descriptor, step_barriers, tma_store, token_rows, wait_step, walk_program)

__all__ = ["MIN_BLOCK_P", "scan_fwd_wgmma", "tma_arguments"]

MIN_BLOCK_P = 64  # the state update's wgmma has the head_dim block as its M: 64 rows a warpgroup


@gluon.jit
def _store_state(base, h_smem, p0, dstate, headdim, BLOCK_N: gl.constexpr, BLOCK_P: gl.constexpr):
    """Stores the walk's h, as it is in h_smem (head_dim block x d_state, the dot dtype), into the (headdim,
    dstate) state at base, 16 contiguous bytes a thread. With h^T in shared memory
    (read back in columns of 8 rows a thread) the stores of every chunk state cost the 128 x 256 forward's
    walks 0.86 ms (H200, 8 x 8192 tokens: 1.31 / 1.15 ms -> 1.78 / 1.54)."""
    layout: gl.constexpr = copy_layout(BLOCK_N, gl.num_warps())
    offs_p = p0 + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, layout))
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    gl.store(base + offs_p[:, None] * dstate + offs_n[None, :], h_smem.load(layout),
             mask=(offs_p < headdim)[:, None] & (offs_n < dstate)[None, :])


@gluon.jit
def _y_tile(offs_t, offs_p, c0, t0, clen, head, headdim, stride_y_t, stride_y_h):
    """Offsets into y (or z, given its strides) of the walk's tile of tokens t0.. (from c0) and head_dim columns
    offs_p, and its mask: rows from clen on and columns from headdim on left out; offs_t: the tile's rows 0.., in
    the layout of both."""
    offs = (c0 + t0 + offs_t)[:, None] * stride_y_t + head * stride_y_h + offs_p[None, :]
    return offs, (offs_t < clen - t0)[:, None] & (offs_p < headdim)[None, :]


@gluon.jit
def _copy_cb_tile(smem, cb_ptr, chunk, group, ngroups, chunk_size, clen, step, BLOCK_T: gl.constexpr,
                  STEPS_PER_CHUNK: gl.constexpr):
    """Starts the copy of step `step`'s diagonal tile of its chunk's C B^T (chunk k of the walk from `chunk`,
    length clen, in steps of BLOCK_T tokens, which divide chunk_size) from the per-chunk table at cb_ptr (nchunks,
    ngroups, chunk_size, chunk_size) into smem: rows past the chunk's end (or the walk's) are 0, columns past it
    whatever the table holds there (W masks them). A column mask at the chunk's end, which the compiler cannot
    prove to fall on 16-byte pieces unless ALIGNED, makes cp.async fail to build (triton 3.6)."""
    k = step // STEPS_PER_CHUNK
    r0 = (step % STEPS_PER_CHUNK) * BLOCK_T
    valid = gl.minimum(chunk_size, clen - k * chunk_size)
    base = cb_ptr + ((chunk + k) * ngroups + group) * chunk_size * chunk_size + r0
    copy_tile(smem, base, chunk_size, r0, valid, BLOCK_T, BLOCK_T, BLOCK_T)


@gluon.jit
def _scan_fwd_wgmma_kernel(
    x_ptr, b_ptr, c_ptr, cb_ptr, states_ptr, final_ptr, s_ptr, dtp_ptr, d_ptr, z_ptr, y_ptr, ypre_ptr,
    walk_chunk_ptr, walk_start_ptr, walk_len_ptr,
    stride_x_t, stride_x_h, stride_b_t, stride_b_g, stride_c_t, stride_c_g, stride_z_t, stride_z_h,
    stride_y_t, stride_y_h, ntokens, nheads, headdim, dstate, ngroups, heads_per_group, chunk_size,
    states_desc, y_desc, ypre_desc, x_desc, b_desc, c_desc, TMA_STATES: gl.constexpr, TMA_Y: gl.constexpr,
    TMA_LOADS: gl.constexpr,
    BLOCK_T: gl.constexpr, BLOCK_P: gl.constexpr, BLOCK_N: gl.constexpr, STEPS_PER_CHUNK: gl.constexpr,
    WHOLE: gl.constexpr, STORE_STATES: gl.constexpr, CB_TABLE: gl.constexpr, HAS_D: gl.constexpr,
    D_HAS_HDIM: gl.constexpr, HAS_Z: gl.constexpr, ALIGNED: gl.constexpr,
):
    STORE_PRE: gl.constexpr = HAS_Z and ypre_ptr is not None
    dtype: gl.constexpr = x_ptr.dtype.element_ty
    mma_p: gl.constexpr = mma_layout(BLOCK_P, gl.num_warps())  # y (tokens x head_dim)
    mma_h: gl.constexpr = mma_layout(BLOCK_N, gl.num_warps())  # h (head_dim x d_state)
    mma_t: gl.constexpr = mma_layout(BLOCK_T, gl.num_warps())  # C B^T (tokens x tokens)
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_p, k_width=2)
    rows_p: gl.constexpr = gl.SliceLayout(1, mma_p)
    cols_p: gl.constexpr = gl.SliceLayout(0, mma_p)
    rows_t: gl.constexpr = gl.SliceLayout(1, mma_t)
    cols_t: gl.constexpr = gl.SliceLayout(0, mma_t)
    tn_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_T, BLOCK_N], dtype)
    tp_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_T, BLOCK_P], dtype)
    pn_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_P, BLOCK_N], dtype)

    head, p0, group, walk, c0, clen, row = walk_program(walk_start_ptr, walk_len_ptr, ntokens, headdim,
                                                        heads_per_group, BLOCK_P, ALIGNED)
    chunk = gl.load(walk_chunk_ptr + walk).to(gl.int64)
    x_base = x_ptr + c0 * stride_x_t + head * stride_x_h + p0
    b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
    c_base = c_ptr + c0 * stride_c_t + group * stride_c_g

    c_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_N], tn_smem)
    b_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_N], tn_smem)
    x_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_P], tp_smem)
    xw_smem = gl.allocate_shared_memory(dtype, [BLOCK_T, BLOCK_P], tp_smem)
    h_smem = gl.allocate_shared_memory(dtype, [BLOCK_P, BLOCK_N], pn_smem)
    if TMA_Y and STORE_PRE:  # y before the gate, for its own TMA copy (y leaves from xw_smem)
        ypre_smem = gl.allocate_shared_memory(dtype, [BLOCK_T, BLOCK_P], tp_smem)

    bars = step_barriers(TMA_LOADS)
    col_bc = (group * stride_b_g).to(gl.int32)  # the B and C descriptors share the column offset (tma_arguments)
    col_x = (head * stride_x_h + p0).to(gl.int32)
    copy_step(c_smem.index(0), b_smem.index(0), x_smem.index(0), bars.index(0), c_desc, b_desc, x_desc, c_base,
              b_base, x_base, stride_c_t, stride_b_t, stride_x_t, c0, 0, clen, col_bc, col_x, dstate, headdim - p0,
              BLOCK_T, BLOCK_N, BLOCK_P, TMA_LOADS)
    if CB_TABLE:  # one buffer: each step's C B^T tile is copied once the step before has read its own
        cb_dtype: gl.constexpr = cb_ptr.dtype.element_ty
        cb_smem = gl.allocate_shared_memory(cb_dtype, [BLOCK_T, BLOCK_T],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_T, BLOCK_T], cb_dtype))
        _copy_cb_tile(cb_smem, cb_ptr, chunk, group, ngroups, chunk_size, clen, 0, BLOCK_T, STEPS_PER_CHUNK)
    async_copy.commit_group()

    # h (head_dim block x d_state): the state after the tokens walked so far, decayed to the last of them
    offs_p = p0 + gl.arange(0, BLOCK_P, layout=cols_p)
    mask_p = offs_p < headdim
    offs_hp = p0 + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, mma_h))
    offs_hn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_h))
    h_tile = offs_hp[:, None] * dstate + offs_hn[None, :]
    h_mask = (offs_hp < headdim)[:, None] & (offs_hn < dstate)[None, :]
    if WHOLE:  # walk w is all of sequence w, from zero
        h = gl.zeros((BLOCK_P, BLOCK_N), gl.float32, mma_h)
        if STORE_STATES:
            gl.store(states_ptr + (chunk * nheads + head) * headdim * dstate + h_tile, h.to(dtype), mask=h_mask)
    else:
        h = gl.load(states_ptr + (chunk * nheads + head) * headdim * dstate + h_tile, mask=h_mask,
                    other=0.0).to(gl.float32)
    h_smem.store(h.to(dtype))
    fence_async_shared()

    offs_i = gl.arange(0, BLOCK_T, layout=rows_t)
    offs_j = gl.arange(0, BLOCK_T, layout=cols_t)
    offs_r = gl.arange(0, BLOCK_T, layout=rows_p)
    io_p: gl.constexpr = copy_layout(BLOCK_P, gl.num_warps())  # y and z, coalesced
    offs_io_t = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, io_p))
    offs_io_p = p0 + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(0, io_p))
    s_prev = gl.zeros((), dtype=gl.float32)
    if HAS_D:  # loaded once (a load in the loop stays there: the compiler cannot prove y's stores miss D)
        if D_HAS_HDIM:
            dvec = gl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(gl.float32)
        else:
            d_head = gl.load(d_ptr + head).to(gl.float32)
    # each step's log-decays s and steps dt' (and s at its last token) are loaded a step ahead, so that their
    # latency hides behind the step before (loaded where used, they held the walk up: 0.80 -> 0.58 ms at 64 x 64)
    s_r = gl.load(s_ptr + row + offs_r, mask=offs_r < clen, other=0.0)
    dt_r = gl.load(dtp_ptr + row + offs_r, mask=offs_r < clen, other=0.0)
    s_last = gl.load(s_ptr + row + gl.minimum(BLOCK_T, clen) - 1)
    nsteps = gl.cdiv(clen, BLOCK_T)
    # y leaves through stores that the next fence_async_shared (MEMBAR.ALL.CTA in the SASS) waits for: where the
    # registers allow, each step's y is stored once the next step has passed its first two fences
    DELAY_Y: gl.constexpr = CB_TABLE and not TMA_Y
    if DELAY_Y:
        y_prev = gl.zeros((BLOCK_T, BLOCK_P), dtype, io_p)
    for step in range(0, nsteps):
        t0 = step * BLOCK_T
        t_next = t0 + BLOCK_T
        mask_next = t_next + offs_r < clen
        s_r_next = gl.load(s_ptr + row + t_next + offs_r, mask=mask_next, other=0.0)
        dt_r_next = gl.load(dtp_ptr + row + t_next + offs_r, mask=mask_next, other=0.0)
        s_last_next = gl.load(s_ptr + row + gl.minimum(t_next + BLOCK_T, clen) - 1)
        buf = step % 2
        nxt = (step + 1) % 2
        copy_step(c_smem.index(nxt), b_smem.index(nxt), x_smem.index(nxt), bars.index(nxt), c_desc, b_desc, x_desc,
                  c_base, b_base, x_base, stride_c_t, stride_b_t, stride_x_t, c0, t_next, clen, col_bc, col_x, dstate,
                  headdim - p0, BLOCK_T, BLOCK_N, BLOCK_P, TMA_LOADS)
        async_copy.commit_group()
        mask_r = t0 + offs_r < clen
        if TMA_STATES or TMA_Y:  # last step's copies out of h_smem and xw_smem have read them before they change
            # (waited for at the step's top: just before each buffer is rewritten, H200, 8 x 8192 tokens, 128 x 128
            # walk without a backward 1.245 -> 1.47 ms, the first 128 x 256 slice with one 1.34 -> 1.43)
            tma.store_wait(0)
        async_copy.wait_group(1)
        c_tile = c_smem.index(buf)
        b_tile = b_smem.index(buf)
        x_tile = x_smem.index(buf)
        wait_step(bars.index(buf), (step // 2) & 1, c_tile, b_tile, x_tile, clen - t0, BLOCK_T, BLOCK_N, BLOCK_P,
                  TMA_LOADS)
        fence_async_shared()

        if not CB_TABLE:
            cb = warpgroup_mma(c_tile, b_tile.permute((1, 0)), gl.zeros((BLOCK_T, BLOCK_T), gl.float32, mma_t),
                               use_acc=False, is_async=True)
        ch = warpgroup_mma(c_tile, h_smem.permute((1, 0)), gl.zeros((BLOCK_T, BLOCK_P), gl.float32, mma_p),
                           use_acc=False, is_async=True)

        x_reg = x_tile.load(mma_p)
        decay_out = gl.where(mask_r, exp_ftz(s_last - s_r) * dt_r, 0.0)
        xw_smem.store((x_reg.to(gl.float32) * decay_out[:, None]).to(dtype))
        fence_async_shared()
        if DELAY_Y:
            if step > 0:
                offs_y, mask = _y_tile(offs_io_t, offs_io_p, c0, t0 - BLOCK_T, clen, head, headdim, stride_y_t,
                                       stride_y_h)
                gl.store(y_ptr + offs_y, y_prev, mask=mask)
        h_next = warpgroup_mma(xw_smem.permute((1, 0)), b_tile, h * exp_ftz(s_last - s_prev), is_async=True)
        offs_y, mask = _y_tile(offs_io_t, offs_io_p, c0, t0, clen, head, headdim, stride_y_t, stride_y_h)

        s_i = gl.convert_layout(s_r, rows_t)
        s_j = gl.convert_layout(s_r, cols_t)
        dt_j = gl.convert_layout(dt_r, cols_t)
        if CB_TABLE:
            cb = cb_smem.load(mma_t).to(gl.float32)
            _barrier()  # every warp has read the tile before the next one overwrites it
            _copy_cb_tile(cb_smem, cb_ptr, chunk, group, ngroups, chunk_size, clen, step + 1, BLOCK_T,
                          STEPS_PER_CHUNK)
            async_copy.commit_group()
        else:
            cb = warpgroup_mma_wait(num_outstanding=2, deps=(cb,))
        w = cb * exp_ftz(gl.minimum(s_i[:, None] - s_j[None, :], 0.0)) * dt_j[None, :]
        w = gl.where(offs_j[None, :] <= offs_i[:, None], w, 0.0)
        if HAS_D:
            if not D_HAS_HDIM:  # D x_i as D on the diagonal of the scores (D rounded to the dot dtype)
                w = gl.where(offs_j[None, :] == offs_i[:, None], w + d_head, w)
        w = gl.convert_layout(w.to(dtype), w_layout)

        ch = warpgroup_mma_wait(num_outstanding=1, deps=(ch,))
        decay_in = gl.where(mask_r, exp_ftz(s_r - s_prev), 0.0)
        acc = warpgroup_mma(w, x_tile, ch * decay_in[:, None], is_async=True)
        h = warpgroup_mma_wait(num_outstanding=1, deps=(h_next,))
        h_smem.store(h.to(dtype))
        fence_async_shared()
        chunk_end = (step + 1) % STEPS_PER_CHUNK == 0
        s_prev = gl.where(chunk_end, 0.0, s_last)
        if STORE_STATES:
            if chunk_end & (step + 1 < nsteps):
                entered = chunk + (step + 1) // STEPS_PER_CHUNK
                if TMA_STATES:  # one asynchronous copy that no fence waits for (states_descriptor)
                    _barrier()
                    row_h = ((entered * nheads + head) * headdim + p0).to(gl.int32)
                    tma_store(states_desc, [row_h, 0], h_smem)
                else:
                    _store_state(states_ptr + (entered * nheads + head) * headdim * dstate, h_smem, p0, dstate,
                                 headdim, BLOCK_N, BLOCK_P)
        s_r = s_r_next
        dt_r = dt_r_next
        s_last = s_last_next
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        if HAS_D:
            if D_HAS_HDIM:  # from x in registers: reading x_tile again here gave wrong values on the H200 (triton 3.6)
                acc += x_reg.to(gl.float32) * dvec[None, :]

        # y through shared memory (xw's buffer, free once h is updated): copied out by TMA where the tile is whole
        # (TMA_Y), else loaded back in rows of 16-byte pieces per thread and stored
        xw_smem.store(acc.to(dtype))
        y_row = (c0 + t0).to(gl.int32)
        y_col = (head * headdim + p0).to(gl.int32)
        whole_tile = t_next <= clen
        DIRECT: gl.constexpr = TMA_Y and not HAS_Z  # y is the accumulator as it stands
        if DIRECT:
            if whole_tile:
                fence_async_shared()
                _barrier()
                tma_store(y_desc, [y_row, y_col], xw_smem)
            else:
                gl.store(y_ptr + offs_y, xw_smem.load(io_p), mask=mask)
        else:
            out = xw_smem.load(io_p)
            if HAS_Z:
                if STORE_PRE:
                    if TMA_Y:
                        if whole_tile:
                            ypre_smem.store(out)
                        else:
                            gl.store(ypre_ptr + offs_y, out, mask=mask)
                    else:
                        gl.store(ypre_ptr + offs_y, out, mask=mask)
                offs_z, _ = _y_tile(offs_io_t, offs_io_p, c0, t0, clen, head, headdim, stride_z_t, stride_z_h)
                zt = gl.load(z_ptr + offs_z, mask=mask, other=0.0).to(gl.float32)
                out = (out.to(gl.float32) * zt * (1.0 / (1.0 + exp_ftz(-zt)))).to(dtype)
            if TMA_Y:
                if whole_tile:
                    xw_smem.store(out)
                    fence_async_shared()
                    _barrier()
                    tma_store(y_desc, [y_row, y_col], xw_smem)
                    if STORE_PRE:
                        tma_store(ypre_desc, [y_row, y_col], ypre_smem)
                else:
                    gl.store(y_ptr + offs_y, out, mask=mask)
            elif DELAY_Y:
                y_prev = out
            else:
                gl.store(y_ptr + offs_y, out, mask=mask)
    if DELAY_Y:
        if nsteps > 0:
            offs_y, mask = _y_tile(offs_io_t, offs_io_p, c0, (nsteps - 1) * BLOCK_T, clen, head, headdim, stride_y_t,
                                   stride_y_h)
            gl.store(y_ptr + offs_y, y_prev, mask=mask)
    async_copy.wait_group(0)
    if TMA_STATES or TMA_Y:
        tma.store_wait(0)
    if TMA_LOADS:
        mbarrier.invalidate(bars.index(0))
        mbarrier.invalidate(bars.index(1))
    if WHOLE:  # the final state through a layout conversion (whose scratch reuses the dead tile buffers): stored
        # from the wgmma layout, its pointers were the first load's, kept across the loop (144 more bytes of spills)
        if final_ptr is not None:
            out_layout: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [gl.num_warps(), 1], [1, 0])
            offs_fp = p0 + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, out_layout))
            offs_fn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
            gl.store(final_ptr + (walk * nheads + head) * headdim * dstate + offs_fp[:, None] * dstate
                     + offs_fn[None, :], gl.convert_layout(h, out_layout),
                     mask=(offs_fp < headdim)[:, None] & (offs_fn < dstate)[None, :])


def states_descriptor(states: torch.Tensor, block_p: int, block_n: int) -> Optional[TensorDescriptor]:
    """A TMA descriptor of the chunk states `states` (nchunks, nheads, headdim, dstate) as rows of head_dim
    (nchunks * nheads * headdim, dstate) in boxes of block_p x block_n, for the walk's copies of h out of shared
    memory; None where a box would cross into the next head (headdim not a multiple of block_p) or TMA cannot address
    the rows."""
    nchunks, nheads, headdim, dstate = states.shape
    if headdim % block_p or not states.is_contiguous():
        return None
    return rows_descriptor(states.view(nchunks * nheads * headdim, dstate), [block_p, block_n])


def output_descriptor(y: torch.Tensor, block_t: int, block_p: int) -> Optional[TensorDescriptor]:
    """A TMA descriptor of an output y (ntokens, nheads, headdim) as rows of tokens in boxes of block_t tokens x
    block_p columns; None where a box would cross heads or TMA cannot address y."""
    rows = token_rows(y, block_p)
    return rows_descriptor(rows, [block_t, block_p]) if rows is not None else None


def tma_arguments(consts: dict, x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, states: torch.Tensor,
                  y: torch.Tensor, y_pre: Optional[torch.Tensor], loads: int = -1) -> dict:
    """The walk's TMA descriptors and their constexprs for `_scan_fwd_kernel`'s constexprs `consts`: its inputs'
    (x, b, c: `input_descriptors`; TMA_LOADS where all have one and `loads`, KernelConfig.tma, is not 0: H200,
    8 x 8192 tokens, walks without / with grad, 128 x 128 1.246 / 1.353 -> 1.185 / 1.225 ms, 64 x 64 0.524 / 0.534
    -> 0.467 / 0.495), the chunk states' (states, used where the walk stores them, STORE_STATES) and y's (and
    y_pre's: None where the walk stores none).
    y leaves by TMA (TMA_Y) only where every output has a descriptor, in walks that form their own C B^T and store no
    chunk states (a forward without a backward): there the 128 x 128 walk took 1.34 -> 1.245 ms and 64 x 64 0.542 ->
    0.526 (H200, 8 x 8192 tokens). It lost with chunk states stored (128 x 128 1.35 -> 1.37)."""
    block_t, block_p = consts["BLOCK_T"], consts["BLOCK_P"]
    states = states if consts["STORE_STATES"] else None
    inputs = input_descriptors(x, b, c, block_t, block_p, consts["BLOCK_N"]) if loads != 0 else None
    states_desc = states_descriptor(states, block_p, consts["BLOCK_N"]) if states is not None else None
    y_desc = output_descriptor(y, block_t, block_p)
    ypre_desc = output_descriptor(y_pre, block_t, block_p) if y_pre is not None and consts["HAS_Z"] else None
    tma_y = (y_desc is not None and (ypre_desc is not None or y_pre is None or not consts["HAS_Z"])
             and states is None and not consts["CB_TABLE"])
    x_desc, b_desc, c_desc = inputs if inputs is not None else (None, None, None)
    return dict(states_desc=states_desc, TMA_STATES=states_desc is not None, y_desc=y_desc if tma_y else None,
                ypre_desc=ypre_desc if tma_y else None, TMA_Y=tma_y, x_desc=x_desc, b_desc=b_desc, c_desc=c_desc,
                TMA_LOADS=inputs is not None)


def scan_fwd_wgmma(grid: tuple[int, int], args: tuple, consts: dict, num_warps: int, options: dict[str, int],
                   states: torch.Tensor, y: torch.Tensor, y_pre: Optional[torch.Tensor], loads: int = -1) -> None:
    """Launches the Gluon output walk in num_warps (4: one warpgroup; 8: two, each with half the head_dim block) on
    `_scan_fwd_kernel`'s arguments and constexprs (its PREC left out: the products take the inputs' 16-bit dtype);
    options: KernelConfig.register_cap(); states: the chunk states;
    y, y_pre: its outputs (as in args); loads: KernelConfig.tma. Tiles come in and leave by TMA where
    `tma_arguments` allows."""
    x, b, c = args[:3]
    _scan_fwd_wgmma_kernel[grid](*args, **consts, **tma_arguments(consts, x, b, c, states, y, y_pre, loads),
                                 num_warps=num_warps, **options)
