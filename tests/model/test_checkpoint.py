"""Loading mamba_ssm checkpoints: a config.json and a state dict written here in mamba_ssm's documented layout
(MambaLMHeadModel: backbone.embedding, backbone.layers.{i}.norm/.mixer[/.norm2/.mlp], backbone.norm_f, lm_head)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from archspec.accounting import account
from archspec.builder import build_model
from archspec.checkpoint import load_mamba_ssm_checkpoint, spec_from_mamba_ssm_config
from archspec.layout import expand_layout
from archspec.loader import load_spec

HYBRID_CONFIG = {
    "d_model": 64, "d_intermediate": 100, "n_layer": 4, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 32, "ngroups": 2, "chunk_size": 16},
    "attn_layer_idx": [2],
    "attn_cfg": {"causal": True, "num_heads": 4, "num_heads_kv": 2, "head_dim": 16, "rotary_emb_dim": 8,
                 "qkv_proj_bias": False, "out_proj_bias": False},
    "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}
CONV_HYBRID_CONFIG = {  # a tiny state-spaces/mamba2attn-2.7b: MHA with d_conv 4, biases, RoPE on half of each head
    "d_model": 64, "d_intermediate": 0, "n_layer": 3, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 32, "ngroups": 2, "chunk_size": 8},
    "attn_layer_idx": [1],
    "attn_cfg": {"causal": True, "d_conv": 4, "head_dim": 16, "num_heads": 4, "num_heads_kv": 2,
                 "out_proj_bias": True, "qkv_proj_bias": True, "rotary_emb_dim": 8, "rotary_emb_base": 1000.0},
    "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}
MAMBA2_CONFIG = {
    "d_model": 64, "d_intermediate": 0, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}


def mamba_ssm_state_dict(cfg: dict) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of mamba_ssm's MambaLMHeadModel for config `cfg`
    (Mamba2 defaults d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1; GatedMLP hidden rounded up to 128;
    MHA in_proj holds q, k, v, with biases unless qkv_proj_bias/out_proj_bias say false (MHA's defaults are
    true), and conv1d (qkv_dim, 1, d_conv) with a bias when d_conv > 0)."""
    d = cfg["d_model"]
    ssm = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, **cfg["ssm_cfg"]}
    vocab = math.ceil(cfg["vocab_size"] / cfg["pad_vocab_size_multiple"]) * cfg["pad_vocab_size_multiple"]
    sd: dict[str, torch.Tensor] = {"backbone.embedding.weight": torch.randn(vocab, d)}
    for i in range(cfg["n_layer"]):
        p = f"backbone.layers.{i}."
        sd[p + "norm.weight"] = 1 + 0.1 * torch.randn(d)
        if i in cfg["attn_layer_idx"]:
            a = cfg["attn_cfg"]
            hd, h, kv = a["head_dim"], a["num_heads"], a.get("num_heads_kv", a["num_heads"])
            qkv_dim = hd * (h + 2 * kv)
            sd[p + "mixer.in_proj.weight"] = torch.randn(qkv_dim, d) / d**0.5
            if a.get("qkv_proj_bias", True):
                sd[p + "mixer.in_proj.bias"] = torch.randn(qkv_dim) / 10
            if a.get("d_conv", 0):
                sd[p + "mixer.conv1d.weight"] = torch.randn(qkv_dim, 1, a["d_conv"]) / 2
                sd[p + "mixer.conv1d.bias"] = torch.randn(qkv_dim) / 10
            sd[p + "mixer.out_proj.weight"] = torch.randn(d, h * hd) / (h * hd) ** 0.5
            if a.get("out_proj_bias", True):
                sd[p + "mixer.out_proj.bias"] = torch.randn(d) / 10
        else:
            d_inner = ssm["expand"] * d
            nheads, gs = d_inner // ssm["headdim"], ssm["ngroups"] * ssm["d_state"]
            conv_dim = d_inner + 2 * gs
            sd[p + "mixer.in_proj.weight"] = torch.randn(2 * d_inner + 2 * gs + nheads, d) / d**0.5
            sd[p + "mixer.conv1d.weight"] = torch.randn(conv_dim, 1, ssm["d_conv"]) / 2
            sd[p + "mixer.conv1d.bias"] = torch.randn(conv_dim) / 10
            sd[p + "mixer.dt_bias"] = torch.randn(nheads) - 4
            sd[p + "mixer.A_log"] = torch.rand(nheads) * 2
            sd[p + "mixer.D"] = torch.randn(nheads)
            sd[p + "mixer.norm.weight"] = 1 + 0.1 * torch.randn(d_inner)
            sd[p + "mixer.out_proj.weight"] = torch.randn(d, d_inner) / d_inner**0.5
        if cfg["d_intermediate"]:
            hidden = math.ceil(cfg["d_intermediate"] / 128) * 128
            sd[p + "norm2.weight"] = 1 + 0.1 * torch.randn(d)
            sd[p + "mlp.fc1.weight"] = torch.randn(2 * hidden, d) / d**0.5
            sd[p + "mlp.fc2.weight"] = torch.randn(d, hidden) / hidden**0.5
    sd["backbone.norm_f.weight"] = 1 + 0.1 * torch.randn(d)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"] if cfg["tie_embeddings"] else torch.randn(vocab, d)
    return sd


