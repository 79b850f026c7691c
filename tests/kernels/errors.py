"""The error measure the kernel tests hold every fast path to, the float64 copies their references take, and the
gradients of our scan on a copy of its inputs."""

from __future__ import annotations

from typing import Optional

import torch

from archspec.kernels.ssd import ssd_scan_triton


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref||, in float64 on out's device (gradients detached)."""
    out, ref = out.detach().double(), ref.detach().to(out.device).double()
    return float((out - ref).norm() / ref.norm())


def float64_leaves(inputs: dict, requires_grad: Optional[bool] = None) -> dict:
    """The float64 reference's copy of keyword inputs: each floating tensor detached, in float64, as a leaf that
    requires grad as its original does (or as requires_grad says); every other value as it is."""
    return {k: v.detach().double().requires_grad_(v.requires_grad if requires_grad is None else requires_grad)
            if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def scan_gradients(inputs: dict, chunk_size: int, dy: torch.Tensor, dfinal: torch.Tensor) -> dict:
    """The gradients of every floating input of ssd_scan_triton, run on fresh leaves copied from `inputs`, for the
    gradients dy of y and dfinal of the final states."""
    leaves = {k: v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point()
              else v for k, v in inputs.items()}
    y, final = ssd_scan_triton(chunk_size=chunk_size, return_final_states=True, **leaves)
    torch.autograd.backward([y, final], [dy, dfinal])
    return {k: v.grad for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
