"""Gluon helpers shared by the Hopper (wgmma) walks: forward_wgmma.py's output walk, backward_wgmma.py's dx walk.

Gluon (triton.experimental.gluon) is Triton's lower-level language: layouts, shared memory, asynchronous copies
and warpgroup MMA are written out. Its kernels do not run in the Triton interpreter, so each has a Triton twin
that the CPU tests check and the GPU tests compare it with.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from triton.runtime.jit import constexpr_function
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.extra import libdevice
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .layout import ALIGNMENT

__all__ = ["GL_DTYPES", "barrier", "copy_layout", "copy_step", "copy_tile", "exp_ftz", "input_descriptors",
           "mma_layout", "rows_descriptor", "step_barriers", "tma_store", "token_rows", "wait_step", "walk_program",
           "wgmma_supported", "wgmma_tiles"]

# cp.async into shared memory: `async_load` after triton 3.6 (the device's version), `async_copy_global_to_shared`
# in 3.6
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# a CTA barrier: `barrier` after triton 3.6, `thread_barrier` in 3.6
barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# a TMA copy of a shared-memory tile into global memory: `async_store` after triton 3.6
tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# a TMA copy of a global tile into shared memory, signalling an mbarrier: `async_load` after triton 3.6
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_ALIGNMENT = gl.constexpr(ALIGNMENT)
GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
_LOG2E = gl.constexpr(1.4426950408889634)


@constexpr_function
def mma_layout(n, num_warps):
    """Accumulator layout of a wgmma whose output has n columns: 4 warps (one warpgroup) take all n columns in
    steps of 64 rows; 8 warps split the columns between two warpgroups (each n / 2 of them, all rows), so that
    outputs of 64 rows (a token tile) still take both."""
    groups = num_warps // 4
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, groups], instr_shape=[16, n // groups, 16])


@constexpr_function
def copy_layout(cols, num_warps):
    """Rows of a bf16 tile spread so each thread copies 16 contiguous bytes."""
    lanes_c = min(cols // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // lanes_c, lanes_c], [num_warps, 1], [1, 0])


@gluon.jit
def exp_ftz(x):
    """e^x as one multiply and ex2.approx.ftz (results below 2^-126 are 0), as common.exp_ftz: gl.exp keeps
    denormal results at three more instructions per call."""
    return libdevice.exp2(x * _LOG2E)


@gluon.jit
def copy_tile(smem, base, stride_t, t0, rows, cols, BLOCK_T: gl.constexpr, BLOCK_C: gl.constexpr):
    """Starts the copy of rows t0.. of a (token, column) tile into smem; rows from `rows` on and columns from
    `cols` on are filled with 0."""
    layout: gl.constexpr = copy_layout(BLOCK_C, gl.num_warps())
    offs_t = t0 + gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, layout))
    offs_c = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, layout))
    ptrs = base + offs_t[:, None].to(gl.int64) * stride_t + offs_c[None, :]
    mask = (offs_t[:, None] < rows) & (offs_c[None, :] < cols)
    _async_load(smem, ptrs, mask)


@gluon.jit
def _zero_rows(smem, rows, BLOCK_T: gl.constexpr, BLOCK_C: gl.constexpr):
    """Sets rows `rows`.. of the (BLOCK_T, BLOCK_C) tile in smem to 0, through registers."""
    layout: gl.constexpr = copy_layout(BLOCK_C, gl.num_warps())
    offs_t = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, layout))
    tile = smem.load(layout)
    smem.store(gl.where((offs_t < rows)[:, None], tile, gl.zeros_like(tile)))


@gluon.jit
def step_barriers(TMA_LOADS: gl.constexpr):
    """The two mbarriers of a walk's double-buffered step tiles (one per buffer), initialised where TMA_LOADS."""
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    if TMA_LOADS:
        mbarrier.init(bars.index(0), count=1)
        mbarrier.init(bars.index(1), count=1)
        fence_async_shared()
        barrier()
    return bars


