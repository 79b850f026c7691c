"""Helpers for sequences packed along the time axis and described by cumulative lengths (cu_seqlens)."""
from __future__ import annotations

import torch

from archspec.kernels.offsets import host_offsets


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seqlen: int) -> None:
    """Raise ValueError unless cu_seqlens is (nseqs + 1,) integer, 0 .. seqlen, non-decreasing, and batch == 1."""
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got batch {batch}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens: expected a 1-D int32/int64 tensor of nseqs + 1 >= 2 offsets, got "
                         f"shape {tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}")
    offsets = host_offsets(cu_seqlens)
    if (offsets[0], offsets[-1]) != (0, seqlen) or any(b < a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to seqlen={seqlen}, got "
                         f"{list(offsets)}")


def sequence_index(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int64: which packed sequence each token belongs to."""
    t = torch.arange(seqlen, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64), t, right=True)


def positions_in_sequence(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int64: each packed token's position inside its own sequence."""
    t = torch.arange(seqlen, device=cu_seqlens.device)
    return t - cu_seqlens.to(torch.int64)[sequence_index(cu_seqlens, seqlen)]
