"""Attention: naive softmax reference with explicit RoPE (and the qkv conv), causality, KV-cache decode (with the
conv state), sliding window, GQA, packed sequences, backend fallback, gradients and argument checks."""
import math

import pytest
import torch

from archspec.blocks.attention import Attention, apply_rope, flash_attn_available
from archspec.blocks.packing import length_buckets

CONFIGS = {
    "mha": dict(d_model=32, n_heads=4),
    "gqa_partial_rope_qknorm": dict(d_model=32, n_heads=4, n_kv_heads=2, rope_fraction=0.5, qk_norm=True),
    "mqa_window_bias": dict(d_model=32, n_heads=4, n_kv_heads=1, head_dim=12, sliding_window=5, bias=True,
                            rope_theta=500.0),
    "gqa_window_no_rope": dict(d_model=48, n_heads=6, n_kv_heads=3, rope=False, sliding_window=9),
    # mamba_ssm's MHA with d_conv: depthwise causal conv over q, k, v before RoPE; biases on both projections
    "gqa_conv_partial_rope": dict(d_model=32, n_heads=4, n_kv_heads=2, rope_fraction=0.5, d_conv=4, bias=True),
    "mqa_conv_window": dict(d_model=32, n_heads=4, n_kv_heads=1, head_dim=12, sliding_window=5, d_conv=3),
}


def make_attention(config: dict, dtype=torch.float32) -> Attention:
    attn = Attention(**config, backend="sdpa").to(dtype)
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            if norm is not None:
                norm.weight.add_(0.3 * torch.randn_like(norm.weight))
    return attn


def rope_by_pairs(x: torch.Tensor, rot_dim: int, theta: float) -> torch.Tensor:
    """x (batch, seqlen, heads, d): rotate channel pairs (i, i + rot_dim/2) by pos * theta^(-2i/rot_dim)."""
    out = x.clone()
    half = rot_dim // 2
    pos = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None]
    for i in range(half):
        angle = pos * theta ** (-2 * i / rot_dim)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[..., i + half] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v per head, from the module's weights, float64."""
    x = x.double()
    hd, nh, nkv = attn.head_dim, attn.n_heads, attn.n_kv_heads
    W = attn.in_proj.weight.double()
    qkv = x @ W.T + (0.0 if attn.in_proj.bias is None else attn.in_proj.bias.double())
    if attn.conv1d is not None:  # out[t] = bias + sum_k w[:, k] * in[t - (d_conv - 1) + k], zero before t = 0
        w, width = attn.conv1d.weight.double()[:, 0, :], attn.d_conv
        conv = attn.conv1d.bias.double().expand_as(qkv).clone()
        for t in range(x.shape[1]):
            for k in range(width):
                src = t - (width - 1) + k
                if src >= 0:
                    conv[:, t] += w[:, k] * qkv[:, src]
        qkv = conv
    q = qkv[..., :nh * hd].unflatten(-1, (nh, hd))
    k = qkv[..., nh * hd:(nh + nkv) * hd].unflatten(-1, (nkv, hd))
    v = qkv[..., (nh + nkv) * hd:].unflatten(-1, (nkv, hd))
    if attn.q_norm is not None:
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight.double()
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.k_norm.weight.double()
    if attn.rope:
        q, k = rope_by_pairs(q, attn.rot_dim, attn.rope_theta), rope_by_pairs(k, attn.rot_dim, attn.rope_theta)
    seqlen = x.shape[1]
    i, j = torch.arange(seqlen)[:, None], torch.arange(seqlen)[None, :]
    allowed = j <= i
    if attn.sliding_window is not None:
        allowed &= j > i - attn.sliding_window
    mask = torch.zeros(seqlen, seqlen, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    heads = []
    for h in range(nh):
        g = h // (nh // nkv)
        scores = q[:, :, h] @ k[:, :, g].transpose(-1, -2) / math.sqrt(hd) + mask
        heads.append(torch.softmax(scores, dim=-1) @ v[:, :, g])
    y = torch.stack(heads, dim=2).flatten(-2)
    return y @ attn.out_proj.weight.double().T + (0.0 if attn.out_proj.bias is None else attn.out_proj.bias.double())


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_matches_naive_softmax_attention_with_explicit_rope(name):
    attn = make_attention(CONFIGS[name], torch.float64)
    x = torch.randn(2, 23, attn.d_model, dtype=torch.float64)
    out = attn(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, naive_attention(attn, x), rtol=1e-9, atol=1e-10)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q, torch.tensor([m]), 12, 100.0)
        kn = apply_rope(k, torch.tensor([n]), 12, 100.0)
        return (qm * kn).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(score(7, 3), score(7, 4))
    rotated = apply_rope(q, torch.tensor([5]), 12, 100.0)
    assert torch.equal(rotated[..., 12:], q[..., 12:])
    torch.testing.assert_close(rotated.norm(), q.norm())


