"""The single dispatch point for the SSD scan and decode step: Triton on CUDA, the PyTorch reference elsewhere."""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional, Sequence

from torch import Tensor

from . import reference
from .empty_sequences import has_empty_sequences, scan_skipping_empty
from .reference import ScanResult

__all__ = ["BACKENDS", "resolve_backend", "ssd_scan", "ssd_step"]

BACKENDS = ("auto", "triton", "torch")
_NO_LIMIT = (0.0, float("inf"))


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def resolve_backend(backend: str, on_cuda: bool) -> str:
    """The concrete backend ("triton" or "torch") for a requested one and the inputs' device.

    "auto" picks "triton" on CUDA when triton is installed, else "torch". "triton" on CPU tensors needs
    TRITON_INTERPRET=1 (the Triton interpreter). Raises ValueError for unknown names or an impossible request.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "triton" if on_cuda and importlib.util.find_spec("triton") is not None else "torch"
    if backend == "triton" and not on_cuda and not _triton_interpreter_on():
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the Triton interpreter on the CPU); "
            "use backend='torch' or 'auto' for CPU tensors"
        )
    return backend


def _scan_impl(backend: str, x: Tensor) -> Callable[..., ScanResult]:
    if resolve_backend(backend, x.is_cuda) == "triton":
        from .ssd import ssd_scan_triton

        return ssd_scan_triton
    return reference.ssd_chunked


def _step_impl(backend: str, x: Tensor) -> Callable[..., Tensor]:
    if resolve_backend(backend, x.is_cuda) == "triton":
        from .ssd import ssd_step_triton

        return ssd_step_triton
    return reference.ssd_step_reference


def ssd_scan(
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
    backend: str = "auto",
) -> ScanResult:
    """Mamba-2 SSD scan.

    x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A (nheads,) negative; B, C (batch, seqlen,
    ngroups, dstate), ngroups dividing nheads; D (nheads,) or (nheads, headdim); z like x; dt_bias (nheads,);
    initial_states (batch, nheads, headdim, dstate), or (nseqs, ...) with cu_seqlens (nseqs + 1,) int32/int64
    cumulative lengths of sequences packed along seqlen (batch 1); an empty sequence's final state is its initial
    state (empty_sequences.py; the implementations themselves take none). Per head, dt' = clamp(softplus?(dt +
    dt_bias), *dt_limit); h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T; y_t = h_t C_t + D x_t, times silu(z_t) if z.
    Accumulates in float32. Returns y in x.dtype, or (y, final_states) with final_states float32
    (batch or nseqs, nheads, headdim, dstate) (float64 from the torch backend given float64 inputs).
    backend: "auto" (Triton on CUDA, else the chunked PyTorch reference), "triton" or "torch".
    """
    impl = _scan_impl(backend, x)
    if has_empty_sequences(cu_seqlens, x.shape[1]):
        return scan_skipping_empty(impl, x, B, cu_seqlens, initial_states, return_final_states, dt=dt, A=A, C=C,
                                   chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                   dt_limit=dt_limit)
    return impl(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                dt_limit=dt_limit, initial_states=initial_states, cu_seqlens=cu_seqlens,
                return_final_states=return_final_states)


def ssd_step(
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
    backend: str = "auto",
) -> Tensor:
    """One Mamba-2 SSD decode token; updates state in place.

    state (batch, nheads, headdim, dstate) float32; x (batch, nheads, headdim); dt (batch, nheads);
    B, C (batch, ngroups, dstate); z like x; A, D, dt_bias, dt_softplus, dt_limit as ssd_scan.
    Returns y (batch, nheads, headdim) in x.dtype. backend as ssd_scan.
    """
    impl = _step_impl(backend, x)
    return impl(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
