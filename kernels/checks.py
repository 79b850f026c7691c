"""Argument validation shared by every SSD implementation (PyTorch references and Triton kernels).

Each check raises a ValueError that names the argument and says what was expected, so that a wrong call
fails at the entry point rather than deep inside an einsum or a kernel launch.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

from torch import Tensor

from .offsets import OFFSET_DTYPES, host_offsets

__all__ = ["SSDDims", "SSDStepDims", "check_ssd_inputs", "check_ssd_step_inputs"]


class SSDDims(NamedTuple):
    """Sizes of an SSD scan call: x is (batch, seqlen, nheads, headdim), B and C (batch, seqlen, ngroups, dstate)."""

    batch: int
    seqlen: int
    nheads: int
    headdim: int
    ngroups: int
    dstate: int


class SSDStepDims(NamedTuple):
    """Sizes of an SSD decode step: x is (batch, nheads, headdim), B and C (batch, ngroups, dstate)."""

    batch: int
    nheads: int
    headdim: int
    ngroups: int
    dstate: int


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _require_float(name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _require_shape(name: str, t: Tensor, expected: tuple[int, ...], layout: str) -> None:
    if _shape(t) != expected:
        raise ValueError(f"{name} must have shape {layout} = {expected}, got {_shape(t)}")


def _check_params(
    nheads: int,
    headdim: int,
    A: Tensor,
    D: Optional[Tensor],
    dt_bias: Optional[Tensor],
    dt_limit: Sequence[float],
) -> None:
    """Checks the per-head parameters A, D, dt_bias and the dt_limit pair."""
    _require_float("A", A)
    _require_shape("A", A, (nheads,), "(nheads,)")
    if D is not None:
        _require_float("D", D)
        if _shape(D) not in ((nheads,), (nheads, headdim)):
            raise ValueError(
                f"D must have shape (nheads,) = ({nheads},) or (nheads, headdim) = ({nheads}, {headdim}), "
                f"got {_shape(D)}"
            )
    if dt_bias is not None:
        _require_float("dt_bias", dt_bias)
        _require_shape("dt_bias", dt_bias, (nheads,), "(nheads,)")
    if len(dt_limit) != 2:
        raise ValueError(f"dt_limit must be a pair (min, max), got {dt_limit!r}")
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"dt_limit must be a pair (min, max) with min <= max, got {dt_limit!r}")


def _check_groups(nheads: int, ngroups: int) -> None:
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"ngroups (B.shape[-2] = {ngroups}) must divide nheads (x.shape[-2] = {nheads})")


def _check_devices(tensors: dict[str, Optional[Tensor]], reference: Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but x is on {reference.device}; all inputs must share a device")


def _check_cu_seqlens(cu_seqlens: Tensor, batch: int, seqlen: int, check_values: bool) -> int:
    """Checks the packed-sequence offsets and returns the number of sequences."""
    if cu_seqlens.dtype not in OFFSET_DTYPES:
        raise ValueError(f"cu_seqlens must be an int32 or int64 tensor, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape (nseqs + 1,) with nseqs >= 1, got {_shape(cu_seqlens)}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along seqlen, so batch must be 1, got {batch}")
    if check_values:
        offsets = list(host_offsets(cu_seqlens))
        if offsets[0] != 0 or offsets[-1] != seqlen:
            raise ValueError(
                f"cu_seqlens must start at 0 and end at seqlen = {seqlen}, got first {offsets[0]}, last {offsets[-1]}"
            )
        if any(b <= a for a, b in zip(offsets[:-1], offsets[1:])):
            raise ValueError(f"cu_seqlens must be strictly increasing (no empty sequences; archspec.kernels.ssd_scan "
                             f"takes them), got {offsets}")
    return cu_seqlens.numel() - 1


def check_ssd_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    *,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    dt_limit: Sequence[float] = (0.0, float("inf")),
    initial_states: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    check_values: bool = True,
) -> SSDDims:
    """Validates the arguments of an SSD scan (see archspec.kernels.ssd_scan) and returns their sizes.

    Shapes: x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A (nheads,); B, C (batch, seqlen,
    ngroups, dstate) with ngroups dividing nheads; D (nheads,) or (nheads, headdim); z like x; dt_bias (nheads,);
    initial_states (batch, nheads, headdim, dstate), or (nseqs, nheads, headdim, dstate) with cu_seqlens;
    cu_seqlens (nseqs + 1,) int32/int64, strictly increasing from 0 to seqlen, only with batch == 1.
    chunk_size must be a positive power of two. All tensors must be on x's device.

    check_values=False skips the checks that read cu_seqlens' values (a host sync on a GPU).
    Raises ValueError naming the offending argument.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size}")
    _require_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, nheads, headdim), got {_shape(x)}")
    batch, seqlen, nheads, headdim = _shape(x)
    if seqlen < 1:
        raise ValueError(f"x must hold at least one token (seqlen >= 1), got shape {_shape(x)}")
    _require_float("B", B)
    if B.dim() != 4 or _shape(B)[:2] != (batch, seqlen):
        raise ValueError(
            f"B must have shape (batch, seqlen, ngroups, dstate) with batch = {batch}, seqlen = {seqlen}, "
            f"got {_shape(B)}"
        )
    ngroups, dstate = _shape(B)[2:]
    _check_groups(nheads, ngroups)
    _require_float("C", C)
    _require_shape("C", C, _shape(B), "(batch, seqlen, ngroups, dstate), the same as B,")
    _require_float("dt", dt)
    _require_shape("dt", dt, (batch, seqlen, nheads), "(batch, seqlen, nheads)")
    _check_params(nheads, headdim, A, D, dt_bias, dt_limit)
    if z is not None:
        _require_float("z", z)
        _require_shape("z", z, _shape(x), "(batch, seqlen, nheads, headdim), the same as x,")
    _check_devices(
        {"dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
         "initial_states": initial_states, "cu_seqlens": cu_seqlens},
        x,
    )
    nstates = batch
    if cu_seqlens is not None:
        nstates = _check_cu_seqlens(cu_seqlens, batch, seqlen, check_values)
    if initial_states is not None:
        _require_float("initial_states", initial_states)
        lead = "nseqs" if cu_seqlens is not None else "batch"
        _require_shape(
            "initial_states", initial_states, (nstates, nheads, headdim, dstate),
            f"({lead}, nheads, headdim, dstate)",
        )
    return SSDDims(batch, seqlen, nheads, headdim, ngroups, dstate)