def write_checkpoint(tmp_path, cfg: dict, sd: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, tmp_path / "pytorch_model.bin")


def test_hybrid_config_gives_the_implied_spec():
    spec = spec_from_mamba_ssm_config(HYBRID_CONFIG)
    assert expand_layout(spec) == ["M", "F", "M", "F", "A", "F", "M", "F"]
    m, a, f = spec.blocks["M"], spec.blocks["A"], spec.blocks["F"]
    assert (m.d_state, m.head_dim, m.ngroups, m.chunk_size, m.expand, m.d_conv) == (16, 32, 2, 16, 2, 4)
    assert (a.n_heads, a.n_kv_heads, a.head_dim, a.rope, a.bias) == (4, 2, 16, True, False)
    assert build_model(spec, device="meta").backbone.layers[4].mixer.rot_dim == 8
    assert (f.kind, f.hidden_size(64), f.bias) == ("swiglu", 128, False)  # 100 rounded up to 128
    assert spec.padded_vocab_size == 112 and spec.tie_embeddings and spec.norm == "rmsnorm"


def test_hybrid_checkpoint_loads_every_tensor_into_its_place(tmp_path):
    sd = mamba_ssm_state_dict(HYBRID_CONFIG)
    write_checkpoint(tmp_path, HYBRID_CONFIG, sd)
    spec, model = load_mamba_ssm_checkpoint(tmp_path)
    ours = model.state_dict()
    for key, value in sd.items():
        parts = key.split(".")
        if parts[:2] == ["backbone", "layers"]:
            i, sub = int(parts[2]), parts[3]
            layer = 2 * i + (sub in ("norm2", "mlp"))
            sub = {"norm2": "norm", "mlp": "mixer"}.get(sub, sub)
            key = ".".join(["backbone", "layers", str(layer), sub, *parts[4:]])
        assert torch.equal(ours[key], value), key
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == account(spec, 16).params


def test_loaded_mlp_layer_computes_mamba_ssm_block_second_half(tmp_path):
    # mamba_ssm Block: residual = hidden + residual; y = mlp(norm2(residual)) with GatedMLP
    # fc2(value * silu(gate)), (value, gate) = fc1(x).chunk(2)
    sd = mamba_ssm_state_dict(HYBRID_CONFIG)
    write_checkpoint(tmp_path, HYBRID_CONFIG, sd)
    _, model = load_mamba_ssm_checkpoint(tmp_path)
    x = torch.randn(2, 5, 64)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * sd["backbone.layers.0.norm2.weight"]
    value, gate = (normed @ sd["backbone.layers.0.mlp.fc1.weight"].T).chunk(2, dim=-1)
    expected = x + (value * F.silu(gate)) @ sd["backbone.layers.0.mlp.fc2.weight"].T
    torch.testing.assert_close(model.backbone.layers[1](x), expected, rtol=1e-5, atol=1e-5)


def test_pure_mamba2_checkpoint_runs_and_keeps_ids_causal(tmp_path):
    sd = mamba_ssm_state_dict(MAMBA2_CONFIG)
    del sd["lm_head.weight"]  # tied: a checkpoint may leave the head out
    write_checkpoint(tmp_path, MAMBA2_CONFIG, sd)
    spec, model = load_mamba_ssm_checkpoint([tmp_path / "config.json", tmp_path / "pytorch_model.bin"])
    assert expand_layout(spec) == ["M", "M"] and spec.blocks["M"].d_state == 128
    ids = torch.randint(0, 50, (1, 12))
    logits = model(ids)
    assert logits.shape == (1, 12, 64) and torch.isfinite(logits).all()
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1) % 50
    assert torch.equal(model(changed)[:, :8], logits[:, :8])


