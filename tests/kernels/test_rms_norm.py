"""archspec.kernels.norm.rms_norm computes mamba_ssm's gated grouped RMSNorm and its gradients.

Both backends (the Triton kernels, in Triton's interpreter without CUDA; the PyTorch reference) are compared with
a float64 formula written here, gradients with autograd through that formula, by the relative Frobenius error on
fresh random inputs, with every torch.empty allocation poisoned with NaN so that an element a kernel forgot to
write fails the check. The `gpu` tests add the real size of a Mamba-2 2.7B mixer (65,536 tokens x d_inner 4096).
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch

import archspec.kernels.norm.triton_norm as triton_norm
from archspec.blocks.norm import RMSNorm, RMSNormGated
from archspec.kernels.norm import MAX_GROUP_SIZE, rms_norm, rms_norm_reference
from errors import rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("triton", "torch")

# Relative Frobenius error allowed, outputs and gradients alike. Every input is exactly representable in its dtype
# and all math is float32, so the error is float32 rounding (~1e-7) plus one rounding of the result to the
# output dtype: about 2e-3 per element for bfloat16 (8 mantissa bits), 3e-4 for float16 (11 bits). Measured on
# the CPU: float32 <= 3e-7, bfloat16 <= 3.7e-3, float16 <= 2.3e-4 (outputs and gradients).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}



def fresh_generator() -> torch.Generator:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def gated_rms_norm_f64(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor], group_size: int,
                       norm_before_gate: bool, eps: float) -> torch.Tensor:
    """The float64 formula, group by group: x, z (..., d), weight (d,) -> (..., d) float64."""
    x, weight = x.double(), weight.double()
    gate = None if z is None else z.double() * torch.sigmoid(z.double())
    h = x * gate if gate is not None and not norm_before_gate else x
    parts = []
    for start in range(0, x.shape[-1], group_size):
        part = h[..., start:start + group_size]
        parts.append(part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + eps) * weight[start:start + group_size])
    y = torch.cat(parts, dim=-1)
    return y * gate if gate is not None and norm_before_gate else y


def check_against_formula(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor], *,
                          group_size: Optional[int], norm_before_gate: bool, eps: float, backend: str,
                          dy: Optional[torch.Tensor] = None) -> None:
    """rms_norm(...) and its gradients (dx, dweight, dz) match the float64 formula on the same inputs."""
    tol = TOL[x.dtype]
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, z)]
    y = rms_norm(leaves[0], leaves[1], z=leaves[2], eps=eps, group_size=group_size,
                 norm_before_gate=norm_before_gate, backend=backend)
    assert y.dtype == x.dtype and y.shape == x.shape
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, z)]
    y_ref = gated_rms_norm_f64(refs[0], refs[1], refs[2], group_size or x.shape[-1], norm_before_gate, eps)
    assert rel_err(y, y_ref) < tol
    if dy is None:
        dy = randn(fresh_generator(), *x.shape, dtype=x.dtype)
    used = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(y, [leaves[i] for i in used], dy)
    grads_ref = torch.autograd.grad(y_ref, [refs[i] for i in used], dy.double())
    for i, g, g_ref in zip(used, grads, grads_ref):
        assert g.dtype == leaves[i].dtype, ("dx", "dweight", "dz")[i]
        assert rel_err(g, g_ref) < tol, (("dx", "dweight", "dz")[i], rel_err(g, g_ref))


CASES = [
    # (leading dims, d, group_size, with z, norm_before_gate, eps)
    ((2, 7), 64, None, True, False, 1e-5),
    ((2, 7), 64, None, True, True, 1e-5),
    ((37,), 48, None, False, False, 0.5),  # d not a power of two; eps large enough to matter
    ((3, 11), 96, 24, True, False, 1e-5),  # group_size = d / 4
    ((3, 11), 96, 24, True, True, 0.5),
    ((50,), 80, 20, False, False, 1e-5),  # grouped RMSNorm without a gate, group not a power of two
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("lead, d, group_size, with_z, norm_before_gate, eps", CASES)
def test_matches_float64_formula_with_gradients(backend, dtype, lead, d, group_size, with_z, norm_before_gate, eps):
    gen = fresh_generator()
    x = randn(gen, *lead, d, dtype=dtype)
    z = randn(gen, *lead, d, dtype=dtype, scale=2.0) if with_z else None
    weight = randn(gen, d, scale=0.5) + 1.0
    check_against_formula(x, weight, z, group_size=group_size, norm_before_gate=norm_before_gate, eps=eps,
                          backend=backend)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_triton_many_row_blocks_split_over_programs(norm_before_gate):
    """333 rows of two groups: several row blocks per backward program, the last block partial."""
    gen = fresh_generator()
    x, z = randn(gen, 333, 128), randn(gen, 333, 128)
    weight = randn(gen, 128)
    check_against_formula(x, weight, z, group_size=64, norm_before_gate=norm_before_gate, eps=1e-5,
                          backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_upstream_gradient(backend):
    """x and z are column slices of one wider projection (as in the Mamba-2 mixer); dy is a strided view too."""
    gen = fresh_generator()
    d = 40
    proj = randn(gen, 3, 9, 2 * d + 13, dtype=torch.bfloat16)
    z, x = proj[..., :d], proj[..., d:2 * d]
    dy = randn(gen, 3, 9, d + 5, dtype=torch.bfloat16)[..., 5:]
    weight = randn(gen, d)
    check_against_formula(x, weight, z, group_size=10, norm_before_gate=False, eps=1e-5, backend=backend, dy=dy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_that_cannot_be_flattened_and_strided_channels(backend):
    """x: a (seqlen, batch, d) view of a (batch, seqlen, d) tensor (rows not one evenly strided run); z: channels
    strided (last dim not unit stride)."""
    gen = fresh_generator()
    x = randn(gen, 4, 6, 32).transpose(0, 1)
    z = randn(gen, 32, 6, 4).permute(1, 2, 0)
    check_against_formula(x, randn(gen, 32), z, group_size=16, norm_before_gate=True, eps=1e-5, backend=backend)


def test_triton_largest_group():
    gen = fresh_generator()
    x = randn(gen, 3, MAX_GROUP_SIZE, dtype=torch.bfloat16)
    z = randn(gen, 3, MAX_GROUP_SIZE, dtype=torch.bfloat16)
    check_against_formula(x, randn(gen, MAX_GROUP_SIZE), z, group_size=None, norm_before_gate=False, eps=1e-5,
                          backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_dtype_may_differ_from_input_dtype(backend):
    """float32 activations with a bfloat16 weight: y in float32, dweight in bfloat16."""
    gen = fresh_generator()
    x = randn(gen, 5, 24)
    weight = randn(gen, 24, dtype=torch.bfloat16)
    y = rms_norm(x, weight.requires_grad_(), backend=backend)
    assert y.dtype == torch.float32
    assert rel_err(y, gated_rms_norm_f64(x, weight, None, 24, False, 1e-5)) < TOL[torch.float32]
    (dweight,) = torch.autograd.grad(y, weight, torch.ones_like(y))
    assert dweight.dtype == torch.bfloat16


def test_reference_is_float64_capable_and_differentiable():
    gen = fresh_generator()
    x, z, weight = (randn(gen, *s, dtype=torch.float64).requires_grad_() for s in ((3, 12), (3, 12), (12,)))
    y = rms_norm_reference(x, weight, z=z, group_size=4, norm_before_gate=True)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, gated_rms_norm_f64(x, weight, z, 4, True, 1e-5), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: rms_norm_reference(a, b, z=c, group_size=4), (x, weight, z))


def test_auto_uses_the_reference_for_cpu_tensors(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the Triton kernels were dispatched to for CPU tensors")

    monkeypatch.setattr(triton_norm, "rms_norm_triton", fail)
    x = torch.randn(4, 16)
    torch.testing.assert_close(rms_norm(x, torch.ones(16)), rms_norm_reference(x, torch.ones(16)), rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        rms_norm(torch.randn(2, 8), torch.ones(8), backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, field", [
    ({"group_size": 5}, "group_size"),
    ({"group_size": 0}, "group_size"),
    ({"group_size": -8}, "group_size"),
    ({"group_size": 8.0}, "group_size"),
    ({"weight": torch.ones(8)}, "weight"),
    ({"z": torch.randn(3, 8)}, "z"),
    ({"x": torch.ones(3, 16, dtype=torch.int64)}, "x"),
    ({"eps": -1e-5}, "eps"),
])
def test_bad_arguments_raise_value_errors_naming_them(backend, kwargs, field):
    args = {"x": torch.randn(3, 16), "weight": torch.ones(16), "z": None, **kwargs}
    x, weight = args.pop("x").to(DEVICE), args.pop("weight").to(DEVICE)
    z = args.pop("z")
    with pytest.raises(ValueError, match=field):
        rms_norm(x, weight, z=None if z is None else z.to(DEVICE), backend=backend, **args)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        rms_norm(torch.randn(2, 8), torch.ones(8), backend="cuda")


def test_triton_rejects_groups_larger_than_one_block():
    d = 2 * MAX_GROUP_SIZE
    with pytest.raises(ValueError, match="group_size"):
        rms_norm(torch.randn(1, d, device=DEVICE), torch.ones(d, device=DEVICE), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("group_size, with_z, norm_before_gate", [
    (None, True, False), (None, True, True), (512, True, False), (None, False, False),
])
def test_gpu_real_size_matches_float32_reference(group_size, with_z, norm_before_gate):
    """65,536 tokens x d_inner 4096 in bfloat16 against the reference on float32 copies (output rounding only)."""
    gen = fresh_generator()
    x = randn(gen, 16, 4096, 4096, dtype=torch.bfloat16)
    z = randn(gen, 16, 4096, 4096, dtype=torch.bfloat16) if with_z else None
    weight = randn(gen, 4096, scale=0.5) + 1.0
    dy = randn(gen, 16, 4096, 4096, dtype=torch.bfloat16)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, z)]
    y = rms_norm(leaves[0], leaves[1], z=leaves[2], group_size=group_size, norm_before_gate=norm_before_gate)
    refs = [t.detach().float().requires_grad_() if t is not None else None for t in (x, weight, z)]
    y_ref = rms_norm_reference(refs[0], refs[1], z=refs[2], group_size=group_size,
                               norm_before_gate=norm_before_gate)
    assert rel_err(y, y_ref) < TOL[torch.bfloat16]
    used = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(y, [leaves[i] for i in used], dy)
    grads_ref = torch.autograd.grad(y_ref, [refs[i] for i in used], dy.float())
    for i, g, g_ref in zip(used, grads, grads_ref):
        assert rel_err(g, g_ref) < TOL[torch.bfloat16], (("dx", "dweight", "dz")[i], rel_err(g, g_ref))


@pytest.mark.gpu
def test_gpu_norm_layers_use_the_kernels_and_match_the_reference(monkeypatch):
    gen = fresh_generator()
    calls = []
    kernel = triton_norm.rms_norm_triton

    def counted(*args, **kwargs) -> torch.Tensor:
        calls.append(kwargs)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(triton_norm, "rms_norm_triton", counted)
    gated = RMSNormGated(256, group_size=64).to(DEVICE)
    plain = RMSNorm(256).to(DEVICE)
    x, z = randn(gen, 2, 50, 256, dtype=torch.bfloat16), randn(gen, 2, 50, 256, dtype=torch.bfloat16)
    assert rel_err(gated(x, z), rms_norm_reference(x, gated.weight, z=z, group_size=64)) < TOL[torch.bfloat16]
    assert rel_err(plain(x), rms_norm_reference(x, plain.weight)) < TOL[torch.bfloat16]
    assert len(calls) == 2
