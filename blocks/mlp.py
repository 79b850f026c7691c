"""Position-wise feed-forward block (SwiGLU or GELU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MLP_KINDS = ("swiglu", "gelu")


class MLP(nn.Module):
    """x (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    swiglu: fc1 (d_model -> 2 * hidden, value then gate), y = fc2(value * silu(gate)) as mamba_ssm's GatedMLP.
    gelu: fc1 (d_model -> hidden), y = fc2(gelu(fc1(x))) with the exact (erf) GELU.
    Keeps no decode state: init_cache returns None.
    """

    def __init__(self, d_model: int, hidden: int, kind: str = "swiglu", bias: bool = False,
                 layer_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        if kind not in MLP_KINDS:
            raise ValueError(f"kind: expected one of {MLP_KINDS}, got {kind!r}")
        if hidden <= 0:
            raise ValueError(f"hidden: expected a positive integer, got {hidden}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.hidden, self.kind, self.layer_idx = d_model, hidden, kind, layer_idx
        self.fc1 = nn.Linear(d_model, 2 * hidden if kind == "swiglu" else hidden, bias=bias, **factory)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias, **factory)

    def init_cache(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> None:
        """An MLP has no decode state."""
        return None

    def forward(self, x: torch.Tensor, cache: None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Token-wise, so cache and cu_seqlens change nothing."""
        h = self.fc1(x)
        if self.kind == "swiglu":
            value, gate = h.chunk(2, dim=-1)
            h = value * F.silu(gate)
        else:
            h = F.gelu(h)
        return self.fc2(h)