# ------------------------------------------------------------------ float64 re-implementation of mamba_ssm's forward
def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _depthwise_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """nn.Conv1d(groups=channels, padding=d_conv - 1) truncated to the first seqlen outputs, as mamba_ssm's
    fallback path: x (b, l, c), weight (c, 1, w) -> (b, l, c)."""
    seqlen, width = x.shape[1], weight.shape[-1]
    out = F.conv1d(x.transpose(1, 2), weight, bias, padding=width - 1, groups=x.shape[-1])
    return out[..., :seqlen].transpose(1, 2)


def _mamba2_mixer(sd: dict, p: str, u: torch.Tensor, ssm: dict) -> torch.Tensor:
    """Mamba2.forward without a cache: in_proj -> z, xBC, dt; conv + SiLU; dt = softplus(dt + dt_bias); the
    recurrence h_t = exp(dt A) h_{t-1} + dt x_t B_t^T, y_t = h_t C_t + D x_t (head h reads group
    h // (nheads / ngroups)), token by token; gated RMSNorm per group of y * silu(z); out_proj."""
    d_inner = ssm["expand"] * u.shape[-1]
    nheads, g, n, hp = d_inner // ssm["headdim"], ssm["ngroups"], ssm["d_state"], ssm["headdim"]
    z, xBC, dt = torch.split(u @ sd[p + "in_proj.weight"].T, [d_inner, d_inner + 2 * g * n, nheads], dim=-1)
    xBC = F.silu(_depthwise_causal_conv(xBC, sd[p + "conv1d.weight"], sd[p + "conv1d.bias"]))
    x, B, C = torch.split(xBC, [d_inner, g * n, g * n], dim=-1)
    x = x.unflatten(-1, (nheads, hp))
    heads_per_group = nheads // g
    B = B.unflatten(-1, (g, n)).repeat_interleave(heads_per_group, dim=2)  # (b, l, nheads, n)
    C = C.unflatten(-1, (g, n)).repeat_interleave(heads_per_group, dim=2)
    dt = F.softplus(dt + sd[p + "dt_bias"])
    A = -torch.exp(sd[p + "A_log"])
    h = torch.zeros(u.shape[0], nheads, hp, n, dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append((h * C[:, t, :, None]).sum(-1) + sd[p + "D"][:, None] * x[:, t])
    y = torch.stack(ys, dim=1).flatten(-2) * F.silu(z)
    y = _rms(y.unflatten(-1, (g, d_inner // g)), sd[p + "norm.weight"].unflatten(-1, (g, d_inner // g))).flatten(-2)
    return y @ sd[p + "out_proj.weight"].T


def _mha_mixer(sd: dict, p: str, x: torch.Tensor, attn: dict) -> torch.Tensor:
    """MHA.forward without a cache: in_proj (+ bias) -> qkv; with d_conv, the depthwise causal conv with bias and
    no activation over all qkv channels; split q | (k, v) by heads; flash_attn's non-interleaved RotaryEmbedding
    on the first rotary_emb_dim channels of q and k (channel i paired with i + rotary_emb_dim / 2, inv_freq
    base^(-2i / rotary_emb_dim)); causal softmax attention, scale 1/sqrt(head_dim), kv heads repeated; out_proj."""
    hd, h = attn["head_dim"], attn["num_heads"]
    kv = attn.get("num_heads_kv", h)
    qkv = x @ sd[p + "in_proj.weight"].T + sd.get(p + "in_proj.bias", 0.0)
    if attn.get("d_conv", 0):
        qkv = _depthwise_causal_conv(qkv, sd[p + "conv1d.weight"], sd[p + "conv1d.bias"])
    q, k, v = torch.split(qkv, [h * hd, kv * hd, kv * hd], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, hd)) for t in (q, k, v))
    rot = attn.get("rotary_emb_dim", 0)
    if rot:
        inv_freq = 1.0 / attn.get("rotary_emb_base", 10000.0) ** (torch.arange(0, rot, 2, dtype=x.dtype) / rot)
        angle = torch.arange(x.shape[1], dtype=x.dtype)[:, None] * inv_freq  # (l, rot / 2)
        cos, sin = angle.cos()[:, None], angle.sin()[:, None]

        def rotate(t: torch.Tensor) -> torch.Tensor:
            t1, t2, rest = t[..., :rot // 2], t[..., rot // 2:rot], t[..., rot:]
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin, rest], dim=-1)

        q, k = rotate(q), rotate(k)
    k, v = k.repeat_interleave(h // kv, dim=2), v.repeat_interleave(h // kv, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
    seqlen = x.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    y = torch.einsum("bhij,bjhd->bihd", probs, v).flatten(-2)
    return y @ sd[p + "out_proj.weight"].T + sd.get(p + "out_proj.bias", 0.0)


def mamba_ssm_reference_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """MambaLMHeadModel.forward in float64 (RMSNorm, d_intermediate 0): Block i computes residual += hidden,
    hidden = mixer(norm(residual)); then norm_f(residual + hidden) and lm_head."""
    sd = {k: v.double() for k, v in sd.items()}
    ssm = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, **cfg["ssm_cfg"]}
    hidden, residual = sd["backbone.embedding.weight"][ids], None
    for i in range(cfg["n_layer"]):
        p = f"backbone.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        normed = _rms(residual, sd[p + "norm.weight"])
        if i in cfg["attn_layer_idx"]:
            hidden = _mha_mixer(sd, p + "mixer.", normed, cfg["attn_cfg"])
        else:
            hidden = _mamba2_mixer(sd, p + "mixer.", normed, ssm)
    return _rms(hidden + residual, sd["backbone.norm_f.weight"]) @ sd["lm_head.weight"].T


def test_conv_attention_hybrid_maps_every_mha_option():
    spec = spec_from_mamba_ssm_config(CONV_HYBRID_CONFIG)
    a = spec.blocks["A"]
    assert (a.n_heads, a.n_kv_heads, a.head_dim, a.d_conv, a.bias, a.rope, a.rope_theta) == (4, 2, 16, 4, True, True,
                                                                                             1000.0)
    assert expand_layout(spec) == ["M", "A", "M"]
    mixer = build_model(spec, device="meta").backbone.layers[1].mixer
    assert (mixer.rot_dim, mixer.d_conv, tuple(mixer.conv1d.weight.shape)) == (8, 4, (128, 1, 4))


def test_conv_attention_hybrid_logits_match_a_float64_mamba_ssm_reimplementation(tmp_path):
    torch.manual_seed(0)
    sd = mamba_ssm_state_dict(CONV_HYBRID_CONFIG)
    write_checkpoint(tmp_path, CONV_HYBRID_CONFIG, sd)
    spec, model = load_mamba_ssm_checkpoint(tmp_path, dtype=torch.float64)
    assert sum(p.numel() for p in model.parameters()) == account(spec, 16).params
    ids = torch.randint(0, CONV_HYBRID_CONFIG["vocab_size"], (2, 21))
    expected = mamba_ssm_reference_logits(sd, CONV_HYBRID_CONFIG, ids)
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # the reference would notice a missing conv, a conv with SiLU, or RoPE on the whole head
    no_conv = {**CONV_HYBRID_CONFIG, "attn_cfg": {**CONV_HYBRID_CONFIG["attn_cfg"], "d_conv": 0}}
    assert (mamba_ssm_reference_logits(sd, no_conv, ids) - expected).abs().max() > 1e-3


def test_conv_attention_hybrid_decodes_like_its_forward(tmp_path):
    # prefill (shorter than d_conv, then longer) followed by single-token steps equals the parallel forward;
    # mamba_ssm 2.3.2 itself differs here (its MHA prefill stores conv outputs as the conv state)
    sd = mamba_ssm_state_dict(CONV_HYBRID_CONFIG)
    write_checkpoint(tmp_path, CONV_HYBRID_CONFIG, sd)
    _, model = load_mamba_ssm_checkpoint(tmp_path, dtype=torch.float64)
    ids = torch.randint(0, CONV_HYBRID_CONFIG["vocab_size"], (2, 14))
    with torch.no_grad():
        full = model(ids)
        for prefill in (2, 7):
            caches = model.init_caches(2, 14)
            attn_cache = caches[1]
            assert attn_cache.conv_state.shape == (2, 128, 4)
            pieces = [model(ids[:, :prefill], caches=caches)]
            pieces += [model(ids[:, t:t + 1], caches=caches) for t in range(prefill, 14)]
            # the SSD layers' decode state is float32 even in a float64 model, hence the tolerance
            torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_untied_layernorm_checkpoint(tmp_path):
    cfg = {**MAMBA2_CONFIG, "tie_embeddings": False, "rms_norm": False}
    sd = mamba_ssm_state_dict(cfg)
    for key in [k for k in sd if k.endswith("norm.weight") and "mixer" not in k] + ["backbone.norm_f.weight"]:
        sd[key.replace("weight", "bias")] = torch.randn(64)
    write_checkpoint(tmp_path, cfg, sd)
    spec, model = load_mamba_ssm_checkpoint(tmp_path)
    assert spec.norm == "layernorm" and not spec.tie_embeddings
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(model.backbone.norm_f.bias, sd["backbone.norm_f.bias"])


def test_strict_loading_rejects_missing_and_unexpected_tensors(tmp_path):
    sd = mamba_ssm_state_dict(MAMBA2_CONFIG)
    sd["backbone.layers.0.mixer.extra"] = torch.zeros(1)
    write_checkpoint(tmp_path, MAMBA2_CONFIG, sd)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_mamba_ssm_checkpoint(tmp_path)


def test_tied_head_that_differs_from_the_embedding_is_an_error(tmp_path):
    sd = mamba_ssm_state_dict(MAMBA2_CONFIG)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    write_checkpoint(tmp_path, MAMBA2_CONFIG, sd)
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_mamba_ssm_checkpoint(tmp_path)


def test_a_truncated_config_or_weight_file_is_named_in_the_error(tmp_path):
    write_checkpoint(tmp_path, MAMBA2_CONFIG, mamba_ssm_state_dict(MAMBA2_CONFIG))
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"^{re.escape(str(weights))}: cannot load the weights"):
        load_mamba_ssm_checkpoint(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MAMBA2_CONFIG, indent=2)[:40])
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}:3: not valid JSON at column"):
        load_mamba_ssm_checkpoint(tmp_path)
    config.write_text("[]")
    not_an_object = f"^{re.escape(str(config))}: expected a JSON object of MambaConfig keys, got list"
    with pytest.raises(ValueError, match=not_an_object):
        load_mamba_ssm_checkpoint(tmp_path)


