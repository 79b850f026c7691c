"""`ssd_step_triton`: one SSD decode token in one kernel, updating the state in place."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..checks import check_ssd_step_inputs
from .common import prepare_dt
from .config import pow2
from .forward import dt_limit_flags

__all__ = ["ssd_step_triton"]

_NO_LIMIT = (0.0, float("inf"))


@triton.jit
def _step_kernel(
    state_ptr, x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, bias_ptr, y_ptr,
    stride_s_b, stride_s_h, stride_s_p, stride_x_b, stride_x_h, stride_dt_b, stride_dt_h,
    stride_b_b, stride_b_g, stride_c_b, stride_c_g, stride_z_b, stride_z_h, stride_y_b, stride_y_h,
    headdim, dstate, heads_per_group, dt_lo, dt_hi,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, D_HAS_HDIM: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LO: tl.constexpr,
    HAS_HI: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    group = head // heads_per_group

    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + head).to(tl.float32)
    dt = tl.load(dt_ptr + row * stride_dt_b + head * stride_dt_h).to(tl.float32)
    dt = prepare_dt(dt, bias, dt_lo, dt_hi, SOFTPLUS, HAS_LO, HAS_HI)
    decay = tl.exp(dt * tl.load(a_ptr + head).to(tl.float32))
    x = tl.load(x_ptr + row * stride_x_b + head * stride_x_h + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b_b + group * stride_b_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + row * stride_c_b + group * stride_c_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    ptrs = state_ptr + row * stride_s_b + head * stride_s_h + offs_p[:, None] * stride_s_p + offs_n[None, :]
    mask = mask_p[:, None] & mask_n[None, :]
    h = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    h = h * decay + (dt * x)[:, None] * b[None, :]
    tl.store(ptrs, h.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(h * c[None, :], 1)
    if HAS_D:
        if D_HAS_HDIM:
            y += x * tl.load(d_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            y += x * tl.load(d_ptr + head).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row * stride_z_b + head * stride_z_h + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + row * stride_y_b + head * stride_y_h + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


def ssd_step_triton(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
) -> Tensor:
    """One decode token: h = exp(dt' A) h + dt' x B^T; y = h C + D x (times silu(z)); h updated in place.

    state (batch, nheads, headdim, dstate) (float32 recommended; unit last stride); x (batch, nheads, headdim);
    dt (batch, nheads); B, C (batch, ngroups, dstate); D (nheads,) or (nheads, headdim); z like x; dt_bias
    (nheads,). Computes in float32; returns y (batch, nheads, headdim) in x.dtype. Not differentiable.
    """
    batch, nheads, headdim, ngroups, dstate = check_ssd_step_inputs(
        state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit)
    if state.stride(-1) != 1:
        raise ValueError(f"state must have a unit stride along dstate to be updated in place, got {state.stride()}")
    has_lo, has_hi, lo, hi = dt_limit_flags((float(dt_limit[0]), float(dt_limit[1])))
    x, B, C, A = x.contiguous(), B.contiguous(), C.contiguous(), A.contiguous()
    z, D, dt_bias = (t.contiguous() if t is not None else None for t in (z, D, dt_bias))
    y = torch.empty_like(x)
    block_n = pow2(dstate)
    block_p = min(pow2(headdim), max(16, 4096 // block_n))
    grid = (batch, nheads, triton.cdiv(headdim, block_p))
    _step_kernel[grid](
        state, x, dt, A, B, C, D, z, dt_bias, y,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0, y.stride(0), y.stride(1),
        headdim, dstate, nheads // ngroups, lo, hi,
        BLOCK_P=block_p, BLOCK_N=block_n, HAS_D=D is not None, D_HAS_HDIM=D is not None and D.dim() == 2,
        HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LO=has_lo,
        HAS_HI=has_hi, num_warps=4,
    )
    return y
