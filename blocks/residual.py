"""Pre-norm residual wrapper around any mixer."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archspec.blocks.norm import make_norm


class ResidualBlock(nn.Module):
    """out = x + mixer(norm(x)), x (batch, seqlen, d_model).

    Submodules `norm` and `mixer` (so official Mamba-2 checkpoints load as backbone.layers.{i}.norm / .mixer).
    residual_in_fp32: the residual stream is kept (and returned) in at least float32 whatever the mixer's
    dtype; otherwise out has x's dtype. The normalised input is cast to the norm weight's dtype for the mixer.
    """

    def __init__(self, mixer: nn.Module, d_model: int, norm: str = "rmsnorm", norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.norm = make_norm(norm, d_model, norm_eps, device=device, dtype=dtype)
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def init_cache(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> Any:
        """The mixer's decode cache (None for stateless mixers)."""
        return self.mixer.init_cache(batch_size, max_seqlen, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: Any = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """cache and cu_seqlens are passed to the mixer (cu_seqlens only when given)."""
        h = self.norm(x).to(self.norm.weight.dtype)
        extra = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        h = self.mixer(h, cache=cache, **extra)
        residual = x.to(torch.promote_types(x.dtype, torch.float32)) if self.residual_in_fp32 else x
        return residual + h.to(residual.dtype)