@gluon.jit
def copy_step(c_smem, b_smem, x_smem, bar, c_desc, b_desc, x_desc, c_base, b_base, x_base, stride_c_t, stride_b_t,
              stride_x_t, c0, t, rows, col_bc, col_x, dstate, width_x, BLOCK_T: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_P: gl.constexpr, TMA_LOADS: gl.constexpr):
    """Starts the copies of a walk step's C, B (BLOCK_T x BLOCK_N) and x (BLOCK_T x BLOCK_P; the dx walk: dy) tiles
    of tokens t.. (of the walk from token c0, whose rows are those below `rows`) into their buffers: with
    TMA_LOADS by TMA onto mbarrier bar (`input_descriptors`, columns col_bc and col_x; nothing where t >= rows; rows
    past `rows` are the next sequence's until `wait_step` zeroes them), else by cp.async with those rows and the
    columns from dstate (width_x) on 0."""
    if TMA_LOADS:
        row = (c0 + t).to(gl.int32)
        live = t < rows
        nbytes: gl.constexpr = (2 * BLOCK_T * BLOCK_N + BLOCK_T * BLOCK_P) * c_smem.dtype.primitive_bitwidth // 8
        mbarrier.expect(bar, nbytes, pred=live)
        tma_load(c_desc, [row, col_bc], bar, c_smem, pred=live)
        tma_load(b_desc, [row, col_bc], bar, b_smem, pred=live)
        tma_load(x_desc, [row, col_x], bar, x_smem, pred=live)
    else:
        copy_tile(c_smem, c_base, stride_c_t, t, rows, dstate, BLOCK_T, BLOCK_N)
        copy_tile(b_smem, b_base, stride_b_t, t, rows, dstate, BLOCK_T, BLOCK_N)
        copy_tile(x_smem, x_base, stride_x_t, t, rows, width_x, BLOCK_T, BLOCK_P)


@gluon.jit
def wait_step(bar, phase, c_tile, b_tile, x_tile, rows, BLOCK_T: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_P: gl.constexpr, TMA_LOADS: gl.constexpr):
    """With TMA_LOADS, waits for a step's copies by `copy_step` (the phase-th use of their buffer's mbarrier bar, mod
    2) and, where the walk ends inside the tile (rows < BLOCK_T), zeroes its rows from `rows` on, as cp.async's masks
    leave them. The caller then fences before the tiles go to wgmma (cp.async's copies need that fence too)."""
    if TMA_LOADS:
        mbarrier.wait(bar, phase)
        if rows < BLOCK_T:
            _zero_rows(c_tile, rows, BLOCK_T, BLOCK_N)
            _zero_rows(b_tile, rows, BLOCK_T, BLOCK_N)
            _zero_rows(x_tile, rows, BLOCK_T, BLOCK_P)
            fence_async_shared()
            barrier()