def test_published_mamba2_config_has_the_published_size():
    cfg = {**MAMBA2_CONFIG, "d_model": 2560, "n_layer": 64, "vocab_size": 50277}  # state-spaces/mamba2-2.7b
    spec = spec_from_mamba_ssm_config(cfg)
    assert account(spec, 2048).params == 2_702_599_680
    assert sum(p.numel() for p in build_model(spec, device="meta").parameters()) == 2_702_599_680


def test_published_mamba2attn_config_gives_the_shipped_spec():
    # state-spaces/mamba2attn-2.7b's config.json
    cfg = {**MAMBA2_CONFIG, "d_model": 2560, "n_layer": 64, "vocab_size": 50277,
           "attn_layer_idx": [9, 18, 27, 36, 45, 56],
           "attn_cfg": {"causal": True, "d_conv": 4, "head_dim": 128, "num_heads": 30, "out_proj_bias": True,
                        "qkv_proj_bias": True, "rotary_emb_dim": 64}}
    spec = spec_from_mamba_ssm_config(cfg)
    layers = expand_layout(spec)
    assert [i for i, s in enumerate(layers) if s == "A"] == [9, 18, 27, 36, 45, 56] and len(layers) == 64
    # 58 Mamba-2 layers of 40,216,560; 6 MHA layers: in_proj 2560*11520 + 11520, conv 11520*4 + 11520,
    # out_proj 3840*2560 + 2560, pre-norm 2560 = 39,395,840; embedding 50288*2560; norm_f 2560
    assert account(spec, 2048).params == 58 * 40_216_560 + 6 * 39_395_840 + 50288 * 2560 + 2560 == 2_697_675_360
    assert sum(p.numel() for p in build_model(spec, device="meta").parameters()) == 2_697_675_360
    assert build_model(spec, device="meta").backbone.layers[9].mixer.rot_dim == 64
    shipped = load_spec(Path(__file__).resolve().parents[2] / "specs" / "mamba2attn-2.7b.yaml")
    assert shipped.blocks == spec.blocks and expand_layout(shipped) == layers
    assert (shipped.d_model, shipped.vocab_size, shipped.padded_vocab_size, shipped.tie_embeddings) == (
        spec.d_model, spec.vocab_size, spec.padded_vocab_size, spec.tie_embeddings)


