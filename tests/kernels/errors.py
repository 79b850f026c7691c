"""The error measure the kernel tests hold every fast path to, and the float64 copies their references take."""

from __future__ import annotations

from typing import Optional

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref||, in float64 on out's device (gradients detached)."""
    out, ref = out.detach().double(), ref.detach().to(out.device).double()
    return float((out - ref).norm() / ref.norm())


def float64_leaves(inputs: dict, requires_grad: Optional[bool] = None) -> dict:
    """The float64 reference's copy of keyword inputs: each floating tensor detached, in float64, as a leaf that
    requires grad as its original does (or as requires_grad says); every other value as it is."""
    return {k: v.detach().double().requires_grad_(v.requires_grad if requires_grad is None else requires_grad)
            if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}
