"""causal_conv1d (archspec.kernels.conv) computes the channel-last causal depthwise conv1d (+ SiLU) and its gradients.

Both backends are compared with an explicit float64 loop written here (gradients: autograd through that loop) by the
relative Frobenius error, on fresh random inputs, with every torch.empty allocation poisoned with NaN so that an
element a kernel forgot to write fails the check. Without CUDA the Triton kernels run in the Triton interpreter on
tiny sizes with small tiles (several row and channel tiles, partial ones at both edges); with CUDA the `gpu` tests
add real sizes.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from archspec.kernels.conv import causal_conv1d, causal_conv1d_reference  # noqa: E402
from archspec.kernels.conv.triton_conv import ConvTiles, causal_conv1d_triton, default_tiles  # noqa: E402
from errors import float64_leaves, rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_TILES = ConvTiles(block_t=16, block_c=32, tiles_per_prog=2)
# Relative Frobenius error allowed: float32 accumulates exactly as the float64 loop up to float32 rounding
# (measured ~1e-7); bfloat16 rounds inputs, dy and the outputs to 8 mantissa bits (~4e-3 per element).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def loop_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
              cu_seqlens: Optional[torch.Tensor]) -> torch.Tensor:
    """The definition, one output row at a time, in float64 (differentiable): x (batch, seqlen, channels)."""
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()  # converted once, so its gradient is summed in float64
    seqlen, d_conv = x.shape[1], weight.shape[1]
    starts = [0] * seqlen
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            starts[lo:hi] = [lo] * (hi - lo)
    rows = []
    for t in range(seqlen):
        acc = torch.zeros_like(x[:, t]) if bias is None else bias.expand_as(x[:, t])
        for k in range(d_conv):
            src = t - (d_conv - 1) + k
            if src >= starts[t]:
                acc = acc + weight[:, k] * x[:, src]
        rows.append(F.silu(acc) if activation == "silu" else acc)
    return torch.stack(rows, dim=1)


class Case(NamedTuple):
    batch: int
    seqlen: int
    channels: int
    d_conv: int
    bias: bool = True
    activation: Optional[str] = "silu"
    strided: bool = False
    seqlens: Optional[tuple[int, ...]] = None


CASES = [
    Case(2, 37, 40, 4),
    Case(2, 37, 40, 2, bias=False),
    Case(1, 35, 23, 3, activation=None),
    Case(2, 21, 40, 8, strided=True),
    Case(2, 3, 20, 8),
    Case(1, 1, 9, 4, bias=False, activation=None),
    Case(1, 37, 40, 4, strided=True, seqlens=(2, 19, 16)),
    Case(1, 30, 24, 3, bias=False, activation=None, seqlens=(11, 1, 18)),
]


def make_inputs(case: Case, dtype: torch.dtype, device: str = DEVICE) -> dict:
    """Fresh random x (a column slice of a wider tensor when case.strided), weight, bias and cu_seqlens."""
    skip = 5 if case.strided else 0
    x = torch.randn(case.batch, case.seqlen, case.channels + 2 * skip, device=device).to(dtype)
    x = x[..., skip:skip + case.channels]
    inputs = {
        "x": x.detach().requires_grad_(),
        "weight": (torch.randn(case.channels, case.d_conv, device=device) / case.d_conv ** 0.5).to(dtype)
        .requires_grad_(),
        "bias": torch.randn(case.channels, device=device).to(dtype).requires_grad_() if case.bias else None,
        "activation": case.activation,
        "cu_seqlens": None if case.seqlens is None
        else torch.tensor((0, *case.seqlens), device=device).cumsum(0).to(torch.int32),
    }
    if case.strided:
        assert inputs["x"].stride(-1) == 1 and not inputs["x"].is_contiguous()
    return inputs


def run(backend: str, inputs: dict) -> torch.Tensor:
    """backend "triton": the Triton kernels on small tiles (two row tiles per backward program)."""
    if backend == "triton":
        return causal_conv1d_triton(**inputs, tiles=SMALL_TILES)
    return causal_conv1d(**inputs, backend=backend)


def check_forward_and_gradients(backend: str, case: Case, dtype: torch.dtype) -> None:
    inputs = make_inputs(case, dtype)
    y = run(backend, inputs)
    assert y.shape == (case.batch, case.seqlen, case.channels) and y.dtype == dtype and y.is_contiguous()
    ref = loop_conv(**inputs)
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) < TOL[dtype]

    dy = torch.randn_like(y)
    params = [inputs["x"], inputs["weight"]] + ([inputs["bias"]] if case.bias else [])
    grads = torch.autograd.grad(y, params, dy)
    ref_grads = torch.autograd.grad(ref, params, dy.double())
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == dtype, name
        assert torch.isfinite(g).all(), name
        assert rel_err(g, r) < TOL[dtype], name


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_output_and_gradients_match_float64_loop(backend: str, case: Case) -> None:
    check_forward_and_gradients(backend, case, torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", [CASES[0], CASES[6]], ids=str)
def test_bfloat16_output_and_gradients_match_float64_loop(backend: str, case: Case) -> None:
    check_forward_and_gradients(backend, case, torch.bfloat16)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_strided_weight_and_bias_match_float64_loop(backend: str) -> None:
    """weight and bias as column views of one (channels, d_conv + 1) parameter: strided along channels."""
    channels, d_conv = 40, 4
    packed = torch.randn(channels, d_conv + 1, device=DEVICE, requires_grad=True)
    weight, bias = packed[:, :d_conv], packed[:, d_conv]
    assert bias.stride() == (d_conv + 1,)
    x = torch.randn(2, 37, channels, device=DEVICE, requires_grad=True)
    inputs = {"x": x, "weight": weight, "bias": bias, "activation": "silu", "cu_seqlens": None}
    y = run(backend, inputs)
    ref = loop_conv(**inputs)
    assert rel_err(y, ref) < TOL[torch.float32]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, packed], dy)
    ref_grads = torch.autograd.grad(ref, [x, packed], dy.double())
    for name, g, r in zip(("dx", "dweight and dbias"), grads, ref_grads):
        assert rel_err(g, r) < TOL[torch.float32], name


def test_reference_works_in_float64() -> None:
    inputs = make_inputs(CASES[6], torch.float64, device="cpu")
    y = causal_conv1d_reference(**inputs)
    assert y.dtype == torch.float64
    assert rel_err(y, loop_conv(**inputs)) < 1e-12


def test_dispatch_triton_uses_default_tiles_and_matches_reference() -> None:
    inputs = make_inputs(Case(2, 70, 150, 4, strided=True), torch.float32)
    y = causal_conv1d(**inputs, backend="triton")
    assert rel_err(y, loop_conv(**inputs)) < TOL[torch.float32]


def test_default_tiles_take_the_environment_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """ARCHSPEC_CONV_TILES overrides the chosen fields and leaves the others."""
    assert default_tiles(8192, 4352) == ConvTiles(64, 128, 8)
    monkeypatch.setenv("ARCHSPEC_CONV_TILES", "block_t=32, tiles_per_prog=4")
    assert default_tiles(8192, 4352) == ConvTiles(32, 128, 4)


def test_auto_backend_on_cpu_is_the_reference() -> None:
    inputs = make_inputs(CASES[0], torch.float32, device="cpu")
    assert torch.equal(causal_conv1d(**inputs, backend="auto"), causal_conv1d_reference(**inputs))


def test_packed_sequences_equal_separate_calls() -> None:
    seqlens = (5, 2, 12)
    inputs = make_inputs(Case(1, sum(seqlens), 40, 4, seqlens=seqlens), torch.float32)
    packed = run("triton", inputs)
    pieces = torch.split(inputs["x"], list(seqlens), dim=1)
    separate = torch.cat([run("triton", {**inputs, "x": p, "cu_seqlens": None}) for p in pieces], dim=1)
    assert rel_err(packed, separate) < TOL[torch.float32]


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_inputs(CASES[0], torch.float32, device="cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        causal_conv1d(**inputs, backend="triton")


def _bad_arguments() -> list:
    x = torch.randn(2, 10, 6)
    w, b = torch.randn(6, 4), torch.randn(6)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    return [
        ("x", dict(x=torch.randn(10, 6), weight=w)),
        ("x", dict(x=torch.randint(0, 3, (2, 10, 6)), weight=w)),
        ("weight", dict(x=x, weight=torch.randn(5, 4))),
        ("weight", dict(x=x, weight=torch.randn(6, 1, 4))),
        ("d_conv", dict(x=x, weight=torch.randn(6, 9))),
        ("bias", dict(x=x, weight=w, bias=torch.randn(7))),
        ("activation", dict(x=x, weight=w, bias=b, activation="relu")),
        ("cu_seqlens", dict(x=x, weight=w, cu_seqlens=cu)),
        ("cu_seqlens", dict(x=x[:1], weight=w, cu_seqlens=cu.float())),
        ("cu_seqlens", dict(x=x[:1], weight=w, cu_seqlens=torch.tensor([0, 4, 9]))),
        ("cu_seqlens", dict(x=x[:1], weight=w, cu_seqlens=torch.tensor([0, 6, 4, 10]))),
        ("backend", dict(x=x, weight=w, backend="cuda")),
    ]


@pytest.mark.parametrize("name, kwargs", _bad_arguments(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_value_error_naming_them(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=name):
        causal_conv1d(**kwargs)


GPU_CASES = [
    Case(2, 2048, 4352, 4, strided=True),
    Case(2, 2048, 4352, 4, bias=False, activation=None),
    Case(1, 4096, 4352, 4, strided=True, seqlens=(1000, 3, 3093)),
    Case(2, 1500, 1000, 8),
    Case(2, 1500, 1000, 2),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_real_size_output_and_gradients_match_float64_reference(case: Case, dtype: torch.dtype) -> None:
    check_gpu_against_reference(case, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[1:4], ids=str)
def test_gpu_32_row_tiles_of_one_row_tile_per_program_match_float64_reference(monkeypatch: pytest.MonkeyPatch,
                                                                              case: Case) -> None:
    """Every backward program's g handed on only through the halo rows formed first."""
    monkeypatch.setenv("ARCHSPEC_CONV_TILES", "block_t=32,tiles_per_prog=1")
    check_gpu_against_reference(case, torch.bfloat16)


def check_gpu_against_reference(case: Case, dtype: torch.dtype) -> None:
    """causal_conv1d on CUDA (the Triton kernels at default tiles) against the float64 reference."""
    inputs = make_inputs(case, dtype, device="cuda")
    y = causal_conv1d(**inputs, backend="auto")
    leaves = float64_leaves(inputs, requires_grad=True)
    ref = causal_conv1d_reference(**leaves)
    assert torch.isfinite(y).all() and rel_err(y, ref) < TOL[dtype]
    dy = torch.randn_like(y)
    names = ["x", "weight"] + (["bias"] if case.bias else [])
    grads = torch.autograd.grad(y, [inputs[n] for n in names], dy)
    ref_grads = torch.autograd.grad(ref, [leaves[n] for n in names], dy.double())
    for name, g, r in zip(names, grads, ref_grads):
        assert torch.isfinite(g).all() and rel_err(g, r) < TOL[dtype], name
