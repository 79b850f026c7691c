"""PyTorch references for the Mamba-2 SSD (state space duality) scan.

Per head, with dt' = clamp(softplus?(dt + dt_bias), *dt_limit):
    h_t = exp(dt'_t * A) * h_{t-1} + dt'_t * x_t B_t^T      (h: headdim x dstate)
    y_t = h_t C_t + D * x_t,  then  y_t *= silu(z_t)  if z is given.
Head h reads group h // (nheads // ngroups) of B and C. With cu_seqlens (batch 1), h restarts from that
sequence's initial state (or zero) at every sequence start.

Three scans compute the same thing three ways:
- `ssd_naive`: the quadratic (attention-like) form with the full (seqlen x seqlen) semiseparable matrix;
- `ssd_recurrent`: the literal recurrence, one Python step per token;
- `ssd_chunked`: the chunked SSD algorithm (Dao & Gu 2024, section 6), differentiable, the CPU production path.
`ssd_step_reference` is one decode step. All compute in float32, or float64 when any input is float64;
y comes back in x.dtype, final states in the compute dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_ssd_inputs, check_ssd_step_inputs
from .offsets import host_offsets

__all__ = ["prepare_dt", "ssd_naive", "ssd_recurrent", "ssd_chunked", "ssd_step_reference"]

ScanResult = Union[Tensor, tuple[Tensor, Tensor]]
_NO_LIMIT = (0.0, float("inf"))


def prepare_dt(
    dt: Tensor,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
) -> Tensor:
    """The effective step size: dt' = clamp(softplus?(dt + dt_bias), *dt_limit).

    dt (..., nheads) any float dtype, dt_bias (nheads,). Returns float32 (float64 when dt or dt_bias is float64).
    softplus passes inputs above 20 through unchanged (torch's default threshold, as mamba_ssm does).
    """
    dtype = _compute_dtype(dt, dt_bias)
    out = dt.to(dtype)
    if dt_bias is not None:
        out = out + dt_bias.to(dtype)
    if dt_softplus:
        out = F.softplus(out)
    return out.clamp(min=float(dt_limit[0]), max=float(dt_limit[1]))


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """float64 when any given tensor is float64, else float32 (the accumulation dtype for low precision)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _heads_from_groups(t: Tensor, nheads: int) -> Tensor:
    """(..., ngroups, dstate) -> (..., nheads, dstate): head h reads group h // (nheads // ngroups)."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def _skip_and_gate(y: Tensor, x: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """y + D * x, then times silu(z). y, x, z (..., nheads, headdim); D (nheads,) or (nheads, headdim)."""
    if D is not None:
        d = D.to(y.dtype)
        y = y + x.to(y.dtype) * (d if d.dim() == 2 else d[:, None])
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _segsum(a: Tensor) -> Tensor:
    """Segment sums of a (..., T): out[..., i, j] = sum_{j < k <= i} a[..., k] for i >= j, -inf above the diagonal.

    Built as a masked cumulative sum (not a difference of prefix sums), so that it stays accurate far from 0.
    Returns (..., T, T).
    """
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    rows = a.unsqueeze(-1).expand(*a.shape, T).masked_fill(~torch.tril(ones, diagonal=-1), 0.0)
    return rows.cumsum(dim=-2).masked_fill(~torch.tril(ones), float("-inf"))


def _masked_decay(cum: Tensor) -> Tensor:
    """exp(cum_i - cum_j) for i >= j, 0 above the diagonal: the decays inside one chunk.

    cum (..., T) inclusive cumulative log-decays; returns (..., T, T). Masks before exp, so that the (possibly
    overflowing) entries above the diagonal give zero gradients rather than NaN.
    """
    T = cum.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=cum.device).triu(diagonal=1)
    return (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill_(upper, float("-inf")).exp_()


def _sequence_bounds(cu_seqlens: Optional[Tensor], seqlen: int) -> tuple[list[int], list[int]]:
    """Start and end (exclusive) of each packed sequence; one sequence [0, seqlen) without cu_seqlens."""
    if cu_seqlens is None:
        return [0], [seqlen]
    offsets = list(host_offsets(cu_seqlens))
    return offsets[:-1], offsets[1:]


def _state_update(h: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrence step without D or z.

    h (batch, nheads, headdim, dstate); x (batch, nheads, headdim); dt (batch, nheads) (already prepared);
    A (nheads,); B, C (batch, nheads, dstate) (already expanded from groups). Returns (h_new, y) with
    y (batch, nheads, headdim).
    """
    decay = torch.exp(dt * A)[..., None, None]
    h = decay * h + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    return h, torch.einsum("bhpn,bhn->bhp", h, C)


def _finish(y: Tensor, x: Tensor, D: Optional[Tensor], z: Optional[Tensor],
            final_states: Tensor, return_final_states: bool) -> ScanResult:
    y = _skip_and_gate(y, x, D, z).to(x.dtype)
    return (y, final_states) if return_final_states else y


def ssd_naive(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
    initial_states: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    return_final_states: bool = False,
) -> ScanResult:
    """SSD scan through the full (seqlen x seqlen) masked semiseparable matrix, per head.

    M[i, j] = exp(sum_{j<k<=i} dt'_k A) * (C_i . B_j) * dt'_j for i >= j in the same sequence, else 0; y = M x.
    An initial state h0 adds C_i^T exp(sum_{s<=k<=i} dt'_k A) h0 (s the start of i's sequence).
    Arguments and shapes as archspec.kernels.ssd_scan (chunk_size is validated, otherwise unused).
    Memory is O(batch * nheads * seqlen^2): for tests. Returns y (x.dtype) or (y, final_states).
    """
    dims = check_ssd_inputs(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                            initial_states=initial_states, cu_seqlens=cu_seqlens)
    dtype = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    dtp = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)  # (b, l, h)
    dA = dtp * A.to(dtype)
    xc = x.to(dtype)
    Bh = _heads_from_groups(B.to(dtype), dims.nheads)  # (b, l, h, n)
    Ch = _heads_from_groups(C.to(dtype), dims.nheads)

    starts, ends = _sequence_bounds(cu_seqlens, dims.seqlen)
    lengths = torch.tensor([e - s for s, e in zip(starts, ends)], device=x.device)
    seq_of = torch.repeat_interleave(torch.arange(len(starts), device=x.device), lengths)  # (l,)
    start_of = torch.tensor(starts, device=x.device)[seq_of]  # (l,)

    seg = _segsum(dA.transpose(1, 2))  # (b, h, l, l)
    seg = seg.masked_fill(seq_of[:, None] != seq_of[None, :], float("-inf"))
    decay = torch.exp(seg)
    scores = torch.einsum("bihn,bjhn->bhij", Ch, Bh) * decay * dtp.transpose(1, 2)[:, :, None, :]
    y = torch.einsum("bhij,bjhp->bihp", scores, xc)

    # log-decay from the start of each position's sequence to the position itself, inclusive: (b, h, l)
    positions = torch.arange(dims.seqlen, device=x.device)
    from_start = seg[:, :, positions, start_of] + dA[:, start_of, :].transpose(1, 2)

    end_rows = [e - 1 for e in ends]
    if cu_seqlens is None:
        rows, end_decay, src = decay[:, :, -1, :], from_start[:, :, -1], (dtp, xc, Bh)
    else:
        nseqs = len(starts)
        rows = decay[0][:, end_rows, :].transpose(0, 1)  # (nseqs, h, l)
        end_decay = from_start[0][:, end_rows].transpose(0, 1)  # (nseqs, h)
        src = tuple(t.expand(nseqs, *t.shape[1:]) for t in (dtp, xc, Bh))
    final = torch.einsum("shj,sjh,sjhp,sjhn->shpn", rows, *src)

    if initial_states is not None:
        h0 = initial_states.to(dtype)
        if cu_seqlens is None:
            y0 = torch.einsum("bihn,bhpn->bihp", Ch, h0)
        else:
            y0 = torch.einsum("ihn,shpn->ishp", Ch[0], h0)[positions, seq_of].unsqueeze(0)
        y = y + torch.exp(from_start).transpose(1, 2)[..., None] * y0
        final = final + torch.exp(end_decay)[..., None, None] * h0
    return _finish(y, x, D, z, final, return_final_states)


