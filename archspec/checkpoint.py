"""Loading mamba_ssm ``MambaLMHeadModel`` checkpoints (config.json + pytorch_model.bin) into archspec.

mamba_ssm's config (``MambaConfig``): d_model, d_intermediate, n_layer, vocab_size, ssm_cfg, attn_layer_idx,
attn_cfg, rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple, tie_embeddings. Its layer i is a
``Block`` holding ``norm`` + ``mixer`` (Mamba2, or MHA when i is in attn_layer_idx) and, when d_intermediate > 0,
``norm2`` + ``mlp`` (a GatedMLP whose hidden width is d_intermediate rounded up to a multiple of 128). In
archspec every residual block holds one mixer, so such a Block becomes two layers: 2i (``norm``, ``mixer``)
and 2i + 1 (``norm2`` -> ``norm``, ``mlp`` -> ``mixer``). Layer symbols: M (ssd), A (attention), F (mlp).

MHA layers (hybrids such as state-spaces/mamba2attn-2.7b) keep their names: ``mixer.in_proj`` (q, k, v fused in
that order), ``mixer.conv1d`` with attn_cfg.d_conv > 0 (depthwise, with bias, no activation, over the qkv
channels, before RoPE) and ``mixer.out_proj``; flash_attn's rotary ``inv_freq`` is a non-persistent buffer, so
no rotary tensor is stored. Decoding differs from mamba_ssm 2.3.2 in one place: after a multi-token prefill
its MHA stores the conv *outputs* in conv_state (the decode step expects inputs; state-spaces/mamba PR #1027),
so its generated continuation disagrees with its own forward pass; archspec keeps the conv inputs, so
prefill + decode equals the forward pass.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from archspec.builder import LanguageModel, build_model
from archspec.fileio import read_json_object
from archspec.layout import describe_layout
from archspec.spec import ModelSpec

PathLike = Union[str, os.PathLike]

MAMBA_CONFIG_DEFAULTS: dict[str, Any] = {
    "d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 8, "tie_embeddings": True,
}
"""mamba_ssm's MambaConfig defaults, used for keys a config.json leaves out."""

_EXTRA_CONFIG_KEYS = {"norm_epsilon"}
_IGNORED_CONFIG_KEYS = {"fused_add_norm"}  # a kernel choice, no effect on the function computed

# Mamba2 keyword -> SSDSpec field (identical names except headdim)
_SSM_KEYS = {
    "d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "headdim": "head_dim", "ngroups": "ngroups",
    "A_init_range": "A_init_range", "D_has_hdim": "D_has_hdim", "rmsnorm": "rmsnorm",
    "norm_before_gate": "norm_before_gate", "dt_min": "dt_min", "dt_max": "dt_max",
    "dt_init_floor": "dt_init_floor", "dt_limit": "dt_limit", "bias": "bias", "conv_bias": "conv_bias",
    "chunk_size": "chunk_size",
}
# kernel/parallelism switches and init-only options that do not change the function of loaded weights
_SSM_IGNORED = {"layer", "use_mem_eff_path", "sequence_parallel", "process_group", "conv_init", "d_ssm"}
_ATTN_KEYS = {"num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias", "softmax_scale",
              "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base", "rotary_emb_interleaved"}
GATED_MLP_MULTIPLE = 128  # mamba_ssm's GatedMLP rounds its hidden width up to this multiple


def _ssd_block(ssm_cfg: Mapping[str, Any], d_model: int) -> dict[str, Any]:
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer != "Mamba2":
        raise ValueError(f"ssm_cfg.layer: only Mamba2 layers are supported, got {layer!r} "
                         "(mamba_ssm defaults to Mamba1 when 'layer' is missing)")
    unknown = set(ssm_cfg) - set(_SSM_KEYS) - _SSM_IGNORED
    if unknown:
        raise ValueError(f"ssm_cfg: unsupported Mamba2 options {sorted(unknown)}")
    block = {"type": "ssd", **{_SSM_KEYS[k]: v for k, v in ssm_cfg.items() if k in _SSM_KEYS}}
    d_ssm = ssm_cfg.get("d_ssm")
    d_inner = block.get("expand", 2) * d_model
    if d_ssm is not None and d_ssm != d_inner:
        raise ValueError(f"ssm_cfg.d_ssm: only d_ssm = expand * d_model = {d_inner} (or null) is supported, "
                         f"got {d_ssm}")
    return block


