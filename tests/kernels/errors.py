"""The error measure the kernel tests hold every fast path to."""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref||, in float64 on out's device (gradients detached)."""
    out, ref = out.detach().double(), ref.detach().to(out.device).double()
    return float((out - ref).norm() / ref.norm())
