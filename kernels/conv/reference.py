"""PyTorch reference of the causal depthwise conv1d (+ SiLU), channel-last: F.conv1d on a transposed copy, or a sum
of time-shifted copies masked at sequence starts for packed sequences."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d_reference", "positions_in_sequences"]


def positions_in_sequences(cu_seqlens: Tensor, seqlen: int) -> Tensor:
    """(seqlen,) int32: each packed token's position inside its own sequence; cu_seqlens (nseqs + 1,) offsets."""
    t = torch.arange(seqlen, device=cu_seqlens.device)
    starts = cu_seqlens.to(torch.int64)
    seq = torch.searchsorted(starts[1:], t, right=True)
    return (t - starts[seq]).to(torch.int32)


def causal_conv1d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    activation: Optional[str] = "silu",
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """y[b, t, c] = act(bias[c] + sum_k weight[c, k] * x[b, t - (d_conv - 1) + k, c]), zero before each start.

    x (batch, seqlen, channels), any strides; weight (channels, d_conv); bias (channels,) or None; activation
    "silu" or None; cu_seqlens (nseqs + 1,) offsets of sequences packed along seqlen (batch 1): no tap reads
    across a sequence start. Accumulates in float32 (float64 for float64 x); differentiable.
    Returns y contiguous (batch, seqlen, channels) in x.dtype.
    """
    seqlen, channels, d_conv = x.shape[1], x.shape[2], weight.shape[1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, w = x.to(acc_dtype), weight.to(acc_dtype)
    b = None if bias is None else bias.to(acc_dtype)
    if cu_seqlens is None:
        out = F.conv1d(xf.transpose(1, 2), w[:, None, :], b, padding=d_conv - 1, groups=channels)
        out = out[..., :seqlen].transpose(1, 2)
    else:
        out = _packed_shifted_sum(xf, w, positions_in_sequences(cu_seqlens, seqlen)[:, None])
        out = out if b is None else out + b
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype).contiguous()


def _packed_shifted_sum(x: Tensor, weight: Tensor, pos: Tensor) -> Tensor:
    """sum_k weight[:, k] * x shifted later by lag d_conv - 1 - k, zero where the lag crosses a sequence start.

    x (batch, seqlen, channels); weight (channels, d_conv); pos (seqlen, 1) positions inside the packed sequences.
    """
    seqlen, d_conv = x.shape[1], weight.shape[1]
    out = torch.zeros_like(x)
    for k in range(d_conv):
        lag = d_conv - 1 - k
        shifted = F.pad(x, (0, 0, lag, 0))[:, :seqlen]
        out = out + weight[:, k] * shifted * (pos >= lag).to(x.dtype)
    return out