@pytest.mark.parametrize("name", CONFIGS)
def test_output_before_a_changed_position_is_unchanged(name):
    attn = make_attention(CONFIGS[name])
    x = torch.randn(2, 30, attn.d_model)
    t = int(torch.randint(1, 29, ()))
    changed = x.clone()
    changed[:, t] += torch.randn(2, attn.d_model)
    with torch.no_grad():
        before, after = attn(x), attn(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4


def test_sliding_window_ignores_tokens_outside_the_window():
    attn = make_attention(CONFIGS["mqa_window_bias"])
    x = torch.randn(1, 20, attn.d_model)
    changed = x.clone()
    changed[:, 3] += 1.0
    with torch.no_grad():
        before, after = attn(x), attn(changed)
    window = attn.sliding_window
    assert (after[:, 3:3 + window] - before[:, 3:3 + window]).abs().amax(-1).min() > 1e-5
    torch.testing.assert_close(after[:, 3 + window:], before[:, 3 + window:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
def test_step_by_step_decode_matches_parallel_forward(name):
    attn = make_attention(CONFIGS[name])
    x = torch.randn(2, 20, attn.d_model)
    with torch.no_grad():
        full = attn(x)
        cache = attn.init_cache(2, 20)
        steps = torch.cat([attn(x[:, t:t + 1], cache=cache) for t in range(20)], dim=1)
    assert cache.seqlen_offset == 20
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_chunks_then_steps_match_parallel_forward(name):
    attn = make_attention(CONFIGS[name])
    x = torch.randn(2, 32, attn.d_model)
    pieces = [3, 7, 1, 11, 1, 9]  # chunks longer than the windows, wrapping the ring buffer
    with torch.no_grad():
        full = attn(x)
        cache = attn.init_cache(2, 40)
        outs, start = [], 0
        for size in pieces:
            outs.append(attn(x[:, start:start + size], cache=cache))
            start += size
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-5)


def test_windowed_cache_keeps_only_the_window():
    attn = make_attention(CONFIGS["mqa_window_bias"])
    cache = attn.init_cache(3, 100)
    assert cache.k.shape == (3, attn.sliding_window, 1, attn.head_dim) and cache.v.shape == cache.k.shape
    assert attn.init_cache(3, 4).k.shape[1] == 4
    full = make_attention(CONFIGS["gqa_partial_rope_qknorm"]).init_cache(3, 100)
    assert full.k.shape == (3, 100, 2, 8)


def test_cache_rejects_more_tokens_than_max_seqlen():
    attn = make_attention(CONFIGS["mha"])
    cache = attn.init_cache(1, 8)
    attn(torch.randn(1, 6, 32), cache=cache)
    with pytest.raises(ValueError, match="max_seqlen"):
        attn(torch.randn(1, 3, 32), cache=cache)


@pytest.mark.parametrize("name", CONFIGS)
def test_packed_sequences_match_running_them_separately(name):
    attn = make_attention(CONFIGS[name])
    lengths = [3, 11, 1, 7]
    seqs = [torch.randn(1, n, attn.d_model) for n in lengths]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        packed = attn(torch.cat(seqs, dim=1), cu_seqlens=cu_seqlens)
        separate = torch.cat([attn(s) for s in seqs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("lengths, nbuckets, in_order", [([5, 7, 6], 1, True), ([4, 0, 6], 2, True),
                                                         ([12, 1, 3, 1, 7], 4, False)],
                         ids=["one_bucket", "an_empty_sequence", "uneven_lengths"])
def test_packed_attention_without_flash_attn_equals_separate_sequences_in_value_and_gradient(
        name, lengths, nbuckets, in_order):
    """Without flash-attn the sequences run as the rows of right-padded batches, one per power of two of their
    lengths; each sequence gets its own attention, and gradients reach its own tokens only."""
    attn = make_attention(CONFIGS[name])
    x = torch.randn(1, sum(lengths), attn.d_model, requires_grad=True)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    buckets = length_buckets(cu_seqlens)
    assert len(buckets.indices) == nbuckets and (buckets.order is None) == in_order
    packed = attn(x, cu_seqlens=cu_seqlens)
    pieces = x.split(lengths, dim=1)
    separate = torch.cat([attn(p) for p in pieces if p.shape[1]], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(packed)
    (grad_packed,) = torch.autograd.grad(packed, x, g)
    (grad_separate,) = torch.autograd.grad(separate, x, g)
    torch.testing.assert_close(grad_packed, grad_separate, rtol=1e-4, atol=1e-5)


def test_auto_backend_falls_back_to_sdpa_without_flash_on_cpu():
    auto = Attention(32, 4, n_kv_heads=2, backend="auto")
    sdpa = Attention(32, 4, n_kv_heads=2, backend="sdpa")
    sdpa.load_state_dict(auto.state_dict())
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(auto(x), sdpa(x))
    forced = Attention(32, 4, backend="flash")
    with pytest.raises(RuntimeError, match="flash"):
        forced(x)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_reach_every_parameter(name):
    attn = make_attention(CONFIGS[name])
    attn(torch.randn(2, 12, attn.d_model)).square().sum().backward()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_parameter_layout_is_fused_qkv_then_out():
    attn = Attention(32, 4, n_kv_heads=2, head_dim=12, qk_norm=True)
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes == {"in_proj.weight": (12 * (4 + 2 * 2), 32), "q_norm.weight": (12,), "k_norm.weight": (12,),
                      "out_proj.weight": (32, 48)}


def test_qkv_conv_has_mamba_ssm_mha_names_and_shapes():
    # mamba_ssm MHA(d_conv=4): nn.Conv1d(qkv_dim, qkv_dim, kernel_size=4, padding=3, groups=qkv_dim), with bias
    attn = Attention(32, 4, n_kv_heads=2, head_dim=12, d_conv=4, bias=True)
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes == {"in_proj.weight": (96, 32), "in_proj.bias": (96,), "conv1d.weight": (96, 1, 4),
                      "conv1d.bias": (96,), "out_proj.weight": (32, 48), "out_proj.bias": (32,)}
    cache = attn.init_cache(3, 10, dtype=torch.bfloat16)
    assert cache.conv_state.shape == (3, 96, 4) and cache.conv_state.dtype == torch.bfloat16
    assert not cache.conv_state.any()
    assert Attention(32, 4).init_cache(3, 10).conv_state is None


def test_conv_state_holds_the_last_conv_inputs():
    # the cache keeps the last d_conv in_proj outputs (pre-conv), zero-padded on the left for a short prefill
    attn = make_attention(CONFIGS["gqa_conv_partial_rope"])
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        qkv = attn.in_proj(x)
        short, long_ = attn.init_cache(2, 10), attn.init_cache(2, 10)
        attn(x[:, :2], cache=short)
        attn(x, cache=long_)
    torch.testing.assert_close(short.conv_state[..., 2:], qkv[:, :2].transpose(1, 2))
    assert not short.conv_state[..., :2].any()
    torch.testing.assert_close(long_.conv_state, qkv[:, 2:].transpose(1, 2))
    with torch.no_grad():
        attn(x[:, :1], cache=long_)
    torch.testing.assert_close(long_.conv_state, torch.cat([qkv[:, 3:], qkv[:, :1]], 1).transpose(1, 2))


def test_a_cache_without_conv_state_is_refused_by_a_conv_attention():
    attn = make_attention(CONFIGS["gqa_conv_partial_rope"])
    cache = Attention(32, 4, n_kv_heads=2, rope_fraction=0.5).init_cache(1, 8)
    with pytest.raises(ValueError, match="conv_state"):
        attn(torch.randn(1, 1, 32), cache=cache)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(d_model=32, n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(d_model=30, n_heads=4), "n_heads"),
    (dict(d_model=32, n_heads=4, backend="xformers"), "backend"),
    (dict(d_model=32, n_heads=4, rope_fraction=1.5), "rope_fraction"),
    (dict(d_model=32, n_heads=4, sliding_window=0), "sliding_window"),
    (dict(d_model=32, n_heads=4, d_conv=9), "d_conv"),
    (dict(d_model=32, n_heads=4, d_conv=-1), "d_conv"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Attention(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gqa_partial_rope_qknorm", "mqa_window_bias", "gqa_conv_partial_rope"])
def test_bf16_auto_backend_matches_float64_reference_on_gpu(name):
    attn = make_attention(CONFIGS[name]).cuda()
    x = torch.randn(2, 50, attn.d_model, device="cuda")
    expected = naive_attention(attn.cpu(), x.cpu())
    fast = attn.cuda().to(torch.bfloat16)
    fast.backend = "auto"
    with torch.no_grad():
        got = fast(x.to(torch.bfloat16)).double().cpu()
        cache = fast.init_cache(2, 50)
        fast(x[:, :30].to(torch.bfloat16), cache=cache)
        steps = torch.cat([fast(x[:, t:t + 1].to(torch.bfloat16), cache=cache) for t in range(30, 50)], 1)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 3e-2 * scale
    assert (steps.double().cpu() - expected[:, 30:]).abs().max() <= 3e-2 * scale
    assert flash_attn_available() or fast.backend == "auto"
