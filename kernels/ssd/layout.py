"""Where the chunks of an SSD call lie in the flattened token axis.

The Triton kernels see the tokens of all sequences as one axis of T = batch * seqlen tokens (or the packed
tokens of cu_seqlens). Every sequence is cut into chunks of `chunk_size` tokens counted from its own start, so a
chunk never spans two sequences; the last chunk of a sequence may be shorter. Kernels that work per chunk read
the chunk's first token and length from this table; kernels that walk a sequence read its token range and the
index of its first chunk; the output and dx walks take runs of consecutive chunks of one sequence (`WalkTable`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple, Optional

import torch
from torch import Tensor

from ..offsets import capturing, host_offsets, kept_for

__all__ = ["ALIGNMENT", "ChunkTable", "WalkTable", "build_chunk_table", "int32_arrays"]


class WalkTable(NamedTuple):
    """The programs of a kernel that walks up to `span` consecutive chunks of one sequence each, all int32 on the
    inputs' device: chunk (count,): each walk's first chunk; start (count,): its first token; length (count,): its
    tokens (at most span * chunk_size; a walk ends at its sequence's end)."""

    span: int
    count: int
    chunk: Tensor
    start: Tensor
    length: Tensor


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
    packed: bool
    _kept: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    def kept(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """build() (tensors derived from this table: walk and segment tables), made once per key and kept for the
        table's next call, unless a CUDA graph is being captured (whose memory the tensors would live in)."""
        if key in self._kept:
            return self._kept[key]
        value = build()
        if not capturing(self.chunk_start.device):
            self._kept[key] = value
        return value

    def walk_count(self, span: int) -> int:
        """The number of walks of up to `span` chunks that cover every sequence."""
        return sum(-(-n // span) for n in self.seq_nchunks)

    def walks(self, span: int) -> WalkTable:
        """The walks of up to `span` consecutive chunks of a sequence, in the order of their chunks (computed on the
        device for batch rows, with one copy to it for packed sequences; kept)."""
        return self.kept(("walks", span), lambda: self._build_walks(span))

    def _build_walks(self, span: int) -> WalkTable:
        dev = self.chunk_start.device
        count = self.walk_count(span)
        if self.packed:
            firsts = itertools.accumulate(self.seq_nchunks[:-1], initial=0)
            pairs = [(first + k, seq) for seq, (first, n) in enumerate(zip(firsts, self.seq_nchunks))
                     for k in range(0, n, span)]
            lead, seq = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).to(dev).unbind(1)
        else:
            per_seq = self.seq_nchunks[0]
            per_walk_seq = -(-per_seq // span)
            index = torch.arange(count, device=dev)
            seq = index // per_walk_seq
            lead = seq * per_seq + (index - seq * per_walk_seq) * span
        start = self.chunk_start[lead]
        length = torch.clamp(self.seq_start[seq + 1] - start, max=span * self.chunk_size)
        return WalkTable(span, count, lead.to(torch.int32), start, length.to(torch.int32))


ALIGNMENT = 16


def build_chunk_table(batch: int, seqlen: int, chunk_size: int, cu_seqlens: Optional[Tensor],
                      device: torch.device) -> ChunkTable:
    """The chunk table for `batch` rows of `seqlen` tokens, or for the packed sequences of cu_seqlens (batch 1).

    The table of batch rows is built once per (batch, seqlen, chunk_size, device) and kept, with the walk tables
    it makes (ChunkTable.walks): a call's launches then cost no table-building ones, which at 8 x 8192 tokens
    had made the forward wait on the host (H200: 0.82 ms of kernels, 1.32 ms per call). With cu_seqlens the
    chunks depend on its values, read back to the host once per tensor (offsets.host_offsets), and the table is
    kept with that tensor (offsets.kept_for), so the layers of a model that share it build it once. Neither is
    kept while a CUDA graph is being captured, whose memory the tensors would live in.
    """
    if cu_seqlens is None:
        if capturing(device):
            return _batch_rows_table.__wrapped__(batch, seqlen, chunk_size, device)
        return _batch_rows_table(batch, seqlen, chunk_size, device)
    return kept_for(cu_seqlens, ("chunk table", batch * seqlen, chunk_size, device),
                    lambda: _packed_table(batch * seqlen, chunk_size, cu_seqlens, device))


@functools.lru_cache(maxsize=64)
def _batch_rows_table(batch: int, seqlen: int, chunk_size: int, device: torch.device) -> ChunkTable:
    ntokens = batch * seqlen
    per_seq = -(-seqlen // chunk_size)
    seq_start = torch.arange(batch + 1, device=device, dtype=torch.int32) * seqlen
    seq_chunk = torch.arange(batch + 1, device=device, dtype=torch.int32) * per_seq
    index = torch.arange(batch * per_seq, device=device, dtype=torch.int32)
    local = (index % per_seq) * chunk_size
    chunk_start = (index // per_seq) * seqlen + local
    chunk_len = torch.clamp(seqlen - local, max=chunk_size)
    return ChunkTable(chunk_size, batch, batch * per_seq, ntokens, seq_start, seq_chunk,
                      chunk_start.to(torch.int32), chunk_len.to(torch.int32), (per_seq,) * batch,
                      _aligned(chunk_size, [0, seqlen]), packed=False)


def _packed_table(ntokens: int, chunk_size: int, cu_seqlens: Tensor, device: torch.device) -> ChunkTable:
    offsets = list(host_offsets(cu_seqlens))
    starts, lens, firsts = [], [], [0]
    for begin, end in zip(offsets[:-1], offsets[1:]):
        for local in range(0, end - begin, chunk_size):
            starts.append(begin + local)
            lens.append(min(chunk_size, end - begin - local))
        firsts.append(len(starts))

    seq_start, seq_chunk, chunk_start, chunk_len = int32_arrays((offsets, firsts, starts, lens), device)
    return ChunkTable(chunk_size, len(offsets) - 1, len(starts), ntokens, seq_start, seq_chunk, chunk_start,
                      chunk_len, tuple(b - a for a, b in zip(firsts[:-1], firsts[1:])), _aligned(chunk_size, offsets),
                      packed=True)


def int32_arrays(lists: tuple[list[int], ...], device: torch.device) -> tuple[Tensor, ...]:
    """The lists as int32 arrays on device, in one host-to-device copy (each copy blocks the host until the stream
    has caught up): views of one buffer, each starting 16 bytes apart, so that the kernels' pointer arguments keep
    the alignment they were compiled for."""
    padded = [-(-len(values) // 4) * 4 for values in lists]
    rows = torch.tensor([v for values, size in zip(lists, padded) for v in values + [0] * (size - len(values))],
                        dtype=torch.int32).to(device)
    return tuple(part[:len(values)] for part, values in zip(rows.split(padded), lists))


def _aligned(chunk_size: int, offsets: list[int]) -> bool:
    """Whether chunks of chunk_size cut from sequences starting at offsets (and ending at the next) all start and
    end at multiples of ALIGNMENT."""
    return chunk_size % ALIGNMENT == 0 and all(v % ALIGNMENT == 0 for v in offsets)
