"""Loading mamba_ssm ``MambaLMHeadModel`` checkpoints (config.json + pytorch_model.bin) into archspec, and
exporting archspec models that mamba_ssm can express to that format (``save_mamba_ssm_checkpoint``).

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

Export is the inverse: ``mamba_ssm_config_from_spec`` gives the MambaConfig of a spec whose layers are SSD and
attention mixers, each followed by one SwiGLU MLP without biases or none followed by any, with one SSD config and
one attention config shared by all such layers; ``spec_from_mamba_ssm_config`` of it gives the spec back (up to
name, description, the layout's spelling, block symbols, init/init_std, training and data, none of which changes
what the weights compute). Everything else raises ValueError naming the spec field.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Union

import torch

from archspec.builder import LanguageModel, build_model
from archspec.fileio import file_in_the_way, read_json_object, write_atomic
from archspec.layout import describe_layout, expand_layout
from archspec.spec import AttentionSpec, MLPSpec, ModelSpec, SSDSpec

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
    def ours(block: int, part: str) -> tuple[int, str]:
        second = part in ("norm2", "mlp")
        return 2 * block + int(second), {"norm2": "norm", "mlp": "mixer"}.get(part, part)

    return _rename_layers(state_dict, config, _LAYER_KEY, ours)


def _rename_layers(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], pattern: re.Pattern,
                   rename: Callable[[int, str], tuple[int, str]]) -> dict[str, torch.Tensor]:
    """``backbone.layers.<i>.<part>.<rest>`` keys matching ``pattern`` renamed to the (layer, part) that ``rename``
    gives, when the config has MLPs (d_intermediate > 0: mamba_ssm's Blocks hold two of our layers); other keys
    and MLP-free configs unchanged."""
    if not config.get("d_intermediate", MAMBA_CONFIG_DEFAULTS["d_intermediate"]):
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match is None:
            renamed[key] = value
            continue
        layer, part = rename(int(match.group(1)), match.group(2))
        renamed[f"backbone.layers.{layer}.{part}.{match.group(3)}"] = value
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


# ------------------------------------------------------------------------------------------------------ export
MAMBA2_DEFAULTS: dict[str, Any] = {
    "d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "A_init_range": (1, 16),
    "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False, "dt_min": 0.001, "dt_max": 0.1,
    "dt_init_floor": 1e-4, "dt_limit": (0.0, math.inf), "bias": False, "conv_bias": True, "chunk_size": 256,
}
"""mamba_ssm 2.3.2's ``Mamba2`` keyword defaults; an exported ssm_cfg holds ``layer`` and the keys that differ."""

MAMBA_SSM_NORM_EPS = 1e-5
"""MixerModel's norm_epsilon: MambaConfig has no key for it, so MambaLMHeadModel always uses this one."""

MAMBA_SSM_FILES = ("config.json", "pytorch_model.bin")
"""What ``save_pretrained`` writes (and ``from_pretrained`` / ``load_mamba_ssm_checkpoint`` read)."""

_MODEL_FIELDS = {"d_model", "vocab_size", "pad_vocab_size_multiple", "tie_embeddings", "norm", "norm_eps",
                 "residual_in_fp32", "blocks", "layout"}
# naming, initialisation and training: they do not change what the weights compute, so they are not exported
_MODEL_FIELDS_LEFT_OUT = {"name", "description", "init", "init_std", "training", "data"}
_BLOCK_FIELDS = {
    "ssd": set(_SSM_KEYS.values()) | {"type", "backend"},
    "attention": {"type", "n_heads", "n_kv_heads", "head_dim", "rope", "rope_theta", "rope_fraction",
                  "sliding_window", "qk_norm", "bias", "d_conv", "backend"},
    "mlp": {"type", "kind", "hidden", "hidden_mult", "multiple_of", "bias"},
}
_MIXERS = ("ssd", "attention")


def _only_defaults(obj: Any, known: set[str], where: str) -> None:
    """Fields that this exporter does not know (added to the schema later) must keep their defaults."""
    for name, field in type(obj).model_fields.items():
        if name in known:
            continue
        value, default = getattr(obj, name), field.get_default(call_default_factory=True)
        if value != default:
            raise ValueError(f"{where}{name}: mamba_ssm cannot express it (got {value!r}; only the default "
                             f"{default!r} can be exported)")


def _ssm_cfg(block: SSDSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {"layer": "Mamba2"}
    for key, field in _SSM_KEYS.items():
        value = getattr(block, field)
        if value != MAMBA2_DEFAULTS[key]:
            cfg[key] = list(value) if isinstance(value, tuple) else value
    return cfg


def _attn_cfg(block: AttentionSpec, d_model: int, where: str) -> dict[str, Any]:
    if block.sliding_window is not None:
        raise ValueError(f"{where}sliding_window: mamba_ssm's MHA attends to every past token; got a window of "
                         f"{block.sliding_window}")
    if block.qk_norm:
        raise ValueError(f"{where}qk_norm: mamba_ssm's MHA has no q/k normalisation")
    head_dim = block.head_size(d_model)
    rot = 0
    if block.rope:
        exact = head_dim * block.rope_fraction
        rot = 2 * (int(exact) // 2)  # the channels AttentionBlock rotates
        if abs(exact - rot) > 1e-6:
            raise ValueError(f"{where}rope_fraction: mamba_ssm's MHA rotates a whole, even number of channels "
                             f"(rotary_emb_dim), but head_dim {head_dim} x rope_fraction {block.rope_fraction:g} = "
                             f"{exact:g}; this block rotates the first {rot}, so rope_fraction "
                             f"{rot / head_dim:.10g} computes the same and exports")
    cfg: dict[str, Any] = {"num_heads": block.n_heads}
    if block.n_kv_heads is not None:
        cfg["num_heads_kv"] = block.n_kv_heads
    cfg.update(head_dim=head_dim, qkv_proj_bias=block.bias, out_proj_bias=block.bias, causal=True,
               d_conv=block.d_conv, rotary_emb_dim=rot, rotary_emb_base=block.rope_theta)
    return cfg


def _d_intermediate(block: MLPSpec, d_model: int, where: str) -> int:
    if block.kind != "swiglu":
        raise ValueError(f"{where}kind: mamba_ssm's GatedMLP is SwiGLU (fc2(value * silu(gate))); got {block.kind}")
    if block.bias:
        raise ValueError(f"{where}bias: mamba_ssm's GatedMLP (as MambaLMHeadModel builds it) has no biases")
    hidden = block.hidden_size(d_model)
    if hidden % GATED_MLP_MULTIPLE:
        field = "hidden_mult" if block.hidden is None and block.hidden_mult is not None else "hidden"
        raise ValueError(f"{where}{field}: mamba_ssm's GatedMLP rounds its hidden width up to a multiple of "
                         f"{GATED_MLP_MULTIPLE}; this MLP's is {hidden}, so set hidden to a multiple of "
                         f"{GATED_MLP_MULTIPLE}")
    return hidden


def _shared(spec: ModelSpec, symbols: list[str], configs: dict[str, Any], what: str) -> Any:
    """The one config of ``symbols`` (mamba_ssm shares one per kind); ValueError naming a field that differs."""
    first = symbols[0]
    for other in symbols[1:]:
        if configs[other] != configs[first]:
            a = spec.blocks[first].model_dump(exclude={"backend"})
            b = spec.blocks[other].model_dump(exclude={"backend"})
            field = next((k for k in b if b[k] != a.get(k)), next(iter(b)))
            raise ValueError(f"blocks.{other}.{field}: {b[field]!r} differs from blocks.{first}.{field} = "
                             f"{a[field]!r}; mamba_ssm has one {what} for all such layers")
    return configs[first]


def _check_layout(spec: ModelSpec, layers: list[str]) -> bool:
    """Whether every mixer is followed by an MLP; ValueError naming ``layout`` when the stack is not mamba_ssm's
    Blocks (each one mixer followed by one MLP in every Block or in none)."""
    kinds = [spec.blocks[symbol].type for symbol in layers]
    if all(kind == "mlp" for kind in kinds):
        raise ValueError("layout: mamba_ssm needs at least one mixer layer (ssd or attention); this stack has "
                         "only MLPs")
    with_mlp = "mlp" in kinds
    rule = ("layout: mamba_ssm's layers (Blocks) are each one mixer (ssd or attention) followed by one MLP in every "
            "Block or in none")
    for i, (symbol, kind) in enumerate(zip(layers, kinds)):
        if kind == "mlp" and not (i % 2 and kinds[i - 1] in _MIXERS):
            where = "first" if i == 0 else "after another MLP"
            raise ValueError(f"{rule}; layer {i} ({symbol}) is an MLP that does not follow a mixer ({where})")
        if kind in _MIXERS and with_mlp and i % 2:
            raise ValueError(f"{rule}; layer {i} ({symbol}, {kind}) follows the mixer at layer {i - 1} without an MLP "
                             "between them, while other mixers have one")
    if with_mlp and len(layers) % 2:
        raise ValueError(f"{rule}; the last layer ({layers[-1]}, {kinds[-1]}) has no MLP after it, while other "
                         "mixers have one")
    return with_mlp


def mamba_ssm_config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """The mamba_ssm MambaConfig (as in its config.json, every key in MambaConfig's order) of ``spec``.

    mamba_ssm can express: layers of SSD and attention mixers, each followed by one MLP (d_intermediate > 0) or
    none followed by any; one SSD config (ssm_cfg, written as ``layer: Mamba2`` plus the Mamba2 keywords that
    differ from their defaults) and one attention config (attn_cfg) shared by all such layers; MLPs SwiGLU without
    biases whose hidden width is a multiple of 128; norm_eps 1e-5; RMSNorm or LayerNorm. Attention: GQA, a head_dim
    of any width, equal q/k/v and output biases, the qkv conv (d_conv), RoPE on head_dim x rope_fraction channels
    when that is a whole even number; no sliding window or qk-norm. Block symbols, the layout's spelling,
    backend, init, init_std, training and data are not part of the format. fused_add_norm is written true
    (mamba_ssm's default; a kernel choice).
    Raises ValueError naming the spec field mamba_ssm cannot express.
    """
    _only_defaults(spec, _MODEL_FIELDS | _MODEL_FIELDS_LEFT_OUT, "")
    if not math.isclose(spec.norm_eps, MAMBA_SSM_NORM_EPS, rel_tol=1e-9):
        raise ValueError(f"norm_eps: mamba_ssm's MambaConfig has no norm epsilon (its norms use "
                         f"{MAMBA_SSM_NORM_EPS:g}); got {spec.norm_eps:g}")
    layers = expand_layout(spec)
    used = list(dict.fromkeys(layers))
    for symbol in used:
        block = spec.blocks[symbol]
        if block.type not in _BLOCK_FIELDS:
            raise ValueError(f"blocks.{symbol}.type: mamba_ssm has no {block.type!r} layer (only ssd, attention and "
                             "mlp: Mamba2, MHA and GatedMLP)")
        _only_defaults(block, _BLOCK_FIELDS[block.type], f"blocks.{symbol}.")
    with_mlp = _check_layout(spec, layers)
    by_type: dict[str, list[str]] = {kind: [s for s in used if spec.blocks[s].type == kind] for kind in _BLOCK_FIELDS}
    d_model = spec.d_model
    ssm_cfg: dict[str, Any] = {}
    if by_type["ssd"]:
        ssm_cfg = _shared(spec, by_type["ssd"], {s: _ssm_cfg(spec.blocks[s]) for s in by_type["ssd"]}, "ssm_cfg")
    attn_cfg: dict[str, Any] = {}
    if by_type["attention"]:
        configs = {s: _attn_cfg(spec.blocks[s], d_model, f"blocks.{s}.") for s in by_type["attention"]}
        attn_cfg = _shared(spec, by_type["attention"], configs, "attn_cfg")
    d_intermediate = 0
    if with_mlp:
        widths = {s: _d_intermediate(spec.blocks[s], d_model, f"blocks.{s}.") for s in by_type["mlp"]}
        d_intermediate = _shared(spec, by_type["mlp"], widths, "d_intermediate (GatedMLP width)")
    mixers = [symbol for symbol in layers if spec.blocks[symbol].type in _MIXERS]
    return {
        "d_model": d_model,
        "d_intermediate": d_intermediate,
        "n_layer": len(mixers),
        "vocab_size": spec.vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [i for i, symbol in enumerate(mixers) if spec.blocks[symbol].type == "attention"],
        "attn_cfg": attn_cfg,
        "rms_norm": spec.norm == "rmsnorm",
        "residual_in_fp32": spec.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": spec.pad_vocab_size_multiple,
        "tie_embeddings": spec.tie_embeddings,
    }


_OUR_LAYER_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(norm|mixer)\.(.+)$")


def to_mamba_ssm_state_dict(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
                            ) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_mamba_ssm_state_dict``: with d_intermediate > 0, layer 2i's ``norm``/``mixer`` go to
    Block i's ``norm``/``mixer`` and layer 2i + 1's to its ``norm2``/``mlp``; other keys are unchanged."""
    def theirs(layer: int, part: str) -> tuple[int, str]:
        block, second = divmod(layer, 2)
        return block, {"norm": "norm2", "mixer": "mlp"}[part] if second else part

    return _rename_layers(state_dict, config, _OUR_LAYER_KEY, theirs)


def _check_out_dir(out: Path) -> None:
    blocker = file_in_the_way(out)
    if blocker is not None:
        made = "" if blocker == out else f", so {out} cannot be made"
        raise ValueError(f"{blocker} is a file, not a folder{made}")
    if out.is_dir():
        held = sorted(p.name for p in out.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise ValueError(f"{out}: already holds {shown}; export writes only into a new or empty folder, so "
                             "nothing was changed")


def save_mamba_ssm_checkpoint(model: LanguageModel, out_dir: PathLike) -> list[Path]:
    """Write ``model`` as mamba_ssm's ``save_pretrained`` does: ``out_dir/config.json`` (the MambaConfig of
    ``model.spec``, see ``mamba_ssm_config_from_spec``; indented JSON) and ``out_dir/pytorch_model.bin`` (the state
    dict under MambaLMHeadModel's names, on the CPU in the model's dtypes; with tied embeddings ``lm_head.weight``
    is stored too, sharing the embedding's storage, as ``torch.save(model.state_dict())`` stores it). Returns the
    two paths.

    ``out_dir`` must be new or an empty folder: an existing file is never overwritten. The weights are written to a
    temporary name and renamed, then config.json (atomically), so a folder with a config.json always holds the
    weights. Raises ValueError (naming the spec field, or ``out_dir``) before anything is written when the spec
    cannot be expressed or ``out_dir`` is in the way; when writing fails, what was written (and the folders made)
    is removed and the error raised again.
    """
    if not isinstance(model, LanguageModel):
        raise ValueError(f"model: expected an archspec LanguageModel, got {type(model).__name__}")
    config = mamba_ssm_config_from_spec(model.spec)
    out = Path(out_dir)
    _check_out_dir(out)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if model.spec.tie_embeddings:  # one storage, as in the model (.cpu() of a CUDA model copies each name apart)
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    state = to_mamba_ssm_state_dict(state, config)
    made = [p for p in (out, *out.parents) if not p.exists()]
    config_path, weights_path = (out / name for name in MAMBA_SSM_FILES)
    tmp = out / f".{weights_path.name}.{os.getpid()}.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, weights_path)
        write_atomic(config_path, json.dumps(config, indent=4) + "\n")
    except BaseException:
        for path in (tmp, weights_path, config_path):
            path.unlink(missing_ok=True)
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return [config_path, weights_path]
