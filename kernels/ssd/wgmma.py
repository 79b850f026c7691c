"""Gluon helpers shared by the Hopper (wgmma) walks: forward_wgmma.py's output walk, backward_wgmma.py's dx walk.

Gluon (triton.experimental.gluon) is Triton's lower-level language: layouts, shared memory, asynchronous copies
and warpgroup MMA are written out. Its kernels do not run in the Triton interpreter, so each has a Triton twin
that the CPU tests check and the GPU tests compare it with.
"""

from __future__ import annotations

import os

import torch
from triton.runtime.jit import constexpr_function
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.extra import libdevice
from triton.experimental.gluon.language.nvidia.hopper import async_copy, tma

from .layout import ALIGNMENT

__all__ = ["barrier", "copy_layout", "copy_tile", "exp_ftz", "mma_layout", "tma_load", "tma_store", "walk_program",
           "wgmma_supported", "wgmma_tiles", "zero_rows"]

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
def zero_rows(smem, rows, BLOCK_T: gl.constexpr, BLOCK_C: gl.constexpr):
    """Sets rows `rows`.. of the (BLOCK_T, BLOCK_C) tile in smem to 0 (a TMA copy's rows past a walk's end, which
    belong to the next sequence), through registers; the caller fences and synchronizes before products read it."""
    layout: gl.constexpr = copy_layout(BLOCK_C, gl.num_warps())
    offs_t = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, layout))
    tile = smem.load(layout)
    smem.store(gl.where((offs_t < rows)[:, None], tile, gl.zeros_like(tile)))


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
