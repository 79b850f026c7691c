"""RMSNorm, the gated grouped RMSNorm of Mamba-2, LayerNorm and make_norm."""
import pytest
import torch
import torch.nn.functional as F

from archspec.blocks.norm import LayerNorm, RMSNorm, RMSNormGated, make_norm


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


def test_rmsnorm_matches_formula():
    norm = RMSNorm(24, eps=1e-5).double()
    _randomize(norm)
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_starts_as_identity_scale_and_keeps_input_dtype():
    norm = RMSNorm(16, dtype=torch.bfloat16)
    assert torch.equal(norm.weight, torch.ones(16, dtype=torch.bfloat16))
    x = torch.randn(2, 5, 16)
    y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(2, 5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group_size", [8, 32])
def test_gated_norm_after_gate_normalises_each_group(group_size):
    d = 32
    norm = RMSNormGated(d, eps=1e-5, group_size=group_size, norm_before_gate=False).double()
    _randomize(norm)
    x, z = torch.randn(2, 6, d, dtype=torch.float64), torch.randn(2, 6, d, dtype=torch.float64)
    gated = x * z * torch.sigmoid(z)
    expected = torch.empty_like(x)
    for g in range(d // group_size):
        cols = slice(g * group_size, (g + 1) * group_size)
        part = gated[..., cols]
        expected[..., cols] = part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight[cols]
    torch.testing.assert_close(norm(x, z), expected, rtol=1e-12, atol=1e-12)


def test_gated_norm_before_gate_gates_the_normalised_output():
    d, group_size = 24, 12
    norm = RMSNormGated(d, group_size=group_size, norm_before_gate=True).double()
    _randomize(norm)
    x, z = torch.randn(4, d, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64)
    ungated = RMSNormGated(d, group_size=group_size).double()
    ungated.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x, z), ungated(x) * F.silu(z), rtol=1e-12, atol=1e-12)


def test_gated_norm_without_gate_and_one_group_is_rmsnorm():
    gated, plain = RMSNormGated(20).double(), RMSNorm(20).double()
    _randomize(gated)
    plain.load_state_dict(gated.state_dict())
    x = torch.randn(3, 20, dtype=torch.float64)
    torch.testing.assert_close(gated(x), plain(x), rtol=1e-12, atol=1e-12)


def test_gated_norm_rejects_group_size_that_does_not_divide_d():
    with pytest.raises(ValueError, match="group_size"):
        RMSNormGated(32, group_size=12)


def test_make_norm_builds_each_kind():
    assert isinstance(make_norm("rmsnorm", 8, 1e-6), RMSNorm)
    layer = make_norm("layernorm", 8, 1e-6)
    assert isinstance(layer, LayerNorm) and layer.eps == 1e-6
    with pytest.raises(ValueError, match="kind"):
        make_norm("batchnorm", 8)


def test_layernorm_matches_torch_and_accepts_other_dtype_input():
    layer = make_norm("layernorm", 12, 1e-5)
    _randomize(layer)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), F.layer_norm(x, (12,), layer.weight, layer.bias, 1e-5))
    y = layer.to(torch.bfloat16)(x)
    assert y.dtype == torch.float32
