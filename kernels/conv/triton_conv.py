"""Triton causal depthwise conv1d (+ SiLU), channel-last, with a Triton backward.

One program per (block of time rows, block of channels, batch); channels are the contiguous axis, so every
load and store is a vector along channels. A tap of lag L reads the tile's rows shifted back by L (the halo
of d_conv - 1 rows before the tile is read by the shifted loads; they hit the cache). The backward recomputes
the pre-activation from x (nothing but x, weight and bias is saved): per tile it forms
g = dy * silu'(pre-activation) once, reduces g and g * shifted x into per-program float32 partial sums of dbias
and dweight (summed by torch afterwards), and forms dx by the transposed (anti-causal) conv of g, handing g to
the tile before through a per-program buffer."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..overrides import env_overrides
from .reference import positions_in_sequences

__all__ = ["ConvTiles", "causal_conv1d_triton", "default_tiles"]


class ConvTiles(NamedTuple):
    """Tile sizes: block_t time rows x block_c channels per tile; a backward program loops over tiles_per_prog
    consecutive row tiles (fewer dweight/dbias partial sums)."""

    block_t: int
    block_c: int
    tiles_per_prog: int


def default_tiles(seqlen: int, channels: int) -> ConvTiles:
    """Tiles of up to 64 rows x 128 channels (powers of two, at least 16), up to 8 row tiles per backward program
    (H200, the mixer's 8 x 8192 x 4352 conv: fwd+bwd 3.91 ms at 64-row tiles, 5.75 at 32).
    ARCHSPEC_CONV_TILES="block_t=32" overrides fields (a tuning hook for benchmarks/mixer.py)."""
    block_t = min(64, max(16, triton.next_power_of_2(seqlen)))
    block_c = min(128, max(16, triton.next_power_of_2(channels)))
    tiles = ConvTiles(block_t, block_c, min(8, triton.cdiv(seqlen, block_t)))
    fields = env_overrides("ARCHSPEC_CONV_TILES")
    return tiles._replace(**fields)


@triton.jit
def _positions(pos_ptr, rows, row_ok, HAS_SEQ: tl.constexpr):
    """Position of each row inside its packed sequence (the row index itself without packing)."""
    if HAS_SEQ:
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=0)
    else:
        pos = rows
    return pos


@triton.jit
def _preact(x_ptr, w_ptr, b_ptr, rows, pos, row_ok, cols, col_ok, stride_xt, stride_wc, stride_wk,
            D_CONV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(BLOCK_T, BLOCK_C) float32 pre-activation bias + sum_k w[:, k] * x[rows - lag_k] (x_ptr at its batch)."""
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(D_CONV):
        lag = D_CONV - 1 - k
        ok = row_ok & (pos >= lag)
        src = (rows - lag).to(tl.int64)[:, None] * stride_xt + cols[None, :]
        xv = tl.load(x_ptr + src, mask=ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + cols * stride_wc + k * stride_wk, mask=col_ok, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    return acc


@triton.jit
def _preact_grad(x_ptr, w_ptr, b_ptr, dy_ptr, rows, pos, row_ok, cols, col_ok, stride_xt, stride_wc, stride_wk,
                 stride_dyt, D_CONV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """(BLOCK_T, BLOCK_C) float32 gradient of the pre-activation at `rows`; zero on rows outside the tensor."""
    off = rows.to(tl.int64)[:, None] * stride_dyt + cols[None, :]
    g = tl.load(dy_ptr + off, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    if SILU:
        a = _preact(x_ptr, w_ptr, b_ptr, rows, pos, row_ok, cols, col_ok, stride_xt, stride_wc, stride_wk,
                    D_CONV, BLOCK_T, BLOCK_C, HAS_BIAS)
        sig = 1.0 / (1.0 + tl.exp(-a))
        g = g * sig * (1.0 + a * (1.0 - sig))
    return g


@triton.jit
def _add_tap_sums(dw_acc, x_b, g, rows, pos, row_ok, cols, col_ok, stride_xt, taps, D_CONV: tl.constexpr):
    """dw_acc (D_PAD, BLOCK_C) plus this tile's dweight terms: for tap k, the sum over rows of g * x[rows - lag_k]."""
    for k in tl.static_range(D_CONV):
        lag = D_CONV - 1 - k
        ok = row_ok & (pos >= lag)
        src = (rows - lag).to(tl.int64)[:, None] * stride_xt + cols[None, :]
        xv = tl.load(x_b + src, mask=ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        dw_acc += tl.where(taps[:, None] == k, tl.sum(g * xv, axis=0)[None, :], 0.0)
    return dw_acc


@triton.jit
def _store_partial_sums(dw_ptr, db_ptr, dw_acc, db_acc, part, taps, cols, col_ok, channels, D_CONV: tl.constexpr,
                        HAS_BIAS: tl.constexpr):
    """A backward program's float32 dweight (part, d_conv, channels) and dbias (part, channels) partial sums."""
    dw_dst = (part * D_CONV + taps).to(tl.int64)[:, None] * channels + cols[None, :]
    tl.store(dw_ptr + dw_dst, dw_acc, mask=(taps < D_CONV)[:, None] & col_ok[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part.to(tl.int64) * channels + cols, db_acc, mask=col_ok)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, pos_ptr, y_ptr, seqlen, channels,
                     stride_xb, stride_xt, stride_wc, stride_wk, stride_yb, stride_yt,
                     D_CONV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    pid_t, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, col_ok = rows < seqlen, cols < channels
    pos = _positions(pos_ptr, rows, row_ok, HAS_SEQ)
    x_b = x_ptr + pid_b.to(tl.int64) * stride_xb
    a = _preact(x_b, w_ptr, b_ptr, rows, pos, row_ok, cols, col_ok, stride_xt, stride_wc, stride_wk,
                D_CONV, BLOCK_T, BLOCK_C, HAS_BIAS)
    if SILU:
        a = a / (1.0 + tl.exp(-a))
    dst = pid_b.to(tl.int64) * stride_yb + rows.to(tl.int64)[:, None] * stride_yt + cols[None, :]
    tl.store(y_ptr + dst, a.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, pos_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, stage_ptr, seqlen, channels,
                     tiles_per_prog, stride_xb, stride_xt, stride_wc, stride_wk, stride_dyb, stride_dyt,
                     stride_dxb, stride_dxt,
                     D_CONV: tl.constexpr, D_PAD: tl.constexpr, HALO: tl.constexpr, BLOCK_T: tl.constexpr,
                     BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):
    """Each row's g = dL/d(pre-activation) formed once: the program walks its row tiles last to first and hands g
    to the tile before through `stage`, its own BLOCK_T x BLOCK_C float32 slice of global memory (cache-resident;
    barriers order the block's writes and reads). dx[t] = sum over lags of w[d_conv - 1 - lag] g[t + lag] reads
    the rows past the tile's end (the tile after's first rows, or the HALO rows after the program's last tile,
    formed first) before the tile's own g replaces them. H200, the mixer's conv (8 x 8192 x 4352, bf16): fwd+bwd
    4.99 -> 3.91 ms against recomputing g at every lag (20 shifted x loads, 4 dy loads, 4 sigmoids per tile
    instead of 8, 1, 1; 255 registers and spills at 8 warps, now 56 bytes of spills)."""
    pid_t, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < channels
    taps = tl.arange(0, D_PAD)
    local = tl.arange(0, BLOCK_T)
    x_b = x_ptr + pid_b.to(tl.int64) * stride_xb
    dy_b = dy_ptr + pid_b.to(tl.int64) * stride_dyb
    dx_b = dx_ptr + pid_b.to(tl.int64) * stride_dxb
    program = (pid_b * tl.num_programs(1) + pid_c) * tl.num_programs(0) + pid_t
    stage = stage_ptr + program.to(tl.int64) * BLOCK_T * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    rows_h = (pid_t + 1) * tiles_per_prog * BLOCK_T + tl.arange(0, HALO)
    ok_h = rows_h < seqlen
    g_h = _preact_grad(x_b, w_ptr, b_ptr, dy_b, rows_h, _positions(pos_ptr, rows_h, ok_h, HAS_SEQ), ok_h, cols,
                       col_ok, stride_xt, stride_wc, stride_wk, stride_dyt, D_CONV, HALO, BLOCK_C, HAS_BIAS, SILU)
    tl.store(stage + tl.arange(0, HALO)[:, None] * BLOCK_C, g_h)
    tl.debug_barrier()
    dw_acc = tl.zeros((D_PAD, BLOCK_C), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for j in range(tiles_per_prog):
        rows = (pid_t * tiles_per_prog + tiles_per_prog - 1 - j) * BLOCK_T + local
        row_ok = rows < seqlen
        pos = _positions(pos_ptr, rows, row_ok, HAS_SEQ)
        g = _preact_grad(x_b, w_ptr, b_ptr, dy_b, rows, pos, row_ok, cols, col_ok, stride_xt, stride_wc,
                         stride_wk, stride_dyt, D_CONV, BLOCK_T, BLOCK_C, HAS_BIAS, SILU)
        db_acc += tl.sum(g, axis=0)
        dw_acc = _add_tap_sums(dw_acc, x_b, g, rows, pos, row_ok, cols, col_ok, stride_xt, taps, D_CONV)
        w_last = tl.load(w_ptr + cols * stride_wc + (D_CONV - 1) * stride_wk, mask=col_ok, other=0.0)
        dx = g * w_last.to(tl.float32)[None, :]
        for lag in tl.static_range(1, D_CONV):  # rows past the tile's end, staged by the tile after
            later = rows + lag
            later_ok = later < seqlen
            keep = later_ok & (_positions(pos_ptr, later, later_ok, HAS_SEQ) >= lag) & (local + lag >= BLOCK_T)
            g_after = tl.load(stage + (local + lag - BLOCK_T)[:, None] * BLOCK_C, mask=keep[:, None], other=0.0)
            wk = tl.load(w_ptr + cols * stride_wc + (D_CONV - 1 - lag) * stride_wk, mask=col_ok, other=0.0)
            dx += g_after * wk.to(tl.float32)[None, :]
        tl.debug_barrier()  # the tile after's rows are read by every thread
        tl.store(stage + local[:, None] * BLOCK_C, g)
        tl.debug_barrier()
        for lag in tl.static_range(1, D_CONV):  # rows inside the tile
            later = rows + lag
            later_ok = later < seqlen
            keep = later_ok & (_positions(pos_ptr, later, later_ok, HAS_SEQ) >= lag) & (local + lag < BLOCK_T)
            g_in = tl.load(stage + (local + lag)[:, None] * BLOCK_C, mask=keep[:, None], other=0.0)
            wk = tl.load(w_ptr + cols * stride_wc + (D_CONV - 1 - lag) * stride_wk, mask=col_ok, other=0.0)
            dx += g_in * wk.to(tl.float32)[None, :]
        dst = rows.to(tl.int64)[:, None] * stride_dxt + cols[None, :]
        tl.store(dx_b + dst, dx.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    _store_partial_sums(dw_ptr, db_ptr, dw_acc, db_acc, pid_b * tl.num_programs(0) + pid_t, taps, cols, col_ok,
                        channels, D_CONV, HAS_BIAS)


def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], pos: Optional[Tensor], silu: bool,
                  tiles: ConvTiles) -> Tensor:
    """x (batch, seqlen, channels), unit channel stride -> y contiguous (batch, seqlen, channels) in x.dtype."""
    batch, seqlen, channels = x.shape
    y = torch.empty(batch, seqlen, channels, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(seqlen, tiles.block_t), triton.cdiv(channels, tiles.block_c), batch)
    _conv_fwd_kernel[grid](
        x, weight, weight if bias is None else bias, x if pos is None else pos, y, seqlen, channels,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        D_CONV=weight.shape[1], BLOCK_T=tiles.block_t, BLOCK_C=tiles.block_c,
        HAS_BIAS=bias is not None, HAS_SEQ=pos is not None, SILU=silu, num_warps=4,
    )
    return y


def _conv_backward(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], pos: Optional[Tensor],
                   silu: bool, tiles: ConvTiles) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """dy, x (batch, seqlen, channels) -> dx (like x, contiguous), dweight (channels, d_conv) and dbias (float32)."""
    batch, seqlen, channels = x.shape
    d_conv = weight.shape[1]
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    dx = torch.empty(batch, seqlen, channels, device=x.device, dtype=x.dtype)
    n_tprog = triton.cdiv(triton.cdiv(seqlen, tiles.block_t), tiles.tiles_per_prog)
    dw_part = torch.empty(batch * n_tprog, d_conv, channels, device=x.device, dtype=torch.float32)
    db_part = torch.empty(batch * n_tprog, channels, device=x.device, dtype=torch.float32) if bias is not None else None
    grid = (n_tprog, triton.cdiv(channels, tiles.block_c), batch)
    stage = torch.empty(grid[0] * grid[1] * grid[2], tiles.block_t, tiles.block_c, device=x.device,
                        dtype=torch.float32)
    _conv_bwd_kernel[grid](
        x, weight, weight if bias is None else bias, x if pos is None else pos, dy, dx, dw_part,
        dw_part if db_part is None else db_part, stage, seqlen, channels, tiles.tiles_per_prog,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), dy.stride(0), dy.stride(1),
        dx.stride(0), dx.stride(1),
        D_CONV=d_conv, D_PAD=triton.next_power_of_2(d_conv), HALO=triton.next_power_of_2(max(1, d_conv - 1)),
        BLOCK_T=tiles.block_t, BLOCK_C=tiles.block_c, HAS_BIAS=bias is not None, HAS_SEQ=pos is not None,
        SILU=silu, num_warps=8,
    )
    return dx, dw_part.sum(0).t().contiguous(), None if db_part is None else db_part.sum(0)


class _CausalConv1d(torch.autograd.Function):
    """Autograd wrapper: saves x, weight, bias (and the packed positions); the backward recomputes the
    pre-activation."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], pos: Optional[Tensor], silu: bool,
                tiles: ConvTiles) -> Tensor:
        ctx.save_for_backward(x, weight, bias, pos)
        ctx.silu, ctx.tiles = silu, tiles
        return _conv_forward(x, weight, bias, pos, silu, tiles)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight, bias, pos = ctx.saved_tensors
        dx, dw, db = _conv_backward(dy, x, weight, bias, pos, ctx.silu, ctx.tiles)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dw.to(weight.dtype) if need[1] else None,
                db.to(bias.dtype) if db is not None and need[2] else None, None, None, None)


def causal_conv1d_triton(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    activation: Optional[str] = "silu",
    cu_seqlens: Optional[Tensor] = None,
    tiles: Optional[ConvTiles] = None,
) -> Tensor:
    """Triton causal depthwise conv1d + optional SiLU; differentiable in x, weight and bias.

    x (batch, seqlen, channels) (copied first unless x.stride(-1) == 1); weight (channels, d_conv), d_conv <= 8;
    bias (channels,) or None; activation "silu" or None; cu_seqlens (nseqs + 1,) offsets of packed sequences
    (batch 1). Arguments are not validated here (archspec.kernels.conv.causal_conv1d does it).
    Accumulates in float32; returns y contiguous (batch, seqlen, channels) in x.dtype. tiles: default_tiles().
    """
    x = x if x.stride(-1) == 1 else x.contiguous()
    seqlen, channels = x.shape[1], x.shape[2]
    pos = None if cu_seqlens is None else positions_in_sequences(cu_seqlens, seqlen)
    tiles = default_tiles(seqlen, channels) if tiles is None else tiles
    bias = bias.contiguous() if bias is not None else None  # the kernels read bias[c] at c
    return _CausalConv1d.apply(x, weight, bias, pos, activation == "silu", tiles)