def _attention_block(attn_cfg: Mapping[str, Any], d_model: int) -> dict[str, Any]:
    unknown = set(attn_cfg) - _ATTN_KEYS
    if unknown:
        raise ValueError(f"attn_cfg: unsupported MHA options {sorted(unknown)}")
    if "num_heads" not in attn_cfg:
        raise ValueError("attn_cfg.num_heads: required when attn_layer_idx is not empty")
    if not attn_cfg.get("causal", False):
        raise ValueError("attn_cfg.causal: must be true for a language model")
    if attn_cfg.get("mlp_dim", 0):
        raise ValueError(f"attn_cfg.mlp_dim: only 0 is supported (no gated MLP fused into the attention "
                         f"projections), got {attn_cfg['mlp_dim']}")
    d_conv = attn_cfg.get("d_conv", 0) or 0
    if d_conv and not 2 <= d_conv <= 8:
        raise ValueError(f"attn_cfg.d_conv: only 0 (no conv) or a width from 2 to 8 is supported, got {d_conv}")
    if attn_cfg.get("rotary_emb_interleaved", False):
        raise ValueError("attn_cfg.rotary_emb_interleaved: only the rotate-half (non-interleaved) RoPE is supported")
    qkv_bias, out_bias = attn_cfg.get("qkv_proj_bias", True), attn_cfg.get("out_proj_bias", True)
    if qkv_bias != out_bias:
        raise ValueError(f"attn_cfg.qkv_proj_bias/out_proj_bias: must be equal, got {qkv_bias} and {out_bias}")
    n_heads = attn_cfg["num_heads"]
    head_dim = attn_cfg.get("head_dim") or d_model // n_heads
    scale = attn_cfg.get("softmax_scale")
    if scale is not None and not math.isclose(scale, head_dim ** -0.5, rel_tol=1e-6):
        raise ValueError(f"attn_cfg.softmax_scale: only 1/sqrt(head_dim) (or null) is supported, got {scale}")
    block: dict[str, Any] = {"type": "attention", "n_heads": n_heads, "n_kv_heads": attn_cfg.get("num_heads_kv"),
                             "head_dim": head_dim, "bias": bool(qkv_bias), "d_conv": d_conv,
                             "rope_theta": float(attn_cfg.get("rotary_emb_base", 10000.0))}
    rot = attn_cfg.get("rotary_emb_dim", 0)
    block["rope"] = rot > 0
    if rot > 0:
        if rot % 2 or rot > head_dim:
            raise ValueError(f"attn_cfg.rotary_emb_dim: expected an even number <= head_dim={head_dim}, got {rot}")
        fraction = rot / head_dim
        while int(head_dim * fraction) < rot:  # guard float rounding so the block rotates exactly `rot` channels
            fraction = math.nextafter(fraction, 2.0)
        block["rope_fraction"] = fraction
    return block


