"""The SwiGLU / GELU MLP block."""
import pytest
import torch

from archspec.blocks.mlp import MLP


def test_swiglu_is_value_times_silu_gate_in_mamba_ssm_order():
    mlp = MLP(16, 40, kind="swiglu", bias=True).double()
    assert mlp.fc1.weight.shape == (80, 16) and mlp.fc2.weight.shape == (16, 40)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    value, gate = h[..., :40], h[..., 40:]
    expected = (value * gate * torch.sigmoid(gate)) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_gelu_mlp_matches_formula():
    mlp = MLP(16, 24, kind="gelu").double()
    assert mlp.fc1.weight.shape == (24, 16) and mlp.fc1.bias is None
    x = torch.randn(3, 16, dtype=torch.float64)
    h = x @ mlp.fc1.weight.T
    expected = (0.5 * h * (1 + torch.erf(h / 2**0.5))) @ mlp.fc2.weight.T
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_mlp_has_no_cache_and_is_tokenwise():
    mlp = MLP(8, 16)
    assert mlp.init_cache(2, 10) is None
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(mlp(x[:, 3:4], cache=None), mlp(x)[:, 3:4])


def test_mlp_gradients_reach_every_parameter():
    mlp = MLP(8, 16, bias=True)
    mlp(torch.randn(2, 4, 8)).square().sum().backward()
    for name, p in mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        MLP(8, 16, kind="relu2")
    with pytest.raises(ValueError, match="hidden"):
        MLP(8, 0)
