"""The Triton decode step (archspec.kernels.ssd.ssd_step_triton) advances the SSD state by one token.

Compared with ssd_step_reference and, over a whole sequence, with the float64 scan `ssd_naive`; outputs are
poisoned with NaN first. Without CUDA the kernel runs in the Triton interpreter.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from archspec.kernels.reference import ssd_naive, ssd_step_reference  # noqa: E402
from archspec.kernels.ssd import ssd_step_triton  # noqa: E402
from errors import rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.empty / torch.empty_like return NaN-filled tensors, so unwritten outputs fail."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))


def token(inputs: dict, t: int) -> dict:
    """The step arguments for token t of scan inputs (x, dt, B, C, z sliced; parameters passed through)."""
    step = {k: v for k, v in inputs.items() if k not in ("initial_states", "cu_seqlens")}
    for k in ("x", "dt", "B", "C", "z"):
        if k in step:
            step[k] = step[k][:, t]
    return step


@pytest.mark.parametrize("options", [
    {},
    dict(with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True, dt_limit=(0.002, 0.08)),
    dict(with_D=True, D_has_hdim=True),
])
def test_step_matches_reference_and_updates_state_in_place(make_ssd_inputs, options: dict) -> None:
    inputs = make_ssd_inputs(3, 1, 4, 40, 2, 24, torch.float32, DEVICE, with_initial_states=True, **options)
    state = inputs["initial_states"].clone()
    state_ref = state.clone()
    storage = state.data_ptr()
    y = ssd_step_triton(state, **token(inputs, 0))
    y_ref = ssd_step_reference(state_ref, **token(inputs, 0))
    assert state.data_ptr() == storage
    assert y.shape == y_ref.shape and y.dtype == inputs["x"].dtype
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(state, state_ref) < 1e-5


def test_step_reads_strided_parameters(make_ssd_inputs) -> None:
    """A and dt_bias columns of a wider parameter, D (nheads, headdim) column-major, x a slice of a wider row."""
    inputs = make_ssd_inputs(3, 1, 4, 40, 2, 24, torch.float32, DEVICE, with_initial_states=True, with_D=True,
                             D_has_hdim=True, with_dt_bias=True, dt_softplus=True)
    step = token(inputs, 0)
    step["A"] = torch.stack([step["A"], torch.zeros(4, device=DEVICE)], 1)[:, 0]
    step["dt_bias"] = torch.stack([step["dt_bias"], torch.zeros(4, device=DEVICE)], 1)[:, 0]
    step["D"] = step["D"].t().contiguous().t()
    step["x"] = torch.cat([step["x"], torch.zeros(3, 4, 8, device=DEVICE)], -1)[..., :40]
    state, state_ref = inputs["initial_states"].clone(), inputs["initial_states"].clone()
    y = ssd_step_triton(state, **step)
    y_ref = ssd_step_reference(state_ref, **step)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(state, state_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_reproduce_the_scan(make_ssd_inputs, dtype: torch.dtype) -> None:
    """Decoding token by token from the initial state gives the scan's outputs and final state."""
    inputs = make_ssd_inputs(2, 12, 4, 32, 1, 16, dtype, DEVICE, with_initial_states=True, with_D=True,
                             with_z=True, with_dt_bias=True, dt_softplus=True)
    ref = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}
    y_ref, final_ref = ssd_naive(chunk_size=16, return_final_states=True, **ref)
    state = inputs["initial_states"].clone()
    ys = torch.stack([ssd_step_triton(state, **token(inputs, t)) for t in range(12)], dim=1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(ys, y_ref) < tol
    assert rel_err(state, final_ref) < tol


def test_step_rejects_a_state_of_the_wrong_shape(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(2, 1, 4, 32, 1, 16, torch.float32, DEVICE)
    state = torch.zeros(2, 4, 32, 8, device=DEVICE)
    with pytest.raises(ValueError, match="state"):
        ssd_step_triton(state, **token(inputs, 0))
