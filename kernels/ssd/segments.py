"""Sequences cut into segments of whole chunks, so that the state passes walk them in parallel.

The state passes (forward.py's `_state_fwd_kernel`, backward_states.py's `state_bwd_kernel`) run one program per
(sequence, head, state tile), each walking its whole sequence: a few long sequences give few programs of many
dependent steps. With segments of `seg_chunks` chunks, the passes walk every segment as if it were a sequence of
its own, from a zero state (zero gradient), and the small kernels here restore what crossed the cuts:

- `_carry_kernel`, per (sequence, head, tile): h_in(k+1) = exp(L_k) h_in(k) + h_end(k) over the sequence's
  segments k (h_in(0) the initial state, L_k the segment's total log-decay, h_end(k) its end state from zero),
  storing each h_in(k) and the final state; `_fix_kernel`, per (chunk, head, tile): a chunk's stored state
  gains exp(log-decay from its segment's start to the chunk) h_in(k).
- `_carry_kernel` the same backwards (REVERSE) for the gradient at each segment's end (dL/d final state at the
  last), returning dL/d initial state; `_fix_kernel` (BACKWARD) adds a chunk's share of it to the chunk-end
  gradient and to the log-decay gradient of the chunk's last token (the term state_bwd_kernel adds with the
  gradient it saw).

The log-decays s are cumulative within a chunk, so they, dt' and every chunk kernel are unaffected by the cuts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import state_tile
from .config import KernelConfig, auto_segment, fill_sms, walk_span
from .layout import ChunkTable, WalkTable, int32_arrays

__all__ = ["SegmentTable", "StateWalk", "build_segment_table", "carry_backward", "carry_forward", "chunk_walks",
           "sm_count", "state_walk"]


@dataclass(frozen=True)
class SegmentTable:
    """Segments of one call, all int32 on the inputs' device. seg_start (nsegs + 1,) and seg_chunk (nsegs + 1,):
    token offsets and first chunks of the segments, in the format of ChunkTable's seq_start / seq_chunk (so the
    state kernels take them in their place); seq_seg (nseqs + 1,): each sequence's first segment; chunk_seg
    (nchunks,): each chunk's segment; stored: the chunks whose states the forward pass stores (every `every`-th
    chunk of a sequence, from its first); after_first: those of them outside their sequence's first segment
    (whose segment receives a state from a neighbour even without an initial state); before_last: the chunks
    outside their sequence's last segment (which receive a gradient from a neighbour even without a final-state
    gradient); seg_chunks: chunks per segment, a multiple of every."""

    seg_chunks: int
    every: int
    nsegs: int
    seg_start: Tensor
    seg_chunk: Tensor
    seq_seg: Tensor
    chunk_seg: Tensor
    stored: Tensor
    after_first: Tensor
    before_last: Tensor


def build_segment_table(table: ChunkTable, seg_chunks: int, every: int = 1) -> SegmentTable:
    """Cuts every sequence of table into segments of seg_chunks chunks (the last one of a sequence may be
    shorter), for a forward pass that stores the states of every `every`-th chunk (seg_chunks a multiple of it).
    Only host lengths are read: no device sync. Kept with the table (ChunkTable.kept)."""
    if seg_chunks % every:
        raise ValueError(f"segments of {seg_chunks} chunks do not start at chunks whose states are stored (every "
                         f"{every}-th)")
    return table.kept(("segments", seg_chunks, every), lambda: _segment_table(table, seg_chunks, every))


def _segment_table(table: ChunkTable, seg_chunks: int, every: int) -> SegmentTable:
    firsts, seq_seg, chunk_seg, stored, after_first, before_last = [], [0], [], [], [], []
    chunk = 0
    for nchunks in table.seq_nchunks:
        for local in range(0, nchunks, seg_chunks):
            chunk_seg += [len(firsts)] * min(seg_chunks, nchunks - local)
            firsts.append(chunk + local)
        stored += range(chunk, chunk + nchunks, every)
        after_first += range(chunk + min(seg_chunks, nchunks), chunk + nchunks, every)
        before_last += range(chunk, chunk + (nchunks - 1) // seg_chunks * seg_chunks)
        chunk += nchunks
        seq_seg.append(len(firsts))
    seg_chunk, seq_seg_t, chunk_seg_t, stored_t, after_first_t, before_last_t = int32_arrays(
        (firsts + [table.nchunks], seq_seg, chunk_seg, stored, after_first, before_last), table.chunk_start.device)
    seg_start = torch.cat([table.chunk_start[seg_chunk[:-1].long()], table.seq_start[-1:]])
    return SegmentTable(seg_chunks, every, len(firsts), seg_start, seg_chunk, seq_seg_t, chunk_seg_t, stored_t,
                        after_first_t, before_last_t)


class StateWalk(NamedTuple):
    """How a state pass walks (`state_walk`): its tiles (cfg) and grid, the "sequences" it walks (token offsets
    start and first chunks, ChunkTable's seq_start / seq_chunk format), what they start from (init, or None for
    zero) and where their ends go (out), the segment table when it walks segments, and every: the forward pass
    stores the state of every every-th chunk of what it walks, from the first."""

    cfg: KernelConfig
    grid: tuple[int, int, int]
    start: Tensor
    chunk: Tensor
    init: Optional[Tensor]
    out: Tensor
    seg: Optional[SegmentTable]
    every: int


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """The number of SMs of a CUDA device; 0 elsewhere (unknown)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def chunk_walks(table: ChunkTable, cfg: KernelConfig, blocks: int, device: torch.device) -> WalkTable:
    """The walks of an output or dx walk kernel (cfg) that runs `blocks` programs per walk (heads x head_dim
    blocks): of as many chunks as config.walk_span picks for the GPU's SM count."""
    return table.walks(walk_span(cfg, table.chunk_size, lambda span: blocks * table.walk_count(span),
                                 sm_count(device)))