def test_mha_defaults_follow_mamba_ssm():
    # MHA defaults: biases on both projections, head_dim = d_model / num_heads, no RoPE
    spec = spec_from_mamba_ssm_config({**MAMBA2_CONFIG, "attn_layer_idx": [1],
                                       "attn_cfg": {"num_heads": 4, "causal": True}})
    a = spec.blocks["A"]
    assert (a.bias, a.head_dim, a.rope, a.n_kv_heads) == (True, 16, False, None)
    assert expand_layout(spec) == ["M", "A"]


@pytest.mark.parametrize("change,message", [
    ({"ssm_cfg": {}}, "ssm_cfg.layer"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_ssm": 32}}, "ssm_cfg.d_ssm"),
    ({"ssm_cfg": {"layer": "Mamba2", "bogus": 1}}, "ssm_cfg"),
    ({"bogus": 1}, "config"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4}}, "attn_cfg.causal"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "out_proj_bias": False}},
     "qkv_proj_bias"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "rotary_emb_interleaved": True}},
     "rotary_emb_interleaved"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "mlp_dim": 8}}, "attn_cfg.mlp_dim"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "d_conv": 1}}, "attn_cfg.d_conv"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "d_conv": 9}}, "attn_cfg.d_conv"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "softmax_scale": 0.5}},
     "attn_cfg.softmax_scale"),
    ({"attn_layer_idx": [0], "attn_cfg": {"num_heads": 4, "causal": True, "rotary_emb_dim": 7}},
     "attn_cfg.rotary_emb_dim"),
    ({"attn_layer_idx": [5]}, "attn_layer_idx"),
])
def test_unsupported_configs_name_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        spec_from_mamba_ssm_config({**MAMBA2_CONFIG, **change})


