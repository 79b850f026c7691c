"""Fused (gated, grouped) RMSNorm in Triton: one pass forward, one pass backward, under one autograd.Function.

Rows are the flattened leading dims of x (..., d); each group of `group_size` channels is normalised on its own.
Forward: a program takes BLOCK_M rows x one group, reads x (and z) once, writes y and the per-(row, group) rstd.
Backward: a program walks a contiguous range of rows of one group, recomputes the normalised input from x, z and
the stored rstd, writes dx (and dz) and accumulates its dweight partial sum in float32 registers; the partials
(n_programs, d) are summed by torch. All math in float32.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import MAX_GROUP_SIZE
from .reference import check_rms_norm_inputs

__all__ = ["rms_norm_triton"]

# Elements of a tile per thread. The backward keeps about twice as many float32 tiles live as the forward. ptxas
# for sm_90 (triton 3.9, bf16 with z): forward 80 registers, backward at most 140 and no spills up to group 4096;
# at group 8192 (16 warps) the backward spills about 0.7 KB per thread.
_FWD_PER_THREAD = 16
_BWD_PER_THREAD = 8
_CPU_BWD_PROGRAMS = 4  # row programs per group in the backward under the interpreter


@triton.jit
def _rms_norm_fwd_kernel(
    X, Z, W, Y, RSTD,
    n_rows, stride_x, stride_z, group_size, ngroups, d, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
):
    """y[r, g*G:(g+1)*G] and rstd[r, g] for the BLOCK_M rows of program 0 and the group of program 1; y (n_rows, d)."""
    group = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < group_size
    mask = row_ok[:, None] & col_ok[None, :]
    channels = group * group_size + cols
    rows64 = rows.to(tl.int64)
    h = tl.load(X + rows64[:, None] * stride_x + channels[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + rows64[:, None] * stride_z + channels[None, :], mask=mask, other=0.0).to(tl.float32)
        silu_z = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            h = h * silu_z
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / group_size + eps)
    w = tl.load(W + channels, mask=col_ok, other=0.0).to(tl.float32)
    y = h * rstd[:, None] * w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y = y * silu_z
    tl.store(Y + rows64[:, None] * d + channels[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows64 * ngroups + group, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(
    X, Z, W, DY, RSTD, DX, DZ, DW_PART,
    n_rows, stride_x, stride_z, stride_dy, group_size, ngroups, d, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
):
    """dx, dz (n_rows, d) for rows [p*rows_per_program, (p+1)*rows_per_program) of one group; dweight partial of p.

    With h the normalised input (x, or x*silu(z) when gating first), n = h*rstd and u the upstream gradient of
    n*weight: dn = u*weight, dh = rstd*(dn - n*mean_group(dn*n)), dweight += sum_rows(u*n).
    """
    pid = tl.program_id(0)
    group = tl.program_id(1)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < group_size
    channels = group * group_size + cols
    w = tl.load(W + channels, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row_begin = pid * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    for start in range(row_begin, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + channels[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + channels[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows64 * ngroups + group, mask=row_ok, other=0.0)
        h = x
        u = dy
        if HAS_Z:
            z = tl.load(Z + rows64[:, None] * stride_z + channels[None, :], mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            silu_z = z * sig
            dsilu_z = sig * (1.0 + z * (1.0 - sig))
            if NORM_BEFORE_GATE:
                u = dy * silu_z
            else:
                h = x * silu_z
        n = h * rstd[:, None]
        dw_acc += u * n
        dn = u * w[None, :]
        dh = (dn - n * (tl.sum(dn * n, axis=1) / group_size)[:, None]) * rstd[:, None]
        dx = dh
        if HAS_Z:
            if NORM_BEFORE_GATE:
                dz = dy * n * w[None, :] * dsilu_z
            else:
                dx = dh * silu_z
                dz = dh * x * dsilu_z
            tl.store(DZ + rows64[:, None] * d + channels[None, :], dz.to(DZ.dtype.element_ty), mask=mask)
        tl.store(DX + rows64[:, None] * d + channels[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * d + channels, tl.sum(dw_acc, axis=0), mask=col_ok)


def _tiling(group_size: int, n_rows: int, per_thread: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_N channels, num_warps) for one program's tile of a group.

    A tile holds about 256 * per_thread elements (at least one row), spread over num_warps warps so that each
    thread keeps per_thread of them (at most 16 warps).
    """
    block_n = triton.next_power_of_2(group_size)
    block_m = min(max(1, 256 * per_thread // block_n), triton.next_power_of_2(max(n_rows, 1)))
    num_warps = min(max(block_m * block_n // (32 * per_thread), 1), 16)
    return block_m, block_n, num_warps


def _rows(t: Tensor, d: int) -> Tensor:
    """t (..., d) as a (rows, d) view (a copy only when the leading dims cannot be flattened) with unit last stride."""
    t = t.reshape(-1, d)
    return t if t.stride(-1) == 1 or t.shape[0] == 0 else t.contiguous()


def _forward(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
             norm_before_gate: bool) -> tuple[Tensor, Tensor]:
    """x, z (rows, d) -> y (rows, d) in x.dtype, rstd (rows, d // group_size) float32."""
    n_rows, d = x.shape
    ngroups = d // group_size
    y = torch.empty((n_rows, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty((n_rows, ngroups), dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, rstd
    block_m, block_n, num_warps = _tiling(group_size, n_rows, _FWD_PER_THREAD)
    grid = (triton.cdiv(n_rows, block_m), ngroups)
    _rms_norm_fwd_kernel[grid](
        x, x if z is None else z, weight, y, rstd,
        n_rows, x.stride(0), x.stride(0) if z is None else z.stride(0), group_size, ngroups, d, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate,
        num_warps=num_warps,
    )
    return y, rstd


def _row_programs(device: torch.device, n_row_blocks: int, ngroups: int) -> int:
    """How many programs share the rows of one group in the backward (each keeps one dweight partial)."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_row_blocks, target // ngroups))
    return max(1, min(n_row_blocks, _CPU_BWD_PROGRAMS))


def _backward(dy: Tensor, x: Tensor, weight: Tensor, z: Optional[Tensor], rstd: Tensor, group_size: int,
              norm_before_gate: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """dy, x, z (rows, d), rstd (rows, ngroups) -> dx (x.dtype), dz (z.dtype) or None, dweight (weight.dtype)."""
    n_rows, d = x.shape
    ngroups = d // group_size
    dx = torch.empty((n_rows, d), dtype=x.dtype, device=x.device)
    dz = None if z is None else torch.empty((n_rows, d), dtype=z.dtype, device=x.device)
    if n_rows == 0:
        return dx, dz, torch.zeros_like(weight)
    block_m, block_n, num_warps = _tiling(group_size, n_rows, _BWD_PER_THREAD)
    programs = _row_programs(x.device, triton.cdiv(n_rows, block_m), ngroups)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, block_m), programs) * block_m
    programs = triton.cdiv(n_rows, rows_per_program)
    dw_part = torch.empty((programs, d), dtype=torch.float32, device=x.device)
    _rms_norm_bwd_kernel[(programs, ngroups)](
        x, x if z is None else z, weight, dy, rstd, dx, dx if dz is None else dz, dw_part,
        n_rows, x.stride(0), x.stride(0) if z is None else z.stride(0), dy.stride(0), group_size, ngroups, d,
        rows_per_program,
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate,
        num_warps=num_warps,
    )
    return dx, dz, dw_part.sum(dim=0).to(weight.dtype)


class _RMSNormFn(torch.autograd.Function):
    """x, z (rows, d) with unit last stride, weight (d,) -> y (rows, d); saves rstd (rows, ngroups) float32."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                norm_before_gate: bool) -> Tensor:
        y, rstd = _forward(x, weight, z, eps, group_size, norm_before_gate)
        ctx.save_for_backward(x, weight, z, rstd)
        ctx.group_size = group_size
        ctx.norm_before_gate = norm_before_gate
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Optional[Tensor], ...]:
        x, weight, z, rstd = ctx.saved_tensors
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        dx, dz, dweight = _backward(dy, x, weight, z, rstd, ctx.group_size, ctx.norm_before_gate)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dweight if need[1] else None, dz if need[2] else None, None, None, None)


def rms_norm_triton(
    x: Tensor,
    weight: Tensor,
    *,
    z: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_size: Optional[int] = None,
    norm_before_gate: bool = False,
) -> Tensor:
    """Gated grouped RMSNorm by the fused Triton kernels; differentiable in x, weight and z.

    x, z (..., d) (any leading strides); weight (d,) of any float dtype; group_size a divisor of d of at most
    MAX_GROUP_SIZE (default d). Semantics as archspec.kernels.norm.rms_norm_reference; float32 math;
    y (..., d) in x.dtype.
    """
    group_size = check_rms_norm_inputs(x, weight, z, group_size, eps)
    if group_size > MAX_GROUP_SIZE:
        raise ValueError(f"group_size must be at most {MAX_GROUP_SIZE} for the Triton backend, got {group_size}; "
                         "use backend='torch'")
    d = x.shape[-1]
    z_rows = None if z is None else _rows(z, d)
    y = _RMSNormFn.apply(_rows(x, d), weight.contiguous(), z_rows, float(eps), group_size, bool(norm_before_gate))
    return y.reshape(x.shape)