def spec_from_mamba_ssm_config(config: Mapping[str, Any], name: str = "mamba_ssm") -> ModelSpec:
    """The ModelSpec equivalent to a mamba_ssm MambaConfig (as in its config.json).

    MHA's d_conv (a causal depthwise conv with bias over the fused qkv projection) maps to AttentionSpec.d_conv,
    rotary_emb_dim to rope_fraction = rotary_emb_dim / head_dim, rotary_emb_base to rope_theta, the two equal
    projection biases to bias.
    Raises ValueError naming the config key for options archspec cannot represent (Mamba1 layers, MHA with
    mlp_dim > 0/interleaved RoPE/unequal biases/a softmax_scale other than 1/sqrt(head_dim), d_conv 1 or above
    8, non-causal attention, d_ssm != d_inner).
    """
    unknown = set(config) - set(MAMBA_CONFIG_DEFAULTS) - _EXTRA_CONFIG_KEYS
    if unknown:
        raise ValueError(f"config: unknown MambaConfig keys {sorted(unknown)}")
    cfg = {**MAMBA_CONFIG_DEFAULTS, **config}
    d_model, n_layer, d_intermediate = cfg["d_model"], cfg["n_layer"], cfg["d_intermediate"]
    attn_idx = set(cfg["attn_layer_idx"] or [])
    if any(not 0 <= i < n_layer for i in attn_idx):
        raise ValueError(f"attn_layer_idx: expected layer indices in [0, {n_layer}), got {sorted(attn_idx)}")
    blocks: dict[str, Any] = {}
    if len(attn_idx) < n_layer:
        blocks["M"] = _ssd_block(cfg["ssm_cfg"] or {}, d_model)
    if attn_idx:
        blocks["A"] = _attention_block(cfg["attn_cfg"] or {}, d_model)
    if d_intermediate:
        hidden = -(-d_intermediate // GATED_MLP_MULTIPLE) * GATED_MLP_MULTIPLE
        blocks["F"] = {"type": "mlp", "kind": "swiglu", "hidden": hidden, "bias": False}
    layers: list[str] = []
    for i in range(n_layer):
        layers.append("A" if i in attn_idx else "M")
        if d_intermediate:
            layers.append("F")
    data = {
        "name": name,
        "description": f"mamba_ssm MambaLMHeadModel: {n_layer} layers, d_model {d_model}",
        "d_model": d_model, "vocab_size": cfg["vocab_size"],
        "pad_vocab_size_multiple": cfg["pad_vocab_size_multiple"], "tie_embeddings": cfg["tie_embeddings"],
        "norm": "rmsnorm" if cfg["rms_norm"] else "layernorm", "norm_eps": cfg.get("norm_epsilon", 1e-5),
        "residual_in_fp32": cfg["residual_in_fp32"], "init": "mamba_ssm", "blocks": blocks,
        "layout": describe_layout(layers),
    }
    return ModelSpec.model_validate(data)


_LAYER_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(norm2|mlp|norm|mixer)\.(.+)$")


def convert_mamba_ssm_state_dict(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                                 ) -> dict[str, torch.Tensor]:
    """Rename a mamba_ssm state dict to archspec's: with d_intermediate > 0, Block i's ``norm``/``mixer`` go to
    layer 2i and its ``norm2``/``mlp`` to layer 2i + 1 (as ``norm``/``mixer``); other keys are unchanged."""
    if not config.get("d_intermediate", MAMBA_CONFIG_DEFAULTS["d_intermediate"]):
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            renamed[key] = value
            continue
        i, part, rest = int(match.group(1)), match.group(2), match.group(3)
        second = part in ("norm2", "mlp")
        target = {"norm2": "norm", "mlp": "mixer"}.get(part, part)
        renamed[f"backbone.layers.{2 * i + int(second)}.{target}.{rest}"] = value
    return renamed


def _resolve_files(dir_or_files: Union[PathLike, Sequence[PathLike]]) -> tuple[Path, list[Path]]:
    """(config.json path, weight file paths) from a checkpoint directory or an explicit list of files."""
    if isinstance(dir_or_files, (str, os.PathLike)):
        root = Path(dir_or_files)
        if not root.is_dir():
            raise ValueError(f"dir_or_files: expected a checkpoint directory or a list of files, got {root}")
        files = [root / "config.json", root / "pytorch_model.bin"]
    else:
        files = [Path(f) for f in dir_or_files]
    configs = [f for f in files if f.suffix == ".json"]
    weights = [f for f in files if f.suffix in (".bin", ".pt", ".pth")]
    if len(configs) != 1 or not weights or len(configs) + len(weights) != len(files):
        raise ValueError(f"dir_or_files: expected one config .json and weight files (.bin/.pt/.pth), got "
                         f"{[str(f) for f in files]}")
    for f in files:
        if not f.is_file():
            raise ValueError(f"dir_or_files: {f} does not exist")
    return configs[0], weights


def load_mamba_ssm_checkpoint(dir_or_files: Union[PathLike, Sequence[PathLike]], *, device=None, dtype=None
                              ) -> tuple[ModelSpec, LanguageModel]:
    """Load a mamba_ssm checkpoint: a directory with config.json and pytorch_model.bin (as its
    ``save_pretrained`` writes), or a list of files (one config .json, one or more weight files whose state
    dicts are merged). Returns the equivalent spec and the model with the weights loaded strictly.

    dtype: of the built model (default: the checkpoint's embedding dtype). With tied embeddings a missing
    ``lm_head.weight`` is taken from the embedding; a different one is an error. A config or weight file that does
    not load (not JSON, truncated) raises ValueError naming it.
    """
    config_path, weight_paths = _resolve_files(dir_or_files)
    config = read_json_object(config_path, "of MambaConfig keys")
    name = config_path.parent.name or "mamba_ssm"
    spec = spec_from_mamba_ssm_config(config, name=name)
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_paths:
        try:
            state_dict.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # truncated, damaged or not a torch file: torch raises many kinds
            reason = str(err).split("\n", 1)[0] or type(err).__name__
            raise ValueError(f"{path}: cannot load the weights ({reason})") from err
    state_dict = convert_mamba_ssm_state_dict(state_dict, config)
    embedding = state_dict.get("backbone.embedding.weight")
    if spec.tie_embeddings and embedding is not None:
        head = state_dict.setdefault("lm_head.weight", embedding)
        if head is not embedding and not torch.equal(head, embedding):
            raise ValueError("lm_head.weight: differs from backbone.embedding.weight but the config ties them")
    if dtype is None and embedding is not None:
        dtype = embedding.dtype
    model = build_model(spec, device=device, dtype=dtype)
    model.load_state_dict(state_dict, strict=True)
    return spec, model