def state_walk(table: ChunkTable, cfg: KernelConfig, name: str, init: Optional[Tensor], out: Tensor,
               every: int = 1) -> StateWalk:
    """The walk of a state pass (config hook `name`: "state" or "state_bwd") with tiles cfg, refined for the GPU's
    SM count: over the call's sequences from init (initial states, or final-state gradients) into out (nseqs,
    nheads, headdim, dstate); in segments (cfg.segment chunks, or as config.auto_segment chooses when it is -1),
    over segments from zero into a per-segment float32 buffer, which carry_forward / carry_backward then turn into
    out. Tiles are split further (config.fill_sms) while the walks would not fill the SMs. every: the forward
    pass needs the states of every every-th chunk of a sequence only (the output walks' first chunks); in segments
    of a length it does not divide, of every gcd(every, segment length)-th."""
    nheads, headdim, dstate = out.shape[1:]
    sms = sm_count(out.device)
    seg_chunks = cfg.segment
    if seg_chunks < 0:
        # in programs of one head's tiles, which auto_segment's thresholds were measured on (a tile of two heads
        # counted as one cut 2 x 32K tokens at 64 x 128 into segments: 4.81 -> 5.88 ms forward+backward, H200)
        programs = math.prod(_grid(table.nseqs, nheads, headdim, dstate, cfg)) * cfg.heads
        seg_chunks = auto_segment(programs, max(table.seq_nchunks), sms, every)
    seg = build_segment_table(table, seg_chunks, math.gcd(every, seg_chunks)) if seg_chunks else None
    walked = seg.nsegs if seg is not None else table.nseqs
    cfg = fill_sms(name, cfg, math.prod(_grid(walked, nheads, headdim, dstate, cfg)), sms)
    grid = _grid(walked, nheads, headdim, dstate, cfg)
    if seg is None:
        return StateWalk(cfg, grid, table.seq_start, table.seq_chunk, init, out, None, every)
    ends = torch.empty(seg.nsegs, nheads, headdim, dstate, device=out.device, dtype=torch.float32)
    return StateWalk(cfg, grid, seg.seg_start, seg.seg_chunk, None, ends, seg, seg.every)


@triton.jit
def _log_decay(s_ptr, head_row, chunk_start_ptr, chunk_len_ptr, first, end, SEG: tl.constexpr):
    """Total log-decay of chunks first..end-1 (at most SEG of them): the sum of their last tokens' within-chunk
    cumulative log-decays, gathered at once."""
    c = first + tl.arange(0, SEG)
    inside = c < end
    last = (tl.load(chunk_start_ptr + c, mask=inside, other=0).to(tl.int64)
            + tl.load(chunk_len_ptr + c, mask=inside, other=1) - 1)
    return tl.sum(tl.load(s_ptr + head_row + last, mask=inside, other=0.0), 0)