def check_ssd_step_inputs(
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
    dt_limit: Sequence[float] = (0.0, float("inf")),
) -> SSDStepDims:
    """Validates the arguments of one SSD decode step (see archspec.kernels.ssd_step) and returns their sizes.

    Shapes: state (batch, nheads, headdim, dstate) floating point (updated in place by the step);
    x (batch, nheads, headdim); dt (batch, nheads); A (nheads,); B, C (batch, ngroups, dstate) with ngroups
    dividing nheads; D (nheads,) or (nheads, headdim); z like x; dt_bias (nheads,).
    Raises ValueError naming the offending argument.
    """
    _require_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, nheads, headdim) for a decode step, got {_shape(x)}")
    batch, nheads, headdim = _shape(x)
    _require_float("B", B)
    if B.dim() != 3 or _shape(B)[0] != batch:
        raise ValueError(f"B must have shape (batch, ngroups, dstate) with batch = {batch}, got {_shape(B)}")
    ngroups, dstate = _shape(B)[1:]
    _check_groups(nheads, ngroups)
    _require_float("C", C)
    _require_shape("C", C, _shape(B), "(batch, ngroups, dstate), the same as B,")
    _require_float("dt", dt)
    _require_shape("dt", dt, (batch, nheads), "(batch, nheads)")
    _require_float("state", state)
    _require_shape("state", state, (batch, nheads, headdim, dstate), "(batch, nheads, headdim, dstate)")
    _check_params(nheads, headdim, A, D, dt_bias, dt_limit)
    if z is not None:
        _require_float("z", z)
        _require_shape("z", z, _shape(x), "(batch, nheads, headdim), the same as x,")
    _check_devices({"state": state, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}, x)
    return SSDStepDims(batch, nheads, headdim, ngroups, dstate)
