"""Causal depthwise conv1d (+ SiLU), channel-last, as the Mamba-2 mixer applies it to xBC: one dispatch point
(`causal_conv1d`), its argument checks, and the PyTorch reference. The Triton kernels (triton_conv) are
imported only when dispatched to.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..dispatch import resolve_backend
from ..offsets import host_offsets, non_decreasing_to
from .reference import causal_conv1d_reference, positions_in_sequences

__all__ = ["ACTIVATIONS", "MAX_D_CONV", "causal_conv1d", "causal_conv1d_reference", "check_conv_inputs",
           "positions_in_sequences"]

ACTIVATIONS = ("silu", None)
MAX_D_CONV = 8


def check_conv_inputs(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
                      cu_seqlens: Optional[Tensor]) -> None:
    """Raise a ValueError naming the argument unless the causal_conv1d arguments fit together."""
    if x.dim() != 3 or min(x.shape) < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point (batch, seqlen, channels) tensor with positive sizes, got "
                         f"shape {tuple(x.shape)} dtype {x.dtype}")
    channels = x.shape[2]
    if weight.dim() != 2 or weight.shape[0] != channels or not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point (channels, d_conv) tensor with channels = {channels}, "
                         f"got shape {tuple(weight.shape)} dtype {weight.dtype}")
    if not 1 <= weight.shape[1] <= MAX_D_CONV:
        raise ValueError(f"weight: d_conv = weight.shape[1] must be between 1 and {MAX_D_CONV}, got {weight.shape[1]}")
    if bias is not None and (tuple(bias.shape) != (channels,) or not bias.is_floating_point()):
        raise ValueError(f"bias must be a floating-point ({channels},) tensor or None, got shape "
                         f"{tuple(bias.shape)} dtype {bias.dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    if cu_seqlens is None:
        return
    if x.shape[0] != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got batch {x.shape[0]}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor of nseqs + 1 >= 2 offsets, got shape "
                         f"{tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}")
    seqlen = x.shape[1]
    offsets = host_offsets(cu_seqlens)
    if not non_decreasing_to(offsets, seqlen):
        raise ValueError(f"cu_seqlens must be non-decreasing offsets from 0 to seqlen = {seqlen}, got "
                         f"{list(offsets)}")


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    activation: Optional[str] = "silu",
    cu_seqlens: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """Causal depthwise conv1d with an optional SiLU, channel-last.

    y[b, t, c] = act(bias[c] + sum_{k < d_conv} weight[c, k] * x[b, t - (d_conv - 1) + k, c]), x taken as 0 at
    negative times and, with cu_seqlens, before the start of each packed sequence.
    x (batch, seqlen, channels), ideally with x.stride(-1) == 1 (other strides free: a column slice works
    without a copy); weight (channels, d_conv), d_conv <= 8 (nn.Conv1d's weight[:, 0, :]); bias (channels,) or
    None; activation "silu" or None; cu_seqlens (nseqs + 1,) integer offsets of sequences packed along seqlen
    (batch 1). Accumulates in float32; returns y contiguous (batch, seqlen, channels) in x.dtype; differentiable.
    backend: "auto" (Triton for CUDA tensors, else the PyTorch reference), "triton" (CPU tensors need
    TRITON_INTERPRET=1), "torch".
    """
    check_conv_inputs(x, weight, bias, activation, cu_seqlens)
    if resolve_backend(backend, x.is_cuda) == "triton":
        from .triton_conv import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, activation=activation, cu_seqlens=cu_seqlens)
    return causal_conv1d_reference(x, weight, bias, activation=activation, cu_seqlens=cu_seqlens)