def ssd_recurrent(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
    initial_states: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    return_final_states: bool = False,
) -> ScanResult:
    """SSD scan as the literal recurrence, one Python step per token (slow; for tests).

    Arguments and shapes as archspec.kernels.ssd_scan (chunk_size is validated, otherwise unused).
    Returns y (x.dtype) or (y, final_states).
    """
    dims = check_ssd_inputs(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                            initial_states=initial_states, cu_seqlens=cu_seqlens)
    dtype = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    dtp = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)
    xc, Ac = x.to(dtype), A.to(dtype)
    Bh = _heads_from_groups(B.to(dtype), dims.nheads)
    Ch = _heads_from_groups(C.to(dtype), dims.nheads)

    starts, ends = _sequence_bounds(cu_seqlens, dims.seqlen)
    nrows = dims.batch if cu_seqlens is None else 1  # batch rows that each sequence occupies
    zeros = xc.new_zeros(nrows, dims.nheads, dims.headdim, dims.dstate)
    h0 = None if initial_states is None else initial_states.to(dtype)
    start_state = {s: zeros if h0 is None else h0[i * nrows:(i + 1) * nrows] for i, s in enumerate(starts)}
    last_tokens = {e - 1 for e in ends}

    h, ys, finals = zeros, [], []
    for t in range(dims.seqlen):
        h = start_state.get(t, h)
        h, y_t = _state_update(h, xc[:, t], dtp[:, t], Ac, Bh[:, t], Ch[:, t])
        ys.append(y_t)
        if t in last_tokens:
            finals.append(h)
    return _finish(torch.stack(ys, dim=1), x, D, z, torch.cat(finals, dim=0), return_final_states)


