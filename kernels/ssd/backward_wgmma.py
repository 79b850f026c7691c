"""The backward dx walk with asynchronous warpgroup MMA (Gluon, Hopper only).

`_dx_wgmma_kernel`: same program and arithmetic as backward.py's `_dx_kernel` (one program per head and head_dim
block, chunk; a walk backwards through the chunk in 64-token tiles carrying g^T, the gradient of the state after
the tile, d_state x head_dim block, float32), written in Gluon so that a tile's products are in flight together, as
in forward_wgmma.py's output walk (of which this is the mirror image: B and C, x and dy, the state and its gradient
trade places, and the mask is transposed):

    B C^T, B g, C^T (decay_in * dy) issued at once; the masked decay of B C^T formed while the last two run;
    then W dy accumulated onto decay_out * B g.

Tiles of B, C and dy are copied into shared memory one step ahead (cp.async, two buffers); x, needed only by the
elementwise tail (dL/d dt' and dL/dD), is read from global memory straight into registers; dx leaves through
shared memory in 16-byte row pieces. For bf16 / fp16 inputs on sm_90 with 64-token steps and d_state tiles of 64
or 128.

backward.py runs the Triton kernels everywhere else, and tests/kernels/test_ssd_wgmma.py compares the two on a
GPU.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .wgmma import (copy_layout, copy_step, exp_ftz, input_descriptors, mma_layout, step_barriers, wait_step,
                    walk_program)

__all__ = ["dx_tma_arguments", "dx_wgmma"]


@gluon.jit
def _dx_wgmma_kernel(
    x_ptr, dy_ptr, b_ptr, c_ptr, dstates_ptr, s_ptr, dtp_ptr, d_ptr,
    dx_ptr, ddtp_ptr, dd_ptr, walk_chunk_ptr, walk_start_ptr, walk_len_ptr,
    stride_x_t, stride_x_h, stride_dy_t, stride_dy_h, stride_b_t, stride_b_g, stride_c_t, stride_c_g,
    stride_dx_t, stride_dx_h, ntokens, nheads, headdim, dstate, heads_per_group, dy_desc, b_desc, c_desc,
    TMA_LOADS: gl.constexpr,
    BLOCK_T: gl.constexpr, BLOCK_P: gl.constexpr, BLOCK_N: gl.constexpr, STEPS_PER_CHUNK: gl.constexpr,
    HAS_D: gl.constexpr, D_HAS_HDIM: gl.constexpr, ALIGNED: gl.constexpr,
):
    dtype: gl.constexpr = dy_ptr.dtype.element_ty
    mma_p: gl.constexpr = mma_layout(BLOCK_P, gl.num_warps())  # dx (tokens x head_dim), g^T (d_state x head_dim)
    mma_t: gl.constexpr = mma_layout(BLOCK_T, gl.num_warps())  # B C^T (tokens x tokens)
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_p, k_width=2)
    rows_p: gl.constexpr = gl.SliceLayout(1, mma_p)
    cols_p: gl.constexpr = gl.SliceLayout(0, mma_p)
    rows_t: gl.constexpr = gl.SliceLayout(1, mma_t)
    cols_t: gl.constexpr = gl.SliceLayout(0, mma_t)
    tn_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_T, BLOCK_N], dtype)
    tp_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_T, BLOCK_P], dtype)
    np_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_P], dtype)

    head, p0, group, walk, c0, clen, row = walk_program(walk_start_ptr, walk_len_ptr, ntokens, headdim,
                                                        heads_per_group, BLOCK_P, ALIGNED)
    chunk_tokens: gl.constexpr = STEPS_PER_CHUNK * BLOCK_T
    chunk = gl.load(walk_chunk_ptr + walk).to(gl.int64) + (clen - 1) // chunk_tokens  # the walk's last chunk
    dy_base = dy_ptr + c0 * stride_dy_t + head * stride_dy_h + p0
    b_base = b_ptr + c0 * stride_b_t + group * stride_b_g
    c_base = c_ptr + c0 * stride_c_t + group * stride_c_g

    c_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_N], tn_smem)
    b_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_N], tn_smem)
    dy_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_T, BLOCK_P], tp_smem)
    dyw_smem = gl.allocate_shared_memory(dtype, [BLOCK_T, BLOCK_P], tp_smem)
    g_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_P], np_smem)

    bars = step_barriers(TMA_LOADS)
    col_bc = (group * stride_b_g).to(gl.int32)  # the B and C descriptors share the column offset (dx_tma_arguments)
    col_dy = (head * stride_dy_h + p0).to(gl.int32)

    nsteps = gl.cdiv(clen, BLOCK_T)
    t_first = (nsteps - 1) * BLOCK_T
    copy_step(c_smem.index(0), b_smem.index(0), dy_smem.index(0), bars.index(0), c_desc, b_desc, dy_desc, c_base,
              b_base, dy_base, stride_c_t, stride_b_t, stride_dy_t, c0, t_first, clen, col_bc, col_dy, dstate,
              headdim - p0, BLOCK_T, BLOCK_N, BLOCK_P, TMA_LOADS)
    async_copy.commit_group()

    # g^T starts as the gradient of the state at the end of the walk's last chunk, at its last token (the reference
    # of the last tile)
    offs_gn = gl.arange(0, BLOCK_N, layout=rows_p)
    offs_p = p0 + gl.arange(0, BLOCK_P, layout=cols_p)
    mask_p = offs_p < headdim
    g = gl.load(dstates_ptr + (chunk * nheads + head) * headdim * dstate + offs_p[None, :] * dstate
                + offs_gn[:, None], mask=(offs_gn[:, None] < dstate) & mask_p[None, :], other=0.0).to(gl.float32)
    g_smem.store(g.to(dtype))
    fence_async_shared()

    if HAS_D:
        if D_HAS_HDIM:
            dvec = gl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(gl.float32)
        else:
            dval = gl.load(d_ptr + head).to(gl.float32)
    # dL/dD: per channel, column sums of dy * x (a reduction across the warps per step); per head, row sums per step
    # (within each warp) and one reduction across the warps at the end
    if D_HAS_HDIM:
        dd = gl.zeros((BLOCK_P,), dtype=gl.float32, layout=cols_p)
    else:
        dd = gl.zeros((BLOCK_T,), dtype=gl.float32, layout=rows_p)
    offs_i = gl.arange(0, BLOCK_T, layout=rows_t)
    offs_j = gl.arange(0, BLOCK_T, layout=cols_t)
    offs_r = gl.arange(0, BLOCK_T, layout=rows_p)
    io_p: gl.constexpr = copy_layout(BLOCK_P, gl.num_warps())  # dx, coalesced
    offs_io_t = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, io_p))
    offs_io_p = p0 + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(0, io_p))
    # a step's log-decays s, steps dt' and s at the token before it are loaded a step ahead, and its x tile at its
    # start (loaded where used, they held the walk up: 1.29 -> 0.93 ms at 64 x 64); s at its last token is the s
    # before the step after it. x is read from registers: read from a copy in shared memory at the end of the step
    # it came out wrong at d_state tiles of 128 (H200, triton 3.6)
    mask_first = t_first + offs_r < clen
    s_r = gl.load(s_ptr + row + t_first + offs_r, mask=mask_first, other=0.0)
    dt_r = gl.load(dtp_ptr + row + t_first + offs_r, mask=mask_first, other=0.0)
    s_ref = gl.load(s_ptr + row + clen - 1)
    s_prev, s_tail = _step_before(s_ptr, row, t_first, chunk_tokens)
    # g in registers is the gradient update's accumulator, decayed to the step's reference before the step's products
    # are issued: scaled while they ran, it made ptxas wait for them first ("wgmma.wait_group is injected ... to allow
    # use of registers defined by GMMA"); with the dD row sums below, 0.99 -> 0.85 ms at 64 x 64 (H200, 8 x 8192)
    g = g * exp_ftz(s_ref - s_prev)
    for step in range(0, nsteps):
        t0 = t_first - step * BLOCK_T
        buf = step % 2
        nxt = (step + 1) % 2
        # the tile before (none after the chunk's first: rows limited to 0, from row 0 so no row is negative)
        t_next = gl.maximum(t0 - BLOCK_T, 0)
        rows_next = clen * (t0 > 0).to(gl.int32)
        copy_step(c_smem.index(nxt), b_smem.index(nxt), dy_smem.index(nxt), bars.index(nxt), c_desc, b_desc, dy_desc,
                  c_base, b_base, dy_base, stride_c_t, stride_b_t, stride_dy_t, c0, t_next, rows_next, col_bc, col_dy,
                  dstate, headdim - p0, BLOCK_T, BLOCK_N, BLOCK_P, TMA_LOADS)
        async_copy.commit_group()
        mask_next = t_next + offs_r < rows_next
        s_r_next = gl.load(s_ptr + row + t_next + offs_r, mask=mask_next, other=0.0)
        dt_r_next = gl.load(dtp_ptr + row + t_next + offs_r, mask=mask_next, other=0.0)
        s_prev_next, s_tail_next = _step_before(s_ptr, row, t_next, chunk_tokens)
        mask_r = t0 + offs_r < clen
        offs_x = (c0 + t0 + offs_r)[:, None] * stride_x_t + head * stride_x_h + offs_p[None, :]
        x_tile = gl.load(x_ptr + offs_x, mask=mask_r[:, None] & mask_p[None, :], other=0.0)
        async_copy.wait_group(1)
        c_tile = c_smem.index(buf)
        b_tile = b_smem.index(buf)
        dy_tile = dy_smem.index(buf)
        wait_step(bars.index(buf), (step // 2) & 1, c_tile, b_tile, dy_tile, clen - t0, BLOCK_T, BLOCK_N, BLOCK_P,
                  TMA_LOADS)
        fence_async_shared()

        bc = warpgroup_mma(b_tile, c_tile.permute((1, 0)), gl.zeros((BLOCK_T, BLOCK_T), gl.float32, mma_t),
                           use_acc=False, is_async=True)
        bg = warpgroup_mma(b_tile, g_smem, gl.zeros((BLOCK_T, BLOCK_P), gl.float32, mma_p),
                           use_acc=False, is_async=True)

        dy_reg = dy_tile.load(mma_p)
        decay_in = gl.where(mask_r, exp_ftz(s_r - s_prev), 0.0)
        dyw_smem.store((dy_reg.to(gl.float32) * decay_in[:, None]).to(dtype))
        fence_async_shared()
        g_next = warpgroup_mma(c_tile.permute((1, 0)), dyw_smem, g, is_async=True)

        s_i = gl.convert_layout(s_r, rows_t)
        s_j = gl.convert_layout(s_r, cols_t)
        bc = warpgroup_mma_wait(num_outstanding=2, deps=(bc,))
        w = bc * exp_ftz(gl.minimum(s_j[None, :] - s_i[:, None], 0.0))
        w = gl.where(offs_j[None, :] >= offs_i[:, None], w, 0.0)
        w = gl.convert_layout(w.to(dtype), w_layout)

        bg = warpgroup_mma_wait(num_outstanding=1, deps=(bg,))
        decay_out = gl.where(mask_r, exp_ftz(s_ref - s_r), 0.0)
        acc = warpgroup_mma(w, dy_tile, bg * decay_out[:, None], is_async=True)

        g = warpgroup_mma_wait(num_outstanding=1, deps=(g_next,))
        g_smem.store(g.to(dtype))
        fence_async_shared()
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        x_reg = x_tile.to(gl.float32)

        gl.atomic_add(ddtp_ptr + row + t0 + offs_r, gl.sum(acc * x_reg, 1), mask=mask_r, sem="relaxed")
        dx = acc * dt_r[:, None]
        if HAS_D:
            dyf = dy_reg.to(gl.float32)
            if D_HAS_HDIM:
                dx += dyf * dvec[None, :]
            else:
                dx += dyf * dval
            dd += gl.sum(dyf * x_reg, 0 if D_HAS_HDIM else 1)

        # dx through shared memory (dyw's buffer, free once g is updated) into rows of 16-byte pieces per thread
        dyw_smem.store(dx.to(dtype))
        out = dyw_smem.load(io_p)
        offs_t = c0 + t0 + offs_io_t
        mask = (offs_io_t < clen - t0)[:, None] & (offs_io_p < headdim)[None, :]
        gl.store(dx_ptr + offs_t[:, None] * stride_dx_t + head * stride_dx_h + offs_io_p[None, :],
                 out.to(dx_ptr.dtype.element_ty), mask=mask)
        s_ref = s_prev + s_tail
        s_prev = s_prev_next
        s_tail = s_tail_next
        s_r = s_r_next
        dt_r = dt_r_next
        g = g * exp_ftz(s_ref - s_prev)
    async_copy.wait_group(0)
    if TMA_LOADS:
        mbarrier.invalidate(bars.index(0))
        mbarrier.invalidate(bars.index(1))
    if HAS_D:
        if D_HAS_HDIM:
            gl.atomic_add(dd_ptr + head * headdim + offs_p, dd, mask=mask_p, sem="relaxed")
        else:
            gl.atomic_add(dd_ptr + head, gl.sum(dd, 0), sem="relaxed")


@gluon.jit
def _step_before(s_ptr, row, t0, chunk_tokens: gl.constexpr):
    """For the step from token t0 of a walk: the log-decay s_prev that its g update is referred to (s at the token
    before the step; at a chunk's first token, at that token), and s_tail, the previous chunk's s at its last token
    when t0 starts a chunk after the walk's first (else 0). A chunk's last step then takes s_prev + s_tail of the
    step after it as its reference: the state-gradient g (at the later chunk's first token) decays into the state
    between the chunks by that token's step, and from there as the earlier chunk's s says."""
    starts = t0 % chunk_tokens == 0
    s_prev = gl.load(s_ptr + row + t0 - 1 + starts.to(gl.int32))
    s_tail = gl.load(s_ptr + row + gl.maximum(t0 - 1, 0), mask=starts & (t0 > 0), other=0.0)
    return s_prev, s_tail


def dx_tma_arguments(consts: dict, dy: torch.Tensor, b: torch.Tensor, c: torch.Tensor, loads: int = -1) -> dict:
    """The dx walk's TMA descriptors of its step tiles (dy, B, C: wgmma.input_descriptors) and TMA_LOADS, for
    `_dx_kernel`'s constexprs `consts`; loads: KernelConfig.tma (0: cp.async; else TMA where the descriptors
    allow)."""
    descs = input_descriptors(dy, b, c, consts["BLOCK_T"], consts["BLOCK_P"], consts["BLOCK_N"]) if loads else None
    dy_desc, b_desc, c_desc = descs if descs is not None else (None, None, None)
    return dict(dy_desc=dy_desc, b_desc=b_desc, c_desc=c_desc, TMA_LOADS=descs is not None)


def dx_wgmma(grid: tuple[int, int], args: tuple, consts: dict, options: dict[str, int], loads: int = -1) -> None:
    """Launches the Gluon dx walk, one warpgroup per program, on `_dx_kernel`'s arguments and constexprs (its
    PREC left out: the products take the inputs' 16-bit dtype); options: KernelConfig.register_cap(); loads:
    KernelConfig.tma (`dx_tma_arguments`)."""
    dy, b, c = args[1:4]
    _dx_wgmma_kernel[grid](*args, **consts, **dx_tma_arguments(consts, dy, b, c, loads), num_warps=4, **options)
