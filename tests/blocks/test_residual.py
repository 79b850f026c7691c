"""ResidualBlock: pre-norm residual around any mixer, checkpoint-compatible names, fp32 residual stream."""
import pytest
import torch

from archspec.blocks import Attention, Mamba2Mixer, MLP, ResidualBlock
from archspec.blocks.norm import LayerNorm, RMSNorm


def test_output_is_input_plus_mixer_of_normalised_input():
    block = ResidualBlock(MLP(16, 32), 16, norm="rmsnorm", norm_eps=1e-6).double()
    with torch.no_grad():
        block.norm.weight.normal_()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * block.norm.weight
    torch.testing.assert_close(block(x), x + block.mixer(normed), rtol=1e-12, atol=1e-12)


def test_submodules_are_named_like_mamba_ssm_blocks():
    block = ResidualBlock(Mamba2Mixer(32, d_state=8, head_dim=16), 32)
    keys = set(block.state_dict())
    assert {"norm.weight", "mixer.in_proj.weight", "mixer.A_log", "mixer.norm.weight"} <= keys
    assert isinstance(block.norm, RMSNorm)
    assert isinstance(ResidualBlock(MLP(8, 8), 8, norm="layernorm").norm, LayerNorm)
    with pytest.raises(ValueError, match="kind"):
        ResidualBlock(MLP(8, 8), 8, norm="groupnorm")


def test_residual_stream_stays_float32_around_a_bfloat16_mixer():
    block = ResidualBlock(MLP(16, 32), 16, residual_in_fp32=True).to(torch.bfloat16)
    x = torch.randn(2, 4, 16)
    out = block(x)
    assert out.dtype == torch.float32
    expected = x + block.mixer(block.norm(x).to(torch.bfloat16)).float()
    torch.testing.assert_close(out, expected)
    plain = ResidualBlock(MLP(16, 32), 16, residual_in_fp32=False).to(torch.bfloat16)
    assert plain(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("mixer_factory", [
    lambda: Mamba2Mixer(32, d_state=8, head_dim=16, chunk_size=16),
    lambda: Attention(32, 4, n_kv_heads=2, sliding_window=6),
    lambda: MLP(32, 64),
], ids=["ssd", "attention", "mlp"])
def test_cache_and_packing_pass_through_to_the_mixer(mixer_factory):
    block = ResidualBlock(mixer_factory(), 32)
    x = torch.randn(1, 18, 32)
    with torch.no_grad():
        full = block(x)
        cache = block.init_cache(1, 18)
        prefix = block(x[:, :11], cache=cache)
        steps = [block(x[:, t:t + 1], cache=cache) for t in range(11, 18)]
        packed = block(x, cu_seqlens=torch.tensor([0, 7, 18]))
        separate = torch.cat([block(x[:, :7]), block(x[:, 7:])], dim=1)
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)