@gluon.jit
def walk_program(chunk_start_ptr, chunk_len_ptr, ntokens, headdim, heads_per_group, BLOCK_P: gl.constexpr,
                 ALIGNED: gl.constexpr):
    """The work of a walk program (grid axis 0: head * head_dim blocks + block, axis 1: chunk): its head (int64),
    first head_dim column p0, group, chunk (int64), the chunk's first token c0 (int64) and length clen, and row,
    the offset of (head, c0) in the (nheads, ntokens) arrays s and dt'. ALIGNED: c0 and clen are multiples of
    layout.ALIGNMENT, written so that the compiler sees it (common.known_multiple, which Gluon cannot call)."""
    blocks_p = gl.cdiv(headdim, BLOCK_P)
    head = (gl.program_id(0) // blocks_p).to(gl.int64)
    p0 = (gl.program_id(0) % blocks_p) * BLOCK_P
    group = head // heads_per_group
    chunk = gl.program_id(1).to(gl.int64)
    c0 = gl.load(chunk_start_ptr + chunk).to(gl.int64)
    clen = gl.load(chunk_len_ptr + chunk)
    if ALIGNED:
        c0 = c0 // _ALIGNMENT * _ALIGNMENT
        clen = clen // _ALIGNMENT * _ALIGNMENT
    return head, p0, group, chunk, c0, clen, head * ntokens + c0


def wgmma_tiles(block_t: int, block_n: int, num_warps: int = 4) -> bool:
    """Whether a Gluon walk has the tiles it runs with: 64-token steps and, in one warpgroup (4 warps), d_state
    tiles of 64 or 128 (the state products need 64 rows per warpgroup); in two (8 warps, each with half of every
    product's columns), also of 256."""
    return block_t == 64 and block_n in ((64, 128) if num_warps == 4 else (64, 128, 256) if num_warps == 8 else ())


def wgmma_supported(x: torch.Tensor, block_t: int, block_n: int, num_warps: int = 4) -> bool:
    """Whether a Gluon walk can run: `wgmma_tiles`, bf16 / fp16 x on an sm_90 GPU, not under the Triton
    interpreter."""
    return (wgmma_tiles(block_t, block_n, num_warps) and os.environ.get("TRITON_INTERPRET") != "1" and x.is_cuda
            and x.dtype in (torch.bfloat16, torch.float16) and torch.cuda.get_device_capability(x.device) == (9, 0))


def rows_descriptor(rows: torch.Tensor, box: list[int]) -> Optional[TensorDescriptor]:
    """A TMA descriptor of the 2-D view `rows` (unit column stride) in boxes `box`; None where TMA cannot address it
    (16-byte row stride and base, a 16-bit dtype)."""
    if (rows.stride(1) != 1 or (rows.stride(0) * rows.element_size()) % 16 or rows.data_ptr() % 16
            or rows.dtype not in GL_DTYPES):
        return None
    layout = gl.NVMMASharedLayout.get_default_for(box, GL_DTYPES[rows.dtype])
    return TensorDescriptor(rows, list(rows.shape), list(rows.stride()), box, layout)


def token_rows(t: torch.Tensor, block_p: int) -> Optional[torch.Tensor]:
    """t (ntokens, nheads, headdim) as rows of tokens (ntokens, nheads * headdim); None where its heads are not
    adjacent or a head_dim block of block_p would cross into the next head."""
    ntokens, nheads, headdim = t.shape
    if headdim % block_p or t.stride(1) != headdim * t.stride(2):
        return None
    return torch.as_strided(t, (ntokens, nheads * headdim), (t.stride(0), t.stride(2)))


def input_descriptors(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, block_t: int, block_p: int,
                      block_n: int) -> Optional[tuple[TensorDescriptor, TensorDescriptor, TensorDescriptor]]:
    """TMA descriptors of a walk's step tiles (`copy_step`): x (ntokens, nheads, headdim; the dx walk: dy) as rows of
    tokens in boxes of block_t x block_p at column head * headdim + p0, and B, C (ntokens, ngroups, width: a d_state
    slice) as rows (ntokens, (ngroups - 1) * group stride + width) in boxes of block_t x block_n at column group *
    group stride (B's and C's group strides equal); None where a box would cross into the next head or group
    (headdim not a multiple of block_p, width not block_n) or TMA cannot address them."""
    ntokens, width = x.shape[0], b.shape[2]
    x_rows = token_rows(x, block_p)
    if x_rows is None or width != block_n or b.stride(1) != c.stride(1) or b.stride(2) != 1 or c.stride(2) != 1:
        return None
    cols = (b.shape[1] - 1) * b.stride(1) + width
    descs = (rows_descriptor(x_rows, [block_t, block_p]),
             *(rows_descriptor(torch.as_strided(t, (ntokens, cols), (t.stride(0), 1)), [block_t, block_n])
               for t in (b, c)))
    return None if None in descs else descs
