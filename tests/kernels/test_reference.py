"""The PyTorch SSD references agree with each other, with decoding, with autograd, and reject bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from archspec.kernels import (
    check_ssd_inputs,
    prepare_dt,
    resolve_backend,
    ssd_chunked,
    ssd_naive,
    ssd_recurrent,
    ssd_scan,
    ssd_step,
    ssd_step_reference,
)
from archspec.kernels import reference
from errors import rel_err

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-10)

OPTIONS = {
    "plain": {},
    "D": {"with_D": True},
    "D_per_channel": {"with_D": True, "D_has_hdim": True},
    "z": {"with_z": True},
    "dt_bias": {"with_dt_bias": True},
    "dt_softplus": {"dt_softplus": True},
    "dt_limit": {"dt_limit": (0.004, 0.05)},
    "initial_states": {"with_initial_states": True},
    "all": {"with_D": True, "D_has_hdim": True, "with_z": True, "with_dt_bias": True, "dt_softplus": True,
            "dt_limit": (0.002, 0.08), "with_initial_states": True},
}

# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size)
SHAPES = {
    "unaligned": (2, 37, 4, 3, 1, 5, 8),
    "groups": (1, 48, 6, 4, 3, 4, 16),
    "chunk_longer_than_seq": (2, 11, 4, 2, 2, 3, 32),
    "one_token": (1, 1, 2, 2, 1, 2, 4),
}

# packed sequence lengths, with the chunk size they are run at
PACKINGS = {
    "unaligned": ([5, 17, 15], 8),
    "aligned": ([16, 8, 8], 8),
    "tiny_and_long": ([1, 30, 2], 4),
}


def _no_grad_kwargs(inputs: dict) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_chunked_and_recurrent_match_naive_in_float64(make_ssd_inputs, shape, options):
    *sizes, chunk = shape
    inputs = make_ssd_inputs(*sizes, F64, **options)
    y_ref, h_ref = ssd_naive(**inputs, chunk_size=chunk, return_final_states=True)
    for scan in (ssd_chunked, ssd_recurrent):
        y, h = scan(**inputs, chunk_size=chunk, return_final_states=True)
        torch.testing.assert_close(y, y_ref, **TIGHT)
        torch.testing.assert_close(h, h_ref, **TIGHT)
    assert y_ref.shape == inputs["x"].shape
    assert h_ref.shape == (sizes[0], sizes[2], sizes[3], sizes[5])


@pytest.mark.parametrize("packing", PACKINGS.values(), ids=PACKINGS.keys())
@pytest.mark.parametrize("options", [OPTIONS["plain"], OPTIONS["all"]], ids=["plain", "all"])
def test_packed_sequences_match_naive_in_float64(make_ssd_inputs, packing, options):
    seqlens, chunk = packing
    inputs = make_ssd_inputs(1, sum(seqlens), 4, 3, 2, 5, F64, seqlens=seqlens, **options)
    y_ref, h_ref = ssd_naive(**inputs, chunk_size=chunk, return_final_states=True)
    assert h_ref.shape == (len(seqlens), 4, 3, 5)
    for scan in (ssd_chunked, ssd_recurrent):
        y, h = scan(**inputs, chunk_size=chunk, return_final_states=True)
        torch.testing.assert_close(y, y_ref, **TIGHT)
        torch.testing.assert_close(h, h_ref, **TIGHT)


@pytest.mark.parametrize("scan", [ssd_chunked, ssd_naive, ssd_recurrent], ids=lambda f: f.__name__)
@pytest.mark.parametrize("with_initial_states", [False, True], ids=["zero_start", "initial_states"])
def test_packed_sequences_equal_separate_runs(make_ssd_inputs, scan, with_initial_states):
    seqlens = [5, 17, 15]
    inputs = make_ssd_inputs(1, sum(seqlens), 4, 3, 2, 5, F64, seqlens=seqlens, with_D=True, with_z=True,
                             with_dt_bias=True, dt_softplus=True, with_initial_states=with_initial_states)
    y, h = scan(**inputs, chunk_size=8, return_final_states=True)
    per_token = ("x", "dt", "B", "C", "z")
    shared = {k: v for k, v in inputs.items() if k not in per_token + ("cu_seqlens", "initial_states")}
    offsets = inputs["cu_seqlens"].tolist()
    for i, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
        alone = {k: inputs[k][:, start:end] for k in per_token}
        if with_initial_states:
            alone["initial_states"] = inputs["initial_states"][i:i + 1]
        y_i, h_i = scan(**alone, **shared, chunk_size=8, return_final_states=True)
        torch.testing.assert_close(y[:, start:end], y_i, **TIGHT)
        torch.testing.assert_close(h[i:i + 1], h_i, **TIGHT)


def test_chunk_size_does_not_change_the_result(make_ssd_inputs):
    inputs = make_ssd_inputs(2, 45, 4, 3, 2, 4, F64, **OPTIONS["all"])
    y_ref, h_ref = ssd_chunked(**inputs, chunk_size=1, return_final_states=True)
    for chunk in (2, 4, 16, 64, 256):
        y, h = ssd_chunked(**inputs, chunk_size=chunk, return_final_states=True)
        torch.testing.assert_close(y, y_ref, **TIGHT)
        torch.testing.assert_close(h, h_ref, **TIGHT)


def test_two_token_example_follows_the_recurrence():
    x = torch.tensor([[[[1.5]], [[-2.0]]]], dtype=F64)
    dt = torch.tensor([[[0.3], [0.7]]], dtype=F64)
    A = torch.tensor([-1.2], dtype=F64)
    B = torch.tensor([[[[0.5]], [[2.0]]]], dtype=F64)
    C = torch.tensor([[[[3.0]], [[-1.0]]]], dtype=F64)
    h0 = torch.tensor([[[[0.25]]]], dtype=F64)
    h1 = math.exp(0.3 * -1.2) * 0.25 + 0.3 * 1.5 * 0.5
    h2 = math.exp(0.7 * -1.2) * h1 + 0.7 * -2.0 * 2.0
    expected_y = torch.tensor([h1 * 3.0, h2 * -1.0], dtype=F64).view(1, 2, 1, 1)
    for scan in (ssd_naive, ssd_recurrent, ssd_chunked):
        y, h = scan(x, dt, A, B, C, 1, initial_states=h0, return_final_states=True)
        torch.testing.assert_close(y, expected_y, **TIGHT)
        torch.testing.assert_close(h, torch.tensor(h2, dtype=F64).view(1, 1, 1, 1), **TIGHT)


@pytest.mark.parametrize("scan", [ssd_chunked, ssd_naive, ssd_recurrent], ids=lambda f: f.__name__)
@pytest.mark.parametrize("D_has_hdim", [False, True], ids=["D_per_head", "D_per_channel"])
def test_output_adds_D_x_then_gates_with_silu_z(make_ssd_inputs, scan, D_has_hdim):
    inputs = make_ssd_inputs(2, 19, 4, 3, 2, 5, F64, with_D=True, D_has_hdim=D_has_hdim, with_z=True,
                             with_initial_states=True)
    x, D, z = inputs["x"], inputs["D"], inputs["z"]
    D_full = D if D_has_hdim else D[:, None].expand(4, 3)
    plain = {k: v for k, v in inputs.items() if k not in ("D", "z")}
    y_ssm = scan(**plain, chunk_size=8)
    y = scan(**inputs, chunk_size=8)
    torch.testing.assert_close(y, (y_ssm + D_full * x) * z * torch.sigmoid(z), **TIGHT)


def test_chunked_is_causal(make_ssd_inputs):
    inputs = make_ssd_inputs(1, 40, 4, 3, 2, 4, torch.float32, **OPTIONS["all"])
    y = ssd_chunked(**inputs, chunk_size=16)
    t = 21
    changed = dict(inputs)
    for key in ("x", "dt", "B", "C", "z"):
        changed[key] = inputs[key].clone()
        changed[key][:, t] += 1.0
    y_changed = ssd_chunked(**changed, chunk_size=16)
    torch.testing.assert_close(y_changed[:, :t], y[:, :t], rtol=0, atol=0)
    assert not torch.allclose(y_changed[:, t], y[:, t])


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["float32", "bfloat16"]
)
@pytest.mark.parametrize("packed", [False, True], ids=["batched", "packed"])
def test_low_precision_chunked_is_close_to_float64_naive(make_ssd_inputs, dtype, tolerance, packed):
    if packed:
        inputs = make_ssd_inputs(1, 200, 4, 16, 2, 16, dtype, seqlens=[70, 3, 127], **OPTIONS["all"])
    else:
        inputs = make_ssd_inputs(2, 200, 4, 16, 2, 16, dtype, **OPTIONS["all"])
    y, h = ssd_chunked(**inputs, chunk_size=64, return_final_states=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    as_f64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    y_ref, h_ref = ssd_naive(**as_f64, chunk_size=64, return_final_states=True)
    assert rel_err(y, y_ref) < tolerance
    assert rel_err(h, h_ref) < tolerance


GRAD_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _loss(scan, inputs: dict, chunk: int, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    y, h = scan(**inputs, chunk_size=chunk, return_final_states=True)
    return (y * weights[0]).sum() + (h * weights[1]).sum()


@pytest.mark.parametrize("packed", [False, True], ids=["batched", "packed"])
def test_chunked_gradients_match_autograd_through_naive(make_ssd_inputs, packed):
    seqlens = [9, 14, 6] if packed else None
    batch = 1 if packed else 2
    inputs = make_ssd_inputs(batch, 29, 4, 3, 2, 4, F64, seqlens=seqlens, requires_grad=True, **OPTIONS["all"])
    y_ref, h_ref = ssd_naive(**inputs, chunk_size=8, return_final_states=True)
    weights = (torch.randn_like(y_ref), torch.randn_like(h_ref))
    leaves = [inputs[k] for k in GRAD_ARGS]
    grads_ref = torch.autograd.grad(_loss(ssd_naive, inputs, 8, weights), leaves)
    grads = torch.autograd.grad(_loss(ssd_chunked, inputs, 8, weights), leaves)
    for name, g, g_ref in zip(GRAD_ARGS, grads, grads_ref):
        assert g_ref.abs().sum() > 0, name
        torch.testing.assert_close(g, g_ref, **TIGHT, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_chunked_passes_gradcheck(make_ssd_inputs):
    inputs = make_ssd_inputs(1, 7, 2, 2, 1, 2, F64, seqlens=[3, 4], requires_grad=True, **OPTIONS["all"])
    fixed = {k: v for k, v in inputs.items() if k not in GRAD_ARGS}

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ssd_chunked(**dict(zip(GRAD_ARGS, tensors)), **fixed, chunk_size=2, return_final_states=True)

    assert torch.autograd.gradcheck(run, tuple(inputs[k] for k in GRAD_ARGS))


@pytest.mark.parametrize(("dtype", "tol"), [(F64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_decoding_step_by_step_equals_the_scan(make_ssd_inputs, dtype, tol):
    prefill, total = 13, 20
    inputs = make_ssd_inputs(2, total, 4, 3, 2, 5, dtype, **OPTIONS["all"])
    y_full, h_full = ssd_chunked(**inputs, chunk_size=8, return_final_states=True)

    per_token = ("x", "dt", "B", "C", "z")
    params = {k: v for k, v in inputs.items() if k not in per_token + ("initial_states",)}
    head = {k: inputs[k][:, :prefill] for k in per_token}
    y_head, state = ssd_chunked(**head, **params, initial_states=inputs["initial_states"], chunk_size=8,
                                return_final_states=True)
    state_before = state
    ys = [y_head]
    for t in range(prefill, total):
        ys.append(ssd_step_reference(state, **{k: inputs[k][:, t] for k in per_token}, **params).unsqueeze(1))
    assert state is state_before
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=tol, atol=tol)
    torch.testing.assert_close(state, h_full, rtol=tol, atol=tol)


def test_step_keeps_the_state_dtype_and_returns_y_in_x_dtype(make_ssd_inputs):
    inputs = make_ssd_inputs(2, 1, 4, 3, 2, 5, torch.bfloat16, with_D=True, with_z=True)
    token = {k: v[:, 0] if k in ("x", "dt", "B", "C", "z") else v for k, v in inputs.items()}
    state = torch.randn(2, 4, 3, 5)
    expected_state = ssd_scan(**inputs, initial_states=state, chunk_size=4, return_final_states=True)[1]
    y = ssd_step(state, **token)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 4, 3)
    assert state.dtype == torch.float32
    torch.testing.assert_close(state, expected_state, rtol=1e-6, atol=1e-6)


def test_prepare_dt_adds_bias_then_softplus_then_clamps():
    dt = torch.tensor([[-30.0, -1.0, 0.0, 2.0, 25.0]], dtype=torch.bfloat16)
    bias = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    out = prepare_dt(dt, bias, dt_softplus=True, dt_limit=(0.01, 10.0))
    assert out.dtype == torch.float32
    expected = torch.nn.functional.softplus(dt.float() + bias).clamp(0.01, 10.0)
    torch.testing.assert_close(out, expected)
    assert out[0, 0].item() == pytest.approx(0.01) and out[0, -1].item() == pytest.approx(10.0)
    assert prepare_dt(dt.double()).dtype == F64
    assert prepare_dt(dt).min().item() == 0.0  # the default limit (0, inf) clamps negative steps to zero


def test_auto_backend_on_cpu_runs_the_chunked_reference(make_ssd_inputs, monkeypatch):
    inputs = make_ssd_inputs(1, 12, 2, 2, 1, 2, torch.float32, with_D=True)
    expected = ssd_chunked(**inputs, chunk_size=4)
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return expected

    monkeypatch.setattr(reference, "ssd_chunked", spy)
    assert ssd_scan(**inputs, chunk_size=4) is expected
    assert ssd_scan(**inputs, chunk_size=4, backend="torch") is expected
    assert len(calls) == 2 and calls[0]["D"] is inputs["D"]
    assert resolve_backend("auto", on_cuda=False) == "torch"


def test_torch_backend_equals_chunked_reference(make_ssd_inputs):
    inputs = make_ssd_inputs(2, 33, 4, 3, 2, 5, torch.float32, **OPTIONS["all"])
    y, h = ssd_scan(**inputs, chunk_size=16, return_final_states=True, backend="torch")
    y_ref, h_ref = ssd_chunked(**inputs, chunk_size=16, return_final_states=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cuda", "Torch", "", None])
def test_unknown_backend_is_rejected_naming_the_choices(make_ssd_inputs, backend):
    inputs = make_ssd_inputs(1, 4, 2, 2, 1, 2, torch.float32)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'triton', 'torch'"):
        ssd_scan(**inputs, chunk_size=4, backend=backend)
    state = torch.zeros(1, 2, 2, 2)
    token = {k: v[:, 0] if k in ("x", "dt", "B", "C") else v for k, v in inputs.items()}
    with pytest.raises(ValueError, match="backend must be one of"):
        ssd_step(state, **token, backend=backend)


def test_triton_backend_on_cpu_needs_the_interpreter(make_ssd_inputs, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_ssd_inputs(1, 4, 2, 2, 1, 2, torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ssd_scan(**inputs, chunk_size=4, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", on_cuda=False) == "triton"


def _break(inputs: dict, key: str, value) -> dict:
    broken = dict(inputs)
    broken[key] = value
    return broken


BAD_INPUTS = {
    "x_3d": (lambda i: _break(i, "x", i["x"][0]), "x must have shape"),
    "x_integer": (lambda i: _break(i, "x", i["x"].long()), "x must be a floating-point tensor"),
    "x_empty": (lambda i: {**i, "x": i["x"][:, :0], "dt": i["dt"][:, :0], "B": i["B"][:, :0],
                           "C": i["C"][:, :0]}, "at least one token"),
    "dt_shape": (lambda i: _break(i, "dt", i["dt"][..., :1]), r"dt must have shape \(batch, seqlen, nheads\)"),
    "A_shape": (lambda i: _break(i, "A", i["A"][:2]), r"A must have shape \(nheads,\)"),
    "B_seqlen": (lambda i: _break(i, "B", i["B"][:, :5]), "B must have shape"),
    "groups_not_dividing": (lambda i: {**i, "B": i["B"].repeat(1, 1, 3, 1)[:, :, :3],
                                       "C": i["C"].repeat(1, 1, 3, 1)[:, :, :3]}, "ngroups .* must divide nheads"),
    "C_differs": (lambda i: _break(i, "C", i["C"][..., :2]), "C must have shape"),
    "D_shape": (lambda i: _break(i, "D", torch.ones(4, 5)), "D must have shape"),
    "z_shape": (lambda i: _break(i, "z", i["x"][..., :1]), "z must have shape"),
    "dt_bias_shape": (lambda i: _break(i, "dt_bias", torch.ones(3)), "dt_bias must have shape"),
    "initial_states_shape": (lambda i: _break(i, "initial_states", torch.zeros(2, 4, 3, 5)),
                             "initial_states must have shape"),
    "dt_limit_reversed": (lambda i: _break(i, "dt_limit", (0.1, 0.01)), "dt_limit"),
    "chunk_not_power_of_two": (lambda i: _break(i, "chunk_size", 12), "chunk_size must be a positive power of two"),
    "chunk_zero": (lambda i: _break(i, "chunk_size", 0), "chunk_size must be a positive power of two"),
    "chunk_float": (lambda i: _break(i, "chunk_size", 8.0), "chunk_size must be a positive power of two"),
    "cu_seqlens_with_batch_2": (lambda i: _break(i, "cu_seqlens", torch.tensor([0, 4, 16])), "batch must be 1"),
}

BAD_PACKED = {
    "cu_seqlens_short": (torch.tensor([0, 4, 12]), "end at seqlen = 16"),
    "cu_seqlens_not_from_zero": (torch.tensor([1, 4, 16]), "start at 0"),
    "cu_seqlens_decreasing": (torch.tensor([0, 9, 4, 16]), "strictly increasing"),
    "cu_seqlens_empty_sequence": (torch.tensor([0, 4, 4, 16]), "strictly increasing"),
    "cu_seqlens_float": (torch.tensor([0.0, 4.0, 16.0]), "int32 or int64"),
    "cu_seqlens_2d": (torch.tensor([[0, 16]]), r"shape \(nseqs \+ 1,\)"),
    "initial_states_per_batch_not_per_sequence": (torch.tensor([0, 4, 16]), "initial_states must have shape"),
}

SCANS = [ssd_naive, ssd_recurrent, ssd_chunked, ssd_scan]


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_are_rejected_with_a_clear_message(make_ssd_inputs, case):
    breaker, message = case
    inputs = make_ssd_inputs(2, 16, 4, 3, 2, 4, torch.float32, with_D=True, with_z=True, with_dt_bias=True,
                             with_initial_states=True)
    broken = breaker({**inputs, "chunk_size": 8})
    for scan in SCANS:
        with pytest.raises(ValueError, match=message):
            scan(**broken)


@pytest.mark.parametrize("case", BAD_PACKED.values(), ids=BAD_PACKED.keys())
def test_bad_packing_is_rejected_with_a_clear_message(make_ssd_inputs, case):
    """Every scan rejects bad offsets; the implementations also reject empty sequences, which ssd_scan takes."""
    cu_seqlens, message = case
    with_initial_states = "initial_states" in message
    inputs = make_ssd_inputs(1, 16, 4, 3, 2, 4, torch.float32, with_initial_states=with_initial_states)
    empty = bool((cu_seqlens[1:] == cu_seqlens[:-1]).any()) if cu_seqlens.dim() == 1 else False
    for scan in [s for s in SCANS if not (empty and s is ssd_scan)]:
        with pytest.raises(ValueError, match=message):
            scan(**inputs, chunk_size=8, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("with_initial_states", [False, True])
@pytest.mark.parametrize("lengths", [[0, 5, 0, 0, 11], [7, 0, 9], [16, 0]])
def test_ssd_scan_takes_empty_packed_sequences(make_ssd_inputs, lengths, with_initial_states):
    """An empty packed sequence adds no outputs and keeps its initial state (zero without one) as its final state,
    so dL/d(its initial state) is dL/d(its final state); the other sequences' outputs, final states and every
    gradient are those of the same call without the empty sequences (empty first, last and in a row)."""
    nseqs, kept = len(lengths), [i for i, n in enumerate(lengths) if n]
    offsets = torch.tensor([0] + list(itertools.accumulate(lengths)))
    inputs = make_ssd_inputs(1, sum(lengths), 4, 3, 2, 5, torch.float64, requires_grad=True, with_D=True,
                             with_z=True, with_dt_bias=True, dt_softplus=True)
    initial = torch.randn(nseqs, 4, 3, 5, dtype=torch.float64, requires_grad=True) if with_initial_states else None
    y, final = ssd_scan(**inputs, chunk_size=4, cu_seqlens=offsets, initial_states=initial,
                        return_final_states=True)
    kept_initial = initial.detach()[kept].requires_grad_(True) if with_initial_states else None
    kept_inputs = {k: v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v
                   for k, v in inputs.items()}
    y_kept, final_kept = ssd_scan(**kept_inputs, chunk_size=4, cu_seqlens=offsets[[0] + [i + 1 for i in kept]],
                                  initial_states=kept_initial, return_final_states=True)
    torch.testing.assert_close(y, y_kept)
    torch.testing.assert_close(final[kept], final_kept)
    empty = [i for i in range(nseqs) if i not in kept]
    want_empty = initial.detach()[empty] if with_initial_states else torch.zeros(len(empty), 4, 3, 5,
                                                                                 dtype=torch.float64)
    torch.testing.assert_close(final[empty], want_empty)

    dy, dfinal = torch.randn_like(y), torch.randn_like(final)
    torch.autograd.backward([y, final], [dy, dfinal])
    torch.autograd.backward([y_kept, final_kept], [dy, dfinal[kept]])
    for name, value in inputs.items():
        if torch.is_tensor(value) and value.requires_grad:
            torch.testing.assert_close(value.grad, kept_inputs[name].grad, msg=name)
    if with_initial_states:
        torch.testing.assert_close(initial.grad[kept], kept_initial.grad)
        torch.testing.assert_close(initial.grad[empty], dfinal[empty])


def test_ssd_scan_with_empty_sequences_checks_the_initial_states_count(make_ssd_inputs):
    inputs = make_ssd_inputs(1, 16, 4, 3, 2, 5, torch.float32)
    with pytest.raises(ValueError, match=r"initial_states must have shape \(nseqs=3"):
        ssd_scan(**inputs, chunk_size=8, cu_seqlens=torch.tensor([0, 4, 4, 16]),
                 initial_states=torch.zeros(2, 4, 3, 5))


def test_check_ssd_inputs_returns_the_sizes(make_ssd_inputs):
    inputs = make_ssd_inputs(1, 10, 6, 3, 2, 5, torch.float32, seqlens=[4, 6])
    dims = check_ssd_inputs(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], 4,
                            cu_seqlens=inputs["cu_seqlens"])
    assert dims == (1, 10, 6, 3, 2, 5)
    assert (dims.batch, dims.seqlen, dims.nheads, dims.headdim, dims.ngroups, dims.dstate) == tuple(dims)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("state", torch.zeros(2, 4, 3, 6), "state must have shape"),
        ("x", torch.zeros(2, 1, 4, 3), r"x must have shape \(batch, nheads, headdim\)"),
        ("dt", torch.zeros(2, 1, 4), r"dt must have shape \(batch, nheads\)"),
        ("B", torch.zeros(2, 3, 5), "ngroups .* must divide nheads"),
        ("C", torch.zeros(2, 2, 4), "C must have shape"),
        ("state", torch.zeros(2, 4, 3, 5, dtype=torch.int32), "state must be a floating-point tensor"),
    ],
)
def test_bad_step_inputs_are_rejected_with_a_clear_message(make_ssd_inputs, key, value, message):
    inputs = make_ssd_inputs(2, 1, 4, 3, 2, 5, torch.float32)
    token = {k: v[:, 0] if k in ("x", "dt", "B", "C") else v for k, v in inputs.items()}
    args = {"state": torch.zeros(2, 4, 3, 5), **token, key: value}
    for step in (ssd_step_reference, ssd_step):
        with pytest.raises(ValueError, match=message):
            step(**args)