@triton.jit
def _carry_kernel(
    init_ptr, local_ptr, entering_ptr, out_ptr, s_ptr, chunk_start_ptr, chunk_len_ptr, seq_seg_ptr, seg_chunk_ptr,
    ntokens, nheads, headdim, dstate,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, SEG: tl.constexpr, HAS_INIT: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """One program per (sequence, head, tile) steps across the sequence's segments k (last to first when
    REVERSE): stores what enters k (entering_ptr), then v <- exp(L_k) v + local_k; v starts at init (or 0) and
    ends in out. Forward: states from the initial to the final one; backward: gradients from the final state's to
    the initial state's."""
    seq = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    _, _, _, _, tile, mask = state_tile(headdim, dstate, BLOCK_P, BLOCK_N)
    state_size = headdim * dstate
    if HAS_INIT:
        v = tl.load(init_ptr + (seq * nheads + head) * state_size + tile, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    first = tl.load(seq_seg_ptr + seq)
    nsegs = tl.load(seq_seg_ptr + seq + 1) - first
    for i in range(0, nsegs):
        k = first + (nsegs - 1 - i if REVERSE else i)
        at = (k * nheads + head) * state_size + tile
        tl.store(entering_ptr + at, v, mask=mask)
        total = _log_decay(s_ptr, head * ntokens, chunk_start_ptr, chunk_len_ptr, tl.load(seg_chunk_ptr + k),
                           tl.load(seg_chunk_ptr + k + 1), SEG)
        v = v * tl.exp(total) + tl.load(local_ptr + at, mask=mask, other=0.0)
    tl.store(out_ptr + (seq * nheads + head) * state_size + tile, v, mask=mask)


@triton.jit
def _fix_kernel(
    target_ptr, entering_ptr, states_ptr, s_ptr, ds_ptr, chunk_start_ptr, chunk_len_ptr, chunk_seg_ptr,
    seg_chunk_ptr, chunks_ptr, ntokens, nheads, headdim, dstate,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, SEG: tl.constexpr, BACKWARD: tl.constexpr,
):
    """One program per (chunk of the list chunks_ptr, head, tile) adds what entered the chunk's segment, decayed
    to the chunk, to the chunk's row of target: forward, the state entering the segment, decayed from the
    segment's start to the chunk's start, onto the chunk states; BACKWARD, the gradient entering at the
    segment's end, decayed back to the chunk's end, onto the chunk-end gradients, and its log-decay term
    exp(s_last) <g, h_in> (states: the forward's chunk states) onto ds at the chunk's last token."""
    chunk = tl.load(chunks_ptr + tl.program_id(0))
    head = tl.program_id(1).to(tl.int64)
    _, _, _, _, tile, mask = state_tile(headdim, dstate, BLOCK_P, BLOCK_N)
    state_size = headdim * dstate
    k = tl.load(chunk_seg_ptr + chunk)
    head_row = head * ntokens
    if BACKWARD:
        first, end = chunk + 1, tl.load(seg_chunk_ptr + k + 1)
    else:
        first, end = tl.load(seg_chunk_ptr + k), chunk
    decay = tl.exp(_log_decay(s_ptr, head_row, chunk_start_ptr, chunk_len_ptr, first, end, SEG))
    v = decay * tl.load(entering_ptr + (k * nheads + head) * state_size + tile, mask=mask, other=0.0)
    at = (chunk.to(tl.int64) * nheads + head) * state_size + tile
    total = tl.load(target_ptr + at, mask=mask, other=0.0).to(tl.float32) + v
    tl.store(target_ptr + at, total.to(target_ptr.dtype.element_ty), mask=mask)
    if BACKWARD:
        h_in = tl.load(states_ptr + at, mask=mask, other=0.0).to(tl.float32)
        last = head_row + tl.load(chunk_start_ptr + chunk) + tl.load(chunk_len_ptr + chunk) - 1
        tl.atomic_add(ds_ptr + last, tl.exp(tl.load(s_ptr + last)) * tl.sum(tl.sum(v * h_in, 1), 0), sem="relaxed")


def _grid(nprograms: int, nheads: int, headdim: int, dstate: int, cfg: KernelConfig) -> tuple[int, int, int]:
    return (nprograms, nheads // cfg.heads,
            triton.cdiv(headdim * cfg.heads, cfg.block_p) * triton.cdiv(dstate, cfg.block_n))


def _per_head(cfg: KernelConfig) -> KernelConfig:
    """The state passes' tiles as tiles of one head (a tile of two heads' head_dim split in two), for the carry
    and fix kernels."""
    return replace(cfg, block_p=cfg.block_p // cfg.heads, heads=1)


def _options(cfg: KernelConfig, seg: SegmentTable) -> dict[str, int]:
    return dict(BLOCK_P=cfg.block_p, BLOCK_N=cfg.block_n, SEG=triton.next_power_of_2(seg.seg_chunks))


def _carry(init: Optional[Tensor], local: Tensor, out: Tensor, s: Tensor, table: ChunkTable, seg: SegmentTable,
           cfg: KernelConfig, reverse: bool) -> Tensor:
    """Runs `_carry_kernel` (local, the per-segment results from zero; out, per sequence) and returns what enters
    each segment (nsegs, nheads, headdim, dstate) float32."""
    nheads, headdim, dstate = local.shape[1:]
    entering = torch.empty_like(local)
    cfg = _per_head(cfg)
    _carry_kernel[_grid(table.nseqs, nheads, headdim, dstate, cfg)](
        init, local, entering, out, s, table.chunk_start, table.chunk_len, seg.seq_seg, seg.seg_chunk,
        table.ntokens, nheads, headdim, dstate, HAS_INIT=init is not None, REVERSE=reverse, **_options(cfg, seg))
    return entering


def _fix(target: Tensor, entering: Tensor, states: Optional[Tensor], s: Tensor, ds: Optional[Tensor],
         chunks: Tensor, table: ChunkTable, seg: SegmentTable, cfg: KernelConfig) -> None:
    """Runs `_fix_kernel` on the listed chunks (backward when ds is given)."""
    if not chunks.numel():
        return
    _, nheads, headdim, dstate = target.shape
    cfg = _per_head(cfg)
    _fix_kernel[_grid(chunks.numel(), nheads, headdim, dstate, cfg)](
        target, entering, states, s, ds, table.chunk_start, table.chunk_len, seg.chunk_seg, seg.seg_chunk, chunks,
        table.ntokens, nheads, headdim, dstate, BACKWARD=ds is not None, **_options(cfg, seg))


def carry_forward(states: Tensor, seg_end: Tensor, final: Tensor, h0: Optional[Tensor], s: Tensor,
                  table: ChunkTable, seg: SegmentTable, cfg: KernelConfig) -> None:
    """After the forward state pass walked the segments from zero states: writes the final states (nseqs, nheads,
    headdim, dstate, float32) and adds the entering states' share to the stored chunk states (nchunks, ...; those
    of seg.stored) in place. seg_end (nsegs, ...) float32: each segment's end state from zero; s (nheads, T) the
    log-decays."""
    h_in = _carry(h0, seg_end, final, s, table, seg, cfg, reverse=False)
    _fix(states, h_in, None, s, None, seg.stored if h0 is not None else seg.after_first, table, seg, cfg)


def carry_backward(dstates: Tensor, seg_start_grad: Tensor, dh0: Tensor, dfinal: Optional[Tensor], states: Tensor,
                   s: Tensor, ds: Tensor, table: ChunkTable, seg: SegmentTable, cfg: KernelConfig) -> None:
    """After the backward state pass walked the segments from zero gradients: writes dL/d initial state dh0
    (nseqs, nheads, headdim, dstate, float32) and adds the later segments' share to the chunk-end gradients
    dstates and to ds (nheads, T) in place. seg_start_grad (nsegs, ...) float32: each segment's gradient at its
    start from a zero gradient at its end; states: the forward's chunk states."""
    g_end = _carry(dfinal, seg_start_grad, dh0, s, table, seg, cfg, reverse=True)
    _fix(dstates, g_end, states, s, ds, seg.stored if dfinal is not None else seg.before_last, table, seg, cfg)
