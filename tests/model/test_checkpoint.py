"""Loading mamba_ssm checkpoints: a config.json and a state dict written here in mamba_ssm's documented layout
(MambaLMHeadModel: backbone.embedding, backbone.layers.{i}.norm/.mixer[/.norm2/.mlp], backbone.norm_f, lm_head)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from archspec.accounting import account
from archspec.builder import build_model
from archspec.checkpoint import load_mamba_ssm_checkpoint, spec_from_mamba_ssm_config
from archspec.layout import expand_layout

HYBRID_CONFIG = {
    "d_model": 64, "d_intermediate": 100, "n_layer": 4, "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 32, "ngroups": 2, "chunk_size": 16},
    "attn_layer_idx": [2],
    "attn_cfg": {"causal": True, "num_heads": 4, "num_heads_kv": 2, "head_dim": 16, "rotary_emb_dim": 8,
                 "qkv_proj_bias": False, "out_proj_bias": False},
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
    MHA in_proj holds q, k, v; biases only where the config asks for them)."""
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
            sd[p + "mixer.in_proj.weight"] = torch.randn(hd * (h + 2 * kv), d) / d**0.5
            sd[p + "mixer.out_proj.weight"] = torch.randn(d, h * hd) / (h * hd) ** 0.5
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
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: expected a JSON object of MambaConfig keys, got list"):
        load_mamba_ssm_checkpoint(tmp_path)


def test_published_mamba2_config_has_the_published_size():
    cfg = {**MAMBA2_CONFIG, "d_model": 2560, "n_layer": 64, "vocab_size": 50277}  # state-spaces/mamba2-2.7b
    spec = spec_from_mamba_ssm_config(cfg)
    assert account(spec, 2048).params == 2_702_599_680
    assert sum(p.numel() for p in build_model(spec, device="meta").parameters()) == 2_702_599_680


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
def test_loaded_checkpoint_reproduces_mamba_ssm_logits(tmp_path, monkeypatch):
    # the real thing: mamba_ssm builds, initialises and saves (save_pretrained) a hybrid Mamba-2 / MHA / GatedMLP
    # model; our loader must give the same logits. RoPE is left out: mamba_ssm's MHA takes it from flash_attn.
    MambaLMHeadModel = import_mamba_ssm_lm_head_model(monkeypatch)
    from mamba_ssm.models.config_mamba import MambaConfig

    cfg = {**HYBRID_CONFIG, "d_model": 128, "d_intermediate": 200,
           "ssm_cfg": {"layer": "Mamba2", "d_state": 32, "headdim": 32, "ngroups": 2, "chunk_size": 32,
                       "use_mem_eff_path": False},
           "attn_cfg": {**HYBRID_CONFIG["attn_cfg"], "head_dim": 32, "rotary_emb_dim": 0}}
    reference = MambaLMHeadModel(MambaConfig(**cfg), device="cuda", dtype=torch.float32)
    reference.save_pretrained(str(tmp_path))
    spec, model = load_mamba_ssm_checkpoint(tmp_path, device="cuda")
    assert expand_layout(spec) == ["M", "F", "M", "F", "A", "F", "M", "F"]
    ids = torch.randint(0, cfg["vocab_size"], (2, 96), device="cuda")
    with torch.no_grad():
        expected = reference(ids).logits.float()
        got = model(ids).float()
    # both sides run Triton SSD kernels whose fp32 dot products may use TF32 (10-bit mantissa)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-2
