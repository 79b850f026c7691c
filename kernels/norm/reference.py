"""The (gated, grouped) RMSNorm in plain PyTorch, and the argument checks every implementation shares.

This is the CPU production path and the reference the Triton kernels are tested against: differentiable through
autograd, computed in float32 (float64 when given float64 inputs), returned in x's dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_rms_norm_inputs", "rms_norm_reference"]


def check_rms_norm_inputs(x: Tensor, weight: Tensor, z: Optional[Tensor], group_size: Optional[int],
                          eps: float) -> int:
    """Validates the arguments of rms_norm and returns the group size (d when group_size is None).

    x (..., d) floating point with d >= 1; weight (d,); z None or the shape of x; group_size a positive divisor
    of d; eps finite and >= 0; all tensors on x's device. Raises ValueError naming the offending argument.
    """
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., d) with d >= 1, got {tuple(x.shape)}")
    d = x.shape[-1]
    if not weight.is_floating_point() or tuple(weight.shape) != (d,):
        raise ValueError(f"weight must be a floating-point tensor of shape (d,) = ({d},), got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    if z is not None and (not z.is_floating_point() or z.shape != x.shape):
        raise ValueError(f"z must be a floating-point tensor of the shape of x {tuple(x.shape)}, got {z.dtype} "
                         f"{tuple(z.shape)}")
    for name, t in (("weight", weight), ("z", z)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must share a device")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
    if group_size is None:
        return d
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or d % group_size:
        raise ValueError(f"group_size must be a positive divisor of d = {d}, got {group_size!r}")
    return group_size


def rms_norm_reference(
    x: Tensor,
    weight: Tensor,
    *,
    z: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_size: Optional[int] = None,
    norm_before_gate: bool = False,
) -> Tensor:
    """Gated grouped RMSNorm: x, z (..., d), weight (d,) -> y (..., d) in x.dtype.

    rmsnorm_g(h) = h / sqrt(mean over each group of group_size channels of h^2 + eps).
    z None: y = rmsnorm_g(x) * weight; norm_before_gate False: y = rmsnorm_g(x * silu(z)) * weight;
    norm_before_gate True: y = rmsnorm_g(x) * weight * silu(z). Computed in float32 (or float64).
    """
    group_size = check_rms_norm_inputs(x, weight, z, group_size, eps)
    compute = torch.promote_types(x.dtype, torch.float32)
    h = x.to(compute)
    gate = None if z is None else F.silu(z.to(compute))
    if gate is not None and not norm_before_gate:
        h = h * gate
    grouped = h.unflatten(-1, (h.shape[-1] // group_size, group_size))
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = normed.flatten(-2) * weight.to(compute)
    if gate is not None and norm_before_gate:
        y = y * gate
    return y.to(x.dtype)
