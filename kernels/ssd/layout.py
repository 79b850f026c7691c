"""Where the chunks of an SSD call lie in the flattened token axis.

The Triton kernels see the tokens of all sequences as one axis of T = batch * seqlen tokens (or the packed
tokens of cu_seqlens). Every sequence is cut into chunks of `chunk_size` tokens counted from its own start, so a
chunk never spans two sequences; the last chunk of a sequence may be shorter. Kernels that work per chunk read
the chunk's first token and length from this table; kernels that walk a sequence read its token range and the
index of its first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["ALIGNMENT", "ChunkTable", "build_chunk_table"]


@dataclass(frozen=True)
class ChunkTable:
    """Chunk geometry of one call; all index tensors int32 on the inputs' device.

    seq_start (nseqs + 1,): token offsets of the sequences in the flattened token axis.
    seq_chunk (nseqs + 1,): index of each sequence's first chunk (the last entry is nchunks).
    chunk_start (nchunks,): first token of each chunk; chunk_len (nchunks,): its number of tokens (1..chunk_size).
    seq_nchunks: each sequence's number of chunks, on the host.
    aligned: every sequence start and chunk length is a multiple of ALIGNMENT tokens (so is every chunk start), which
    the kernels pass on to the compiler (common.known_multiple) so that it vectorises per-token loads.
    """

    chunk_size: int
    nseqs: int
    nchunks: int
    ntokens: int
    seq_start: Tensor
    seq_chunk: Tensor
    chunk_start: Tensor
    chunk_len: Tensor
    seq_nchunks: tuple[int, ...]
    aligned: bool


ALIGNMENT = 16


def build_chunk_table(batch: int, seqlen: int, chunk_size: int, cu_seqlens: Optional[Tensor],
                      device: torch.device) -> ChunkTable:
    """The chunk table for `batch` rows of `seqlen` tokens, or for the packed sequences of cu_seqlens (batch 1).

    With cu_seqlens the number of chunks depends on its values, so this reads them back to the host (one sync).
    """
    ntokens = batch * seqlen
    if cu_seqlens is None:
        per_seq = -(-seqlen // chunk_size)
        seq_start = torch.arange(batch + 1, device=device, dtype=torch.int32) * seqlen
        seq_chunk = torch.arange(batch + 1, device=device, dtype=torch.int32) * per_seq
        index = torch.arange(batch * per_seq, device=device, dtype=torch.int32)
        local = (index % per_seq) * chunk_size
        chunk_start = (index // per_seq) * seqlen + local
        chunk_len = torch.clamp(seqlen - local, max=chunk_size)
        return ChunkTable(chunk_size, batch, batch * per_seq, ntokens, seq_start, seq_chunk,
                          chunk_start.to(torch.int32), chunk_len.to(torch.int32), (per_seq,) * batch,
                          _aligned(chunk_size, [0, seqlen]))
    offsets = [int(v) for v in cu_seqlens.tolist()]
    starts, lens, firsts = [], [], [0]
    for begin, end in zip(offsets[:-1], offsets[1:]):
        for local in range(0, end - begin, chunk_size):
            starts.append(begin + local)
            lens.append(min(chunk_size, end - begin - local))
        firsts.append(len(starts))

    def as_tensor(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int32).to(device)

    return ChunkTable(chunk_size, len(offsets) - 1, len(starts), ntokens, as_tensor(offsets), as_tensor(firsts),
                      as_tensor(starts), as_tensor(lens), tuple(b - a for a, b in zip(firsts[:-1], firsts[1:])),
                      _aligned(chunk_size, offsets))


def _aligned(chunk_size: int, offsets: list[int]) -> bool:
    """Whether chunks of chunk_size cut from sequences starting at offsets (and ending at the next) all start and
    end at multiples of ALIGNMENT."""
    return chunk_size % ALIGNMENT == 0 and all(v % ALIGNMENT == 0 for v in offsets)
