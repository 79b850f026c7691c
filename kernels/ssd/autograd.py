"""`ssd_scan_triton`: the differentiable Triton SSD scan (forward.py and backward*.py under one autograd.Function)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..checks import check_ssd_inputs
from .config import MIN_CHUNK
from .backward import ssd_backward
from .forward import ForwardResult, ssd_forward
from .layout import ChunkTable, build_chunk_table

__all__ = ["ssd_scan_triton"]

_NO_LIMIT = (0.0, float("inf"))
# The per-chunk kernels put the chunk index on launch grid axis 2, which CUDA caps at 65535.
_MAX_CHUNKS = 65535


class _SSDScan(torch.autograd.Function):
    """Flattened SSD scan: x, z (T, nheads, headdim), dt (T, nheads), B, C (T, ngroups, dstate) -> (y, final), final
    None where final_states is False and the forward skipped it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], dt_bias: Optional[Tensor], initial_states: Optional[Tensor], table: ChunkTable,
                dt_softplus: bool, dt_limit: tuple[float, float], keep_states: bool,
                final_states: bool) -> tuple[Tensor, Optional[Tensor]]:
        fwd = ssd_forward(x, dt, A, B, C, table, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                          dt_limit=dt_limit, initial_states=initial_states, keep_states=keep_states,
                          final_states=final_states)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, *fwd)
        ctx.has_initial = initial_states is not None
        ctx.table = table
        ctx.dt_softplus = dt_softplus
        ctx.dt_limit = dt_limit
        ctx.set_materialize_grads(False)
        return fwd.y, fwd.final_states

    @staticmethod
    def backward(ctx: Any, dy: Optional[Tensor], dfinal: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        x, dt, A, B, C, D, z, dt_bias, *saved = ctx.saved_tensors
        fwd = ForwardResult(*saved)
        if dy is None:
            dy = torch.zeros_like(fwd.y)
        initial_grad = ctx.has_initial and ctx.needs_input_grad[8]
        g = ssd_backward(dy, dfinal, x, dt, A, B, C, ctx.table, fwd, D=D, z=z, dt_bias=dt_bias,
                         dt_softplus=ctx.dt_softplus, dt_limit=ctx.dt_limit, initial_grad=initial_grad)
        need = ctx.needs_input_grad

        def cast(grad: Optional[Tensor], like: Optional[Tensor], i: int) -> Optional[Tensor]:
            return grad.to(like.dtype) if grad is not None and like is not None and need[i] else None

        return (cast(g.dx, x, 0), cast(g.ddt, dt, 1), cast(g.dA, A, 2), cast(g.dB, B, 3), cast(g.dC, C, 4),
                cast(g.dD, D, 5), cast(g.dz, z, 6), cast(g.ddt_bias, dt_bias, 7),
                g.dinitial_states if initial_grad else None, None, None, None, None, None)


def _unit_last_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dense(t: Optional[Tensor]) -> Optional[Tensor]:
    """The kernels index the per-head parameters A, D, dt_bias as dense arrays (head * headdim + p)."""
    return t.contiguous() if t is not None else None


def ssd_scan_triton(
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
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Mamba-2 SSD scan by the chunked algorithm in Triton; differentiable in every tensor argument.

    x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A (nheads,); B, C (batch, seqlen, ngroups,
    dstate); D (nheads,) or (nheads, headdim); z like x; dt_bias (nheads,); initial_states (batch or nseqs,
    nheads, headdim, dstate); cu_seqlens (nseqs + 1,) with batch 1. chunk_size: a power of two >= 16.
    Matmul operands are in x.dtype (B, C, z cast to it), accumulation in float32.
    Returns y (batch, seqlen, nheads, headdim) in x.dtype, or (y, final_states float32).
    The kernels assume decays of at most 1, dt' A <= 0 (Mamba-2's A = -exp(A_log) with dt' >= 0, which the default
    dt_limit lower bound of 0 guarantees): a head with a step where dt' A > 0 gets NaN outputs from that step on
    (checking A on the host would cost a device sync per call); `ssd_chunked` computes any sign exactly.
    With cu_seqlens the chunk layout is read back to the host (one device sync). At most 65535 chunks per call
    (sequences are chunked separately, so nchunks = sum of ceil(length / chunk_size)).
    """
    batch, seqlen, nheads, headdim, ngroups, dstate = check_ssd_inputs(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_limit=dt_limit, initial_states=initial_states,
        cu_seqlens=cu_seqlens)
    if chunk_size < MIN_CHUNK:
        raise ValueError(f"chunk_size must be at least {MIN_CHUNK} for the Triton kernels, got {chunk_size}")
    if x.dtype == torch.float64:
        raise ValueError("x must be float32, float16 or bfloat16 for the Triton kernels, got torch.float64")
    table = build_chunk_table(batch, seqlen, chunk_size, cu_seqlens, x.device)
    if table.nchunks > _MAX_CHUNKS:
        raise ValueError(f"the call has {table.nchunks} chunks of {chunk_size} tokens, more than the {_MAX_CHUNKS} "
                         "the Triton kernels can launch; use a larger chunk_size or split the batch")
    ntokens = batch * seqlen
    flat = (ntokens, nheads, headdim)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    # a call that no backward will follow (no_grad, inference_mode, or no input needing a gradient) lets the
    # forward skip the chunk states only the backward reads
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))
    y, final = _SSDScan.apply(
        _unit_last_stride(x.reshape(flat)), _unit_last_stride(dt.reshape(ntokens, nheads)), _dense(A),
        _unit_last_stride(B.to(x.dtype).reshape(ntokens, ngroups, dstate)),
        _unit_last_stride(C.to(x.dtype).reshape(ntokens, ngroups, dstate)),
        _dense(D), _unit_last_stride(z.reshape(flat)) if z is not None else None, _dense(dt_bias), initial_states,
        table, bool(dt_softplus), (lo, hi), grads, return_final_states)
    y = y.reshape(batch, seqlen, nheads, headdim)
    return (y, final) if return_final_states else y
