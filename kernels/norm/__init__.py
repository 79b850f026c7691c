"""(Gated, grouped) RMSNorm: one dispatch point `rms_norm`, the PyTorch reference and the fused Triton kernels.

The Triton module is imported only when dispatched to, so the CPU path never needs a GPU toolchain.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..dispatch import resolve_backend
from .reference import check_rms_norm_inputs, rms_norm_reference

__all__ = ["MAX_GROUP_SIZE", "check_rms_norm_inputs", "rms_norm", "rms_norm_reference"]

MAX_GROUP_SIZE = 8192  # the Triton kernels hold one group in registers as a power-of-two block of at most this


def rms_norm(
    x: Tensor,
    weight: Tensor,
    *,
    z: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_size: Optional[int] = None,
    norm_before_gate: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Gated grouped RMSNorm (mamba_ssm's RMSNormGated semantics); differentiable in x, weight and z.

    x (..., d), last dim unit stride preferred (leading dims any strides); weight (d,); z None or like x;
    group_size a divisor of d (default d): each group of group_size channels is normalised on its own,
    rmsnorm_g(h) = h / sqrt(mean_group(h^2) + eps).
    z None: y = rmsnorm_g(x) * weight; norm_before_gate False: y = rmsnorm_g(x * silu(z)) * weight;
    norm_before_gate True: y = rmsnorm_g(x) * weight * silu(z). float32 math; y (..., d) in x.dtype.
    backend: "auto" (Triton on CUDA when the kernel fits: group_size at most MAX_GROUP_SIZE and x not float64;
    else the PyTorch reference), "triton" (on CPU tensors only with TRITON_INTERPRET=1) or "torch".
    Raises ValueError for bad arguments.
    """
    group = check_rms_norm_inputs(x, weight, z, group_size, eps)
    if backend == "auto" and (x.dtype == torch.float64 or group > MAX_GROUP_SIZE):
        backend = "torch"
    if resolve_backend(backend, x.is_cuda) == "triton":
        from .triton_norm import rms_norm_triton

        return rms_norm_triton(x, weight, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
    return rms_norm_reference(x, weight, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
