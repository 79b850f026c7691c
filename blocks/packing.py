"""Helpers for sequences packed along the time axis and described by cumulative lengths (cu_seqlens)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from archspec.kernels.offsets import host_offsets, kept_for


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


def nonempty_offsets(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens without its empty sequences (repeated offsets): cu_seqlens itself when it has none, else a new
    tensor of the same dtype and device, made once per cu_seqlens (kernels/offsets.py)."""
    def build() -> torch.Tensor:
        offsets = host_offsets(cu_seqlens)
        kept = [offsets[0], *(b for a, b in zip(offsets[:-1], offsets[1:]) if b > a)]
        if len(kept) == len(offsets):
            return cu_seqlens
        return torch.tensor(kept, dtype=cu_seqlens.dtype, device=cu_seqlens.device)

    return kept_for(cu_seqlens, "non-empty offsets", build)


class PaddedRows(NamedTuple):
    """The non-empty packed sequences as rows of a right-padded batch: index (rows, longest) int64, the token of
    each slot (padding repeats its row's last token); real (ntokens,) int64, the flat slots of the real tokens in
    packed order (gathering them from a (rows * longest, ...) result gives the packed layout back)."""

    index: torch.Tensor
    real: torch.Tensor


def padded_rows(cu_seqlens: torch.Tensor) -> PaddedRows:
    """`PaddedRows` of cu_seqlens (at least one non-empty sequence) on its device, built once per tensor
    (kernels/offsets.py)."""
    def build() -> PaddedRows:
        offsets = host_offsets(cu_seqlens)
        spans = [(a, b - a) for a, b in zip(offsets[:-1], offsets[1:]) if b > a]
        starts, lengths = (torch.tensor(v, dtype=torch.int64) for v in zip(*spans))
        pos = torch.arange(int(lengths.max()))
        index = starts[:, None] + torch.minimum(pos[None, :], lengths[:, None] - 1)
        real = torch.nonzero((pos[None, :] < lengths[:, None]).flatten()).squeeze(1)
        return PaddedRows(index.to(cu_seqlens.device), real.to(cu_seqlens.device))

    return kept_for(cu_seqlens, ("padded rows", cu_seqlens.device), build)


def sequence_index(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int64: which packed sequence each token belongs to."""
    t = torch.arange(seqlen, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64), t, right=True)


def positions_in_sequence(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int64: each packed token's position inside its own sequence."""
    t = torch.arange(seqlen, device=cu_seqlens.device)
    return t - cu_seqlens.to(torch.int64)[sequence_index(cu_seqlens, seqlen)]