@dataclass(frozen=True)
class _ChunkLayout:
    """Where tokens go when the sequence is cut into chunks, each packed sequence starting a fresh chunk.

    nchunks: chunks per batch row; first_chunk / last_chunk: per sequence; gather (nchunks * chunk_size,) picks
    the token for each padded slot (seqlen = a zero row), scatter (seqlen,) the padded slot of each token;
    both None when the layout is plain right padding by `pad` tokens.
    """

    chunk_size: int
    nchunks: int
    first_chunk: list[int]
    last_chunk: list[int]
    pad: int
    gather: Optional[Tensor]
    scatter: Optional[Tensor]

    @staticmethod
    def build(seqlen: int, chunk_size: int, cu_seqlens: Optional[Tensor], device: torch.device) -> "_ChunkLayout":
        starts, ends = _sequence_bounds(cu_seqlens, seqlen)
        counts = [math.ceil((e - s) / chunk_size) for s, e in zip(starts, ends)]
        first = [sum(counts[:i]) for i in range(len(counts))]
        last = [f + c - 1 for f, c in zip(first, counts)]
        nchunks = sum(counts)
        if cu_seqlens is None:
            return _ChunkLayout(chunk_size, nchunks, first, last, nchunks * chunk_size - seqlen, None, None)
        slot = torch.cat([torch.arange(s, e, device=device) - s + f * chunk_size
                          for s, e, f in zip(starts, ends, first)])
        gather = torch.full((nchunks * chunk_size,), seqlen, dtype=torch.long, device=device)
        gather[slot] = torch.arange(seqlen, device=device)
        return _ChunkLayout(chunk_size, nchunks, first, last, 0, gather, slot)

    def to_chunks(self, t: Tensor) -> Tensor:
        """(batch, seqlen, *rest) -> (batch, nchunks, chunk_size, *rest), zero in the padded slots."""
        if self.gather is None:
            if self.pad:
                t = torch.cat([t, t.new_zeros(t.shape[0], self.pad, *t.shape[2:])], dim=1)
        else:
            t = torch.cat([t, t.new_zeros(t.shape[0], 1, *t.shape[2:])], dim=1).index_select(1, self.gather)
        return t.reshape(t.shape[0], self.nchunks, self.chunk_size, *t.shape[2:])

    def from_chunks(self, t: Tensor, seqlen: int) -> Tensor:
        """(batch, nchunks, chunk_size, *rest) -> (batch, seqlen, *rest), dropping the padded slots."""
        t = t.reshape(t.shape[0], self.nchunks * self.chunk_size, *t.shape[3:])
        return t[:, :seqlen] if self.scatter is None else t.index_select(1, self.scatter)


