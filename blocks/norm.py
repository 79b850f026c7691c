"""Normalisation layers: RMSNorm, the gated (grouped) RMSNorm of Mamba-2, and LayerNorm.

All of them compute in float32 (float64 for float64 inputs) and return the input's dtype, so a float32
residual stream can be normalised with half-precision weights (and the other way round) without a dtype clash.
The RMSNorms go through archspec.kernels.norm.rms_norm: the fused Triton kernels on CUDA, PyTorch on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archspec.kernels.norm import rms_norm

NORM_KINDS = ("rmsnorm", "layernorm")


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or float64 when it already is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension (size d).

    Input (..., d) of any float dtype; computed in at least float32; output in the input dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"d: expected a positive size, got {d}")
        self.d = d
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """Mamba-2's gated RMSNorm, normalising each group of `group_size` channels separately.

    forward(x, z=None), x and z (..., d):
      norm_before_gate=False: y = rmsnorm_g(x * silu(z)) * weight
      norm_before_gate=True:  y = rmsnorm_g(x) * weight * silu(z)
    where rmsnorm_g normalises each contiguous group of `group_size` channels (default: all d).
    Without z it is a grouped RMSNorm. Computed in at least float32; output in x's dtype.
    """

    def __init__(
        self,
        d: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        group_size = d if group_size is None else group_size
        if group_size <= 0 or d % group_size != 0:
            raise ValueError(f"group_size: expected a positive divisor of d={d}, got {group_size}")
        self.d = d
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, z=z, eps=self.eps, group_size=self.group_size,
                        norm_before_gate=self.norm_before_gate)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, group_size={self.group_size}, norm_before_gate={self.norm_before_gate}"


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in float32 (or float64), returning the input's dtype (input (..., d))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _upcast(x)
        weight = None if self.weight is None else self.weight.to(h.dtype)
        bias = None if self.bias is None else self.bias.to(h.dtype)
        y = F.layer_norm(h, self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


def make_norm(kind: str, d: int, eps: float = 1e-5, device=None, dtype=None) -> nn.Module:
    """The pre-norm layer named `kind` ("rmsnorm" or "layernorm") over d channels."""
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps, device=device, dtype=dtype)
    if kind == "layernorm":
        return LayerNorm(d, eps=eps, device=device, dtype=dtype)
    raise ValueError(f"kind: expected one of {NORM_KINDS}, got {kind!r}")