def import_mamba_ssm_lm_head_model(monkeypatch) -> type:
    """MambaLMHeadModel from an installed pure-Python mamba_ssm (built with MAMBA_SKIP_CUDA_BUILD=TRUE); its
    package __init__ imports the compiled Mamba-1 extension selective_scan_cuda, which such a build lacks and
    Mamba-2/MHA/GatedMLP never call, so an empty stand-in module is registered first."""
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed")
    if importlib.util.find_spec("selective_scan_cuda") is None:
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    return MambaLMHeadModel


@pytest.mark.gpu
@pytest.mark.parametrize("d_conv", [0, 4])
def test_loaded_checkpoint_reproduces_mamba_ssm_logits(tmp_path, monkeypatch, d_conv):
    # the real thing: mamba_ssm builds, initialises and saves (save_pretrained) a hybrid Mamba-2 / MHA / GatedMLP
    # model, its MHA with or without the qkv conv; our loader must give the same logits. RoPE is left out:
    # mamba_ssm's MHA takes it from flash_attn.
    MambaLMHeadModel = import_mamba_ssm_lm_head_model(monkeypatch)
    from mamba_ssm.models.config_mamba import MambaConfig

    cfg = {**HYBRID_CONFIG, "d_model": 128, "d_intermediate": 200,
           "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 2, "chunk_size": 32,
                       "use_mem_eff_path": False},
           "attn_cfg": {**HYBRID_CONFIG["attn_cfg"], "head_dim": 32, "rotary_emb_dim": 0, "d_conv": d_conv}}
    reference = MambaLMHeadModel(MambaConfig(**cfg), device="cuda", dtype=torch.float32)
    reference.save_pretrained(str(tmp_path))
    spec, model = load_mamba_ssm_checkpoint(tmp_path, device="cuda")
    assert expand_layout(spec) == ["M", "F", "M", "F", "A", "F", "M", "F"] and spec.blocks["A"].d_conv == d_conv
    ids = torch.randint(0, cfg["vocab_size"], (2, 96), device="cuda")
    with torch.no_grad():
        expected = reference(ids).logits.float()
        got = model(ids).float()
    # both sides run Triton SSD kernels whose fp32 dot products may use TF32 (10-bit mantissa)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-2
