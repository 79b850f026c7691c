"""Helpers for sequences packed along the time axis and described by cumulative lengths (cu_seqlens)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from archspec.kernels.offsets import host_offsets, is_offsets_tensor, kept_for, non_decreasing_to


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, seqlen: int) -> None:
    """Raise ValueError unless cu_seqlens is (nseqs + 1,) integer, 0 .. seqlen, non-decreasing, and batch == 1."""
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got batch {batch}")
    if not is_offsets_tensor(cu_seqlens):
        raise ValueError(f"cu_seqlens: expected a 1-D int32/int64 tensor of nseqs + 1 >= 2 offsets, got "
                         f"shape {tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}")
    offsets = host_offsets(cu_seqlens)
    if not non_decreasing_to(offsets, seqlen):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to seqlen={seqlen}, got "
                         f"{list(offsets)}")


class LengthBuckets(NamedTuple):
    """Packed sequences grouped by length into right-padded batches, one per power of two that bounds their
    lengths (so padding at most doubles a row, and no row is padded to a much longer sequence's length).
    indices: per bucket, (rows, longest) int64 token of each slot (padding repeats its row's last token); reals: per
    bucket, the flat slots of its real tokens, row by row; order: (ntokens,) int64, where each packed token lies in
    the concatenation of the buckets' real slots, or None when that is the packed order."""

    indices: tuple[torch.Tensor, ...]
    reals: tuple[torch.Tensor, ...]
    order: torch.Tensor | None


def length_buckets(cu_seqlens: torch.Tensor) -> LengthBuckets:
    """`LengthBuckets` of cu_seqlens (at least one non-empty sequence) on its device, built once per tensor
    (kernels/offsets.py)."""
    def build() -> LengthBuckets:
        offsets = host_offsets(cu_seqlens)
        spans = [(a, b - a) for a, b in zip(offsets[:-1], offsets[1:]) if b > a]
        buckets: dict[int, list[tuple[int, int]]] = {}
        for start, length in spans:
            buckets.setdefault((length - 1).bit_length(), []).append((start, length))
        indices, reals, tokens = [], [], []
        for key in sorted(buckets):
            starts, lengths = (torch.tensor(v, dtype=torch.int64) for v in zip(*buckets[key]))
            pos = torch.arange(int(lengths.max()))
            real = pos[None, :] < lengths[:, None]
            index = starts[:, None] + torch.minimum(pos[None, :], lengths[:, None] - 1)
            indices.append(index)
            reals.append(torch.nonzero(real.flatten()).squeeze(1))
            tokens.append(index[real])
        gathered = torch.cat(tokens)
        identity = bool(torch.equal(gathered, torch.arange(gathered.numel())))
        device = cu_seqlens.device
        return LengthBuckets(tuple(i.to(device) for i in indices), tuple(r.to(device) for r in reals),
                             None if identity else torch.argsort(gathered).to(device))

    return kept_for(cu_seqlens, ("length buckets", cu_seqlens.device), build)