def _pass_states(states: Tensor, chunk_decay: Tensor, layout: _ChunkLayout,
                 initial: list[Optional[Tensor]]) -> tuple[Tensor, Tensor]:
    """Inter-chunk scan: the state entering every chunk, and each sequence's final state.

    states (batch, nchunks, *S): each chunk's end state from its own tokens only; chunk_decay (batch, nchunks,
    *S[:-2]): exp of the chunk's total dt'A; initial[i]: sequence i's starting state (rows, *S) or None for zero.
    The state restarts from `initial` at each sequence's first chunk. Returns (entering (batch, nchunks, *S),
    final (nseqs * rows, *S)).
    """
    starts = dict(zip(layout.first_chunk, initial))
    ends = set(layout.last_chunk)
    zeros = states.new_zeros(states.shape[0], *states.shape[2:])
    # unbind once: indexing [:, c] in the loop would make autograd build a full-size gradient per chunk
    chunk_states, decays = states.unbind(1), chunk_decay[..., None, None].unbind(1)
    h, entering, finals = zeros, [], []
    for c in range(layout.nchunks):
        if c in starts:
            h = zeros if starts[c] is None else starts[c]
        entering.append(h)
        h = decays[c] * h + chunk_states[c]
        if c in ends:
            finals.append(h)
    return torch.stack(entering, dim=1), torch.cat(finals, dim=0)


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
    initial_states: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    return_final_states: bool = False,
) -> ScanResult:
    """SSD scan by the chunked algorithm (Dao & Gu 2024, section 6), in PyTorch; differentiable.

    The sequence is cut into chunks of chunk_size tokens (zero-padded; with cu_seqlens every packed sequence
    starts a fresh chunk). Per chunk: (1) the intra-chunk output through the masked (chunk x chunk)
    semiseparable matrix, (2) the chunk's end state from its own tokens; then (3) a scan over chunks passes
    states along (restarting at sequence starts), and (4) each chunk adds the output of the state it received.
    Arguments and shapes as archspec.kernels.ssd_scan. Computes in float32 (float64 for float64 inputs).
    Returns y (x.dtype) or (y, final_states) with final_states (batch or nseqs, nheads, headdim, dstate).
    """
    dims = check_ssd_inputs(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit,
                            initial_states=initial_states, cu_seqlens=cu_seqlens)
    batch, seqlen, ngroups = dims.batch, dims.seqlen, dims.ngroups
    per_group = dims.nheads // ngroups
    dtype = _compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_states)
    layout = _ChunkLayout.build(seqlen, chunk_size, cu_seqlens, x.device)

    # chunked views; heads split as (group, head within group): g r
    dtp = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)
    dtq = layout.to_chunks(dtp).unflatten(3, (ngroups, per_group))  # (b, c, q, g, r)
    xdt = layout.to_chunks(x.to(dtype)).unflatten(3, (ngroups, per_group)) * dtq.unsqueeze(-1)  # (b, c, q, g, r, p)
    Bq = layout.to_chunks(B.to(dtype))  # (b, c, q, g, n)
    Cq = layout.to_chunks(C.to(dtype))
    dA = dtq.permute(0, 1, 3, 4, 2) * A.to(dtype).reshape(ngroups, per_group, 1)  # (b, c, g, r, q)
    # log-decay from the chunk start to each position, inclusive; summed in float64 so that differences of it
    # carry only the final rounding error
    cum = dA.double().cumsum(dim=-1).to(dtype)

    # (1) intra-chunk: y_i += sum_{j<=i} exp(sum_{j<k<=i} dA_k) (C_i . B_j) dt_j x_j
    decay = _masked_decay(cum)  # (b, c, g, r, q, q)
    scores = decay * torch.einsum("bcign,bcjgn->bcgij", Cq, Bq).unsqueeze(3)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, xdt)

    # (2) each chunk's end state from its own tokens: sum_j exp(sum_{j<k<=last} dA_k) dt_j x_j B_j^T
    to_end = torch.exp(cum[..., -1:] - cum).permute(0, 1, 4, 2, 3).unsqueeze(-1)  # (b, c, q, g, r, 1)
    states = torch.einsum("bcjgrp,bcjgn->bcgrpn", xdt * to_end, Bq)

    # (3) state passing over chunks
    if initial_states is None:
        initial: list[Optional[Tensor]] = [None] * len(layout.first_chunk)
    else:
        h0 = initial_states.to(dtype).unflatten(1, (ngroups, per_group))  # (seqs, g, r, p, n)
        rows = batch if cu_seqlens is None else 1
        initial = [h0[i * rows:(i + 1) * rows] for i in range(len(layout.first_chunk))]
    entering, final = _pass_states(states, torch.exp(cum[..., -1]), layout, initial)

    # (4) output of the state entering each chunk: C_i^T exp(sum_{k<=i} dA_k) h_in
    y_in = torch.einsum("bcign,bcgrpn->bcigrp", Cq, entering)
    y = y + y_in * torch.exp(cum).permute(0, 1, 4, 2, 3).unsqueeze(-1)

    y = layout.from_chunks(y.flatten(3, 4), seqlen)  # (b, l, h, p)
    return _finish(y, x, D, z, final.flatten(1, 2), return_final_states)


def ssd_step_reference(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_softplus: bool = False,
    dt_limit: Sequence[float] = _NO_LIMIT,
) -> Tensor:
    """One SSD decode token: h = exp(dt' A) h + dt' x B^T; y = h C + D x (times silu(z)).

    state (batch, nheads, headdim, dstate), updated in place (kept in its dtype); x (batch, nheads, headdim);
    dt (batch, nheads); B, C (batch, ngroups, dstate); D, z, dt_bias as archspec.kernels.ssd_step.
    Returns y (batch, nheads, headdim) in x.dtype.
    """
    dims = check_ssd_step_inputs(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit)
    dtype = _compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    dtp = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)
    Bh = _heads_from_groups(B.to(dtype), dims.nheads)
    Ch = _heads_from_groups(C.to(dtype), dims.nheads)
    h, y = _state_update(state.to(dtype), x.to(dtype), dtp, A.to(dtype), Bh, Ch)
    state.copy_(h)
    return _skip_and_gate(y, x, D, z).to(x.dtype)
