"""Shared inputs for the SSD kernel tests.

`make_ssd_inputs(...)` draws fresh random SSD scan arguments; tests get it through the fixture of the same
name (request `make_ssd_inputs` as a test argument and call it), which avoids importing a conftest module.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import pytest
import torch


def make_ssd_inputs(
    batch: int,
    seqlen: int,
    nheads: int,
    headdim: int,
    ngroups: int,
    dstate: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    *,
    seed: Optional[int] = None,
    with_D: bool = False,
    D_has_hdim: bool = False,
    with_z: bool = False,
    with_dt_bias: bool = False,
    dt_softplus: bool = False,
    dt_limit: Optional[tuple[float, float]] = None,
    with_initial_states: bool = False,
    seqlens: Optional[Sequence[int]] = None,
    requires_grad: bool = False,
) -> dict[str, Any]:
    """Fresh random keyword arguments for ssd_scan / the references (everything but chunk_size and backend).

    Always returns x (batch, seqlen, nheads, headdim), dt (batch, seqlen, nheads), A (nheads,), B, C (batch,
    seqlen, ngroups, dstate). The flags add: D ((nheads, headdim) if D_has_hdim else (nheads,)); z like x;
    dt_bias (nheads,); dt_softplus=True (dt is then a raw pre-activation, as in the Mamba-2 mixer, and with dt_bias
    the bias carries the per-head step size); dt_limit as given; initial_states (batch or nseqs, nheads, headdim,
    dstate); cu_seqlens (int32) from the packed sequence lengths `seqlens` (batch 1, lengths summing to seqlen).
    x, dt, B, C, z have `dtype`; A, D, dt_bias and initial_states are float32 (float64 when dtype is float64),
    as the mixer keeps its parameters and state. Values follow Mamba-2's initialisation: A = -exp(U[log 1, log 16]),
    effective dt log-uniform in [1e-3, 1e-1] (times ~e^{+-1} when drawn as a raw pre-activation), so that a chunk
    of a few dozen tokens covers decays from ~1 down to ~0.
    Inputs are drawn on the CPU from a generator seeded by `seed` (when None: $ARCHSPEC_TEST_SEED, to replay a
    printed seed, else a fresh one, printed), then moved to `device`; floating tensors are leaves with
    requires_grad set as asked.
    """
    if seed is None:
        seed = int(os.environ.get("ARCHSPEC_TEST_SEED") or torch.randint(0, 2**31 - 1, ()).item())
        print(f"make_ssd_inputs seed={seed}")
    gen = torch.Generator().manual_seed(seed)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*shape: int, dt: torch.dtype = param_dtype) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dt)

    def randn(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dt)

    def log_uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.exp(math.log(lo) + rand(*shape, dt=torch.float64) * (math.log(hi) - math.log(lo)))

    out: dict[str, Any] = {
        "x": randn(batch, seqlen, nheads, headdim),
        "A": -log_uniform(1.0, 16.0, nheads).to(param_dtype),
        "B": randn(batch, seqlen, ngroups, dstate),
        "C": randn(batch, seqlen, ngroups, dstate),
    }
    def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
        return y + torch.log(-torch.expm1(-y))

    if dt_softplus:
        out["dt_softplus"] = True
        if with_dt_bias:
            out["dt_bias"] = inverse_softplus(log_uniform(1e-3, 1e-1, nheads)).to(param_dtype)
            out["dt"] = randn(batch, seqlen, nheads, dt=torch.float64).mul(0.5).to(dtype)
        else:
            out["dt"] = inverse_softplus(log_uniform(1e-3, 1e-1, batch, seqlen, nheads)).to(dtype)
    else:
        out["dt"] = log_uniform(1e-3, 1e-1, batch, seqlen, nheads).to(dtype)
        if with_dt_bias:
            out["dt_bias"] = log_uniform(1e-3, 5e-2, nheads).to(param_dtype)
    if with_D:
        out["D"] = randn(*((nheads, headdim) if D_has_hdim else (nheads,)), dt=param_dtype)
    if with_z:
        out["z"] = randn(batch, seqlen, nheads, headdim)
    if dt_limit is not None:
        out["dt_limit"] = dt_limit
    nstates = batch
    if seqlens is not None:
        if batch != 1 or sum(seqlens) != seqlen:
            raise ValueError(f"seqlens {list(seqlens)} need batch 1 and must sum to seqlen {seqlen}")
        out["cu_seqlens"] = torch.tensor([0, *seqlens], dtype=torch.int64).cumsum(0).to(torch.int32)
        nstates = len(seqlens)
    if with_initial_states:
        out["initial_states"] = randn(nstates, nheads, headdim, dstate, dt=param_dtype)
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value.requires_grad_(requires_grad)
            out[key] = value
    return out


@pytest.fixture(name="make_ssd_inputs")
def make_ssd_inputs_fixture():
    """The `make_ssd_inputs` factory (call it with the sizes, dtype and option flags)."""
    return make_ssd_inputs


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch.empty / torch.empty_like in a kernel test comes back full of NaN (or -1 for integer dtypes),
    so an output element that a kernel forgets to write fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # a leaf that requires grad (torch.utils.checkpoint makes one) may not be filled in place
            return t.fill_(float("nan") if t.is_floating_point() else -1)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
