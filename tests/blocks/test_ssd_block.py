"""The Mamba-2 mixer: mamba_ssm layout and init, math against a slow float64 re-implementation, causality,
decode with a cache, packed sequences, gradients and argument checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from archspec.blocks.ssd import Mamba2Mixer
from archspec.kernels.reference import ssd_naive

CONFIGS = {
    "plain": dict(d_model=32, d_state=16, head_dim=16),
    "groups_hdimD_bias_limit": dict(d_model=32, d_state=8, head_dim=8, ngroups=2, D_has_hdim=True, bias=True,
                                    dt_limit=(0.01, 0.05)),
    "gate_in_scan_no_conv_bias": dict(d_model=48, d_state=16, head_dim=24, expand=1, ngroups=2, rmsnorm=False,
                                      conv_bias=False, d_conv=3),
    "norm_before_gate": dict(d_model=32, d_state=16, head_dim=16, ngroups=4, norm_before_gate=True),
}


def make_mixer(config: dict, dtype=torch.float32) -> Mamba2Mixer:
    """A mixer on the torch path, with D, the norm weight and the biases moved away from their constant init."""
    mixer = Mamba2Mixer(**config, chunk_size=16, backend="torch").to(dtype)
    with torch.no_grad():
        mixer.D.add_(0.5 * torch.randn_like(mixer.D))
        for p in (mixer.in_proj.bias, mixer.out_proj.bias, None if mixer.norm is None else mixer.norm.weight):
            if p is not None:
                p.add_(0.3 * torch.randn_like(p))
    return mixer


def slow_reference(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """The Mamba-2 forward written out from the mixer's parameters, float64, with an explicit conv loop."""
    P = {k: v.double() for k, v in mixer.state_dict().items()}
    u = u.double()
    d_inner, n, g, h, p, k = mixer.d_inner, mixer.d_state, mixer.ngroups, mixer.nheads, mixer.head_dim, mixer.d_conv
    zxbcdt = u @ P["in_proj.weight"].T + P.get("in_proj.bias", 0.0)
    z = zxbcdt[..., :d_inner]
    xBC = zxbcdt[..., d_inner:2 * d_inner + 2 * g * n]
    dt = zxbcdt[..., 2 * d_inner + 2 * g * n:]
    conv = torch.zeros_like(xBC) + P.get("conv1d.bias", 0.0)
    for t in range(u.shape[1]):
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                conv[:, t] += P["conv1d.weight"][:, 0, j] * xBC[:, src]
    xBC = conv * torch.sigmoid(conv)
    x = xBC[..., :d_inner].unflatten(-1, (h, p))
    B = xBC[..., d_inner:d_inner + g * n].unflatten(-1, (g, n))
    C = xBC[..., d_inner + g * n:].unflatten(-1, (g, n))
    dt = torch.log1p(torch.exp(dt + P["dt_bias"])).clamp(*mixer.dt_limit)
    A = -torch.exp(P["A_log"])
    y = ssd_naive(x, dt, A, B, C, 16)
    D = P["D"].view(h, p) if mixer.D_has_hdim else P["D"][:, None]
    y = (y + D * x).flatten(-2)
    silu_z = z * torch.sigmoid(z)
    if mixer.norm is None:
        y = y * silu_z
    else:
        if not mixer.norm_before_gate:
            y = y * silu_z
        grouped = y.unflatten(-1, (g, d_inner // g))
        y = (grouped / torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * P["norm.weight"]
        if mixer.norm_before_gate:
            y = y * silu_z
    return y @ P["out_proj.weight"].T + P.get("out_proj.bias", 0.0)


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_matches_slow_float64_reimplementation(name):
    mixer = make_mixer(CONFIGS[name], torch.float64)
    u = torch.randn(2, 37, mixer.d_model, dtype=torch.float64)
    out = mixer(u)
    assert out.shape == u.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, slow_reference(mixer, u), rtol=1e-9, atol=1e-10)


def test_state_dict_has_mamba_ssm_mamba2_names_and_shapes():
    d_model, d_state, expand, head_dim, ngroups, d_conv = 32, 16, 2, 16, 2, 4
    d_inner, nheads = expand * d_model, expand * d_model // head_dim
    conv_dim = d_inner + 2 * ngroups * d_state
    mixer = Mamba2Mixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand, head_dim=head_dim, ngroups=ngroups)
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == expected
    assert mixer.norm.group_size == d_inner // ngroups


def test_state_dict_variants_follow_mamba_ssm_options():
    mixer = Mamba2Mixer(32, d_state=8, head_dim=16, D_has_hdim=True, rmsnorm=False, bias=True, conv_bias=False)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes["D"] == (64,) and shapes["in_proj.bias"] == (2 * 64 + 2 * 8 + 4,) and shapes["out_proj.bias"] == (32,)
    assert "norm.weight" not in shapes and "conv1d.bias" not in shapes


def test_initialisation_follows_mamba_ssm():
    dt_min, dt_max, floor = 1e-4, 0.1, 1e-3
    mixer = Mamba2Mixer(64, d_state=8, head_dim=4, A_init_range=(2.0, 8.0), dt_min=dt_min, dt_max=dt_max,
                        dt_init_floor=floor)
    dt = F.softplus(mixer.dt_bias.double())
    assert dt.min() >= floor * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    assert dt.std() > 0
    A = torch.exp(mixer.A_log)
    assert A.min() >= 2.0 - 1e-5 and A.max() <= 8.0 + 1e-5 and A.std() > 0
    assert torch.equal(mixer.D, torch.ones(mixer.nheads))
    assert torch.equal(mixer.norm.weight, torch.ones(mixer.d_inner))
    for p in (mixer.dt_bias, mixer.A_log, mixer.D):
        assert p._no_weight_decay is True
    assert not hasattr(mixer.in_proj.weight, "_no_weight_decay")


@pytest.mark.parametrize("name", ["plain", "gate_in_scan_no_conv_bias"])
def test_output_before_a_changed_position_is_unchanged(name):
    mixer = make_mixer(CONFIGS[name])
    u = torch.randn(2, 40, mixer.d_model)
    t = int(torch.randint(1, 39, ()))
    changed = u.clone()
    changed[:, t] += torch.randn(2, mixer.d_model)
    with torch.no_grad():
        before, after = mixer(u), mixer(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_step_by_step_decode_matches_parallel_forward(name):
    mixer = make_mixer(CONFIGS[name])
    u = torch.randn(2, 24, mixer.d_model)
    with torch.no_grad():
        full = mixer(u)
        cache = mixer.init_cache(2, 24)
        steps = torch.cat([mixer(u[:, t:t + 1], cache=cache) for t in range(24)], dim=1)
    assert cache.seqlen_offset == 24
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_chunks_then_steps_match_parallel_forward(name):
    mixer = make_mixer(CONFIGS[name])
    u = torch.randn(2, 45, mixer.d_model)
    pieces = [2, 19, 1, 1, 17, 5]  # one shorter than d_conv, one spanning chunk boundaries, single steps
    with torch.no_grad():
        full = mixer(u)
        cache = mixer.init_cache(2, 45)
        outs, start = [], 0
        for size in pieces:
            outs.append(mixer(u[:, start:start + size], cache=cache))
            start += size
    assert cache.conv_state.shape == (2, mixer.conv_dim, mixer.d_conv)
    assert cache.ssm_state.shape == (2, mixer.nheads, mixer.head_dim, mixer.d_state)
    assert cache.ssm_state.dtype == torch.float32
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["plain", "groups_hdimD_bias_limit", "gate_in_scan_no_conv_bias"])
def test_packed_sequences_match_running_them_separately(name):
    mixer = make_mixer(CONFIGS[name])
    lengths = [2, 17, 9, 12]
    seqs = [torch.randn(1, n, mixer.d_model) for n in lengths]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        packed = mixer(torch.cat(seqs, dim=1), cu_seqlens=cu_seqlens)
        separate = torch.cat([mixer(s) for s in seqs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)


def test_packed_sequences_may_include_empty_ones():
    """Repeated offsets (as attention and the conv accept them): the scan skips the empty sequences."""
    mixer = make_mixer(CONFIGS["plain"])
    lengths = [5, 0, 9, 0]
    seqs = [torch.randn(1, n, mixer.d_model) for n in lengths]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        packed = mixer(torch.cat(seqs, dim=1), cu_seqlens=cu_seqlens)
        separate = torch.cat([mixer(s) for s in seqs if s.shape[1]], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)


def test_packed_sequences_are_rejected_with_batch_or_cache():
    mixer = make_mixer(CONFIGS["plain"])
    cu_seqlens = torch.tensor([0, 3, 8])
    with pytest.raises(ValueError, match="cu_seqlens"):
        mixer(torch.randn(2, 8, 32), cu_seqlens=cu_seqlens)
    with pytest.raises(ValueError, match="cu_seqlens"):
        mixer(torch.randn(1, 8, 32), cu_seqlens=torch.tensor([0, 3, 9]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        mixer(torch.randn(1, 8, 32), cache=mixer.init_cache(1, 8), cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("name", ["plain", "gate_in_scan_no_conv_bias", "groups_hdimD_bias_limit"])
def test_gradients_reach_every_parameter(name):
    mixer = make_mixer(CONFIGS[name])
    if name == "groups_hdimD_bias_limit":  # keep dt inside the limits so dt_bias gets a gradient
        mixer.dt_limit = (0.0, math.inf)
    mixer(torch.randn(2, 20, mixer.d_model)).square().sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("kwargs, argument", [
    (dict(d_model=32, head_dim=24), "head_dim"),
    (dict(d_model=32, head_dim=16, ngroups=3), "ngroups"),
    (dict(d_model=32, head_dim=16, backend="cuda"), "backend"),
    (dict(d_model=32, head_dim=16, expand=1.3), "expand"),
    (dict(d_model=32, head_dim=16, chunk_size=0), "chunk_size"),
    (dict(d_model=32, head_dim=16, dt_min=0.2, dt_max=0.1), "dt_min"),
    (dict(d_model=32, head_dim=16, d_conv=9), "d_conv"),
    (dict(d_model=32, head_dim=16, d_conv=0), "d_conv"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Mamba2Mixer(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_triton_path_matches_torch_path_on_gpu():
    config = dict(d_model=256, d_state=64, head_dim=64, ngroups=2)
    fast = Mamba2Mixer(**config, chunk_size=64, backend="triton", device="cuda", dtype=torch.bfloat16)
    slow = Mamba2Mixer(**config, chunk_size=64, backend="torch", device="cuda", dtype=torch.bfloat16)
    slow.load_state_dict(fast.state_dict())
    u = torch.randn(2, 200, 256, device="cuda", dtype=torch.bfloat16)
    cu_seqlens = torch.tensor([0, 37, 200, 400], device="cuda", dtype=torch.int32)
    expected, got = slow(u), fast(u)
    (expected.float().square().sum() + got.float().square().sum()).backward()
    with torch.no_grad():
        packed_expected = slow(u.reshape(1, 400, 256), cu_seqlens=cu_seqlens).float()
        packed = fast(u.reshape(1, 400, 256), cu_seqlens=cu_seqlens).float()
        cache = fast.init_cache(2, 200)
        fast(u[:, :150], cache=cache)
        steps = torch.cat([fast(u[:, t:t + 1], cache=cache) for t in range(150, 200)], dim=1).float()
    expected, got = expected.float(), got.float()
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 2e-2 * scale
    assert (packed - packed_expected).abs().max() <= 2e-2 * scale
    assert (steps - expected[:, 150:]).abs().max() <= 3e-2 * scale
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters()):
        g_fast, g_slow = p_fast.grad.float(), p_slow.grad.float()
        assert (g_fast - g_slow).abs().max() <= 5e-2 * g_slow.abs().max(), name
