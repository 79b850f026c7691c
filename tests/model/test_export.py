"""Exporting to mamba_ssm's format: mamba_ssm_config_from_spec, save_mamba_ssm_checkpoint and `archspec export`.

A tiny hybrid (SSD, GQA attention with the qkv conv and partial RoPE, SwiGLU MLP after every mixer) is trained for
3 steps on MQAR, exported and loaded back with load_mamba_ssm_checkpoint; the tensor names and shapes are checked
against test_checkpoint.mamba_ssm_state_dict, which writes mamba_ssm's layout independently of the exporter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel
from test_checkpoint import CONV_HYBRID_CONFIG, HYBRID_CONFIG, MAMBA2_CONFIG, mamba_ssm_state_dict

from archspec.builder import build_model
from archspec.checkpoint import (
    MAMBA_CONFIG_DEFAULTS, load_mamba_ssm_checkpoint, mamba_ssm_config_from_spec, save_mamba_ssm_checkpoint,
    spec_from_mamba_ssm_config,
)
from archspec.cli import main
from archspec.layout import expand_layout
from archspec.loader import dump_spec, load_spec, spec_from_dict
from archspec.runs import open_run
from archspec.spec import ModelSpec, register_block_spec, unregister_block_spec
from archspec.training import train

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_EXPORTABLE = sorted(ROOT.glob("specs/mamba2-*.yaml")) + [ROOT / "specs" / "mamba2attn-2.7b.yaml"]
TINY_SET = [  # tiny-hybrid's MQAR data and training section, shrunk: 3 steps of 8 sequences
    "d_model=32", "vocab_size=32", "data.vocab_size=32", "data.seq_len=32", "data.num_kv_pairs=2",
    "data.num_train=64", "data.num_val=16", "training.batch_size=8", "training.max_steps=3",
    "training.warmup_steps=1", "training.lr=1e-2", "training.val_every_steps=1000", "training.precision=32-true",
]
EXPORTABLE_BLOCKS: dict[str, Any] = {
    "M": {"type": "ssd", "d_state": 16, "head_dim": 32, "ngroups": 2, "chunk_size": 16, "D_has_hdim": True,
          "norm_before_gate": True, "dt_limit": [0.0001, 100.0], "conv_bias": False},
    "A": {"type": "attention", "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "bias": True, "d_conv": 4,
          "rope_fraction": 0.5, "rope_theta": 1000.0},
    "F": {"type": "mlp", "kind": "swiglu", "hidden": 128},
}
MAMBA_CONFIG_KEYS = ["d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                     "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"]
"""MambaConfig's fields in their order (mamba_ssm 2.3.2 models/config_mamba.py); save_pretrained dumps them all."""


def spec_with(blocks: dict[str, Any], layout: Any, **fields: Any) -> ModelSpec:
    """tiny-hybrid's data and training sections with these blocks, layout and model fields."""
    data = load_spec(ROOT / "specs" / "tiny-hybrid.yaml", TINY_SET).model_dump(mode="python")
    data.update(name="tiny-export", blocks=blocks, layout=layout, **fields)
    return spec_from_dict(data)


def exportable_spec(**fields: Any) -> ModelSpec:
    return spec_with(EXPORTABLE_BLOCKS, "M F A F M F", **fields)


def write_run(spec: ModelSpec, out: Path, seed: int = 0) -> Path:
    """An untrained run folder as archspec train writes it (spec.yaml, checkpoints/last.ckpt with the LMModule's
    state dict, keys prefixed with model.), for the paths that never look at the weights' values."""
    torch.manual_seed(seed)
    model = build_model(spec)
    (out / "checkpoints").mkdir(parents=True)
    dump_spec(spec, out / "spec.yaml")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 0},
               out / "checkpoints" / "last.ckpt")
    return out


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    with torch.random.fork_rng():
        train(exportable_spec(), out_dir=out, accelerator="cpu", progress_bar=False)
    return out


# ------------------------------------------------------------------------------------------ the config
@pytest.mark.parametrize("path", SHIPPED_EXPORTABLE, ids=lambda p: p.name)
def test_shipped_mamba2_specs_round_trip(path):
    spec = load_spec(path)
    config = mamba_ssm_config_from_spec(spec)
    back = spec_from_mamba_ssm_config(config)
    left_out = {"name", "description", "training", "data"}
    assert back.model_dump(exclude=left_out) == spec.model_dump(exclude=left_out)
    assert list(config) == MAMBA_CONFIG_KEYS and config["ssm_cfg"] == {"layer": "Mamba2"}  # published defaults


def test_mamba2attn_exports_the_published_config():
    # state-spaces/mamba2attn-2.7b's config.json (as in test_checkpoint), with pad_vocab_size_multiple 16
    config = mamba_ssm_config_from_spec(load_spec(ROOT / "specs" / "mamba2attn-2.7b.yaml"))
    assert config == {
        "d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [9, 18, 27, 36, 45, 56],
        "attn_cfg": {"num_heads": 30, "head_dim": 128, "qkv_proj_bias": True, "out_proj_bias": True, "causal": True,
                     "d_conv": 4, "rotary_emb_dim": 64, "rotary_emb_base": 10000.0},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }


def test_hybrid_config_has_mamba_ssm_keys_and_values():
    config = mamba_ssm_config_from_spec(exportable_spec())
    assert list(config) == MAMBA_CONFIG_KEYS
    assert set(config) == set(MAMBA_CONFIG_DEFAULTS)
    assert config == {
        "d_model": 32, "d_intermediate": 128, "n_layer": 3, "vocab_size": 32,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 32, "ngroups": 2, "D_has_hdim": True,
                    "norm_before_gate": True, "dt_limit": [0.0001, 100.0], "conv_bias": False, "chunk_size": 16},
        "attn_layer_idx": [1],
        "attn_cfg": {"num_heads": 4, "num_heads_kv": 2, "head_dim": 16, "qkv_proj_bias": True, "out_proj_bias": True,
                     "causal": True, "d_conv": 4, "rotary_emb_dim": 8, "rotary_emb_base": 1000.0},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    json.dumps(config, allow_nan=False)  # plain JSON (no tuples, no infinities with these settings)


@pytest.mark.parametrize("config", [
    HYBRID_CONFIG, CONV_HYBRID_CONFIG, MAMBA2_CONFIG,
    {**MAMBA2_CONFIG, "rms_norm": False, "tie_embeddings": False, "residual_in_fp32": False,
     "ssm_cfg": {"layer": "Mamba2", "dt_limit": [0.01, math.inf]}},
    {**HYBRID_CONFIG, "attn_layer_idx": [0, 1, 2, 3]},
],
                         ids=["hybrid", "conv-hybrid", "mamba2", "layernorm-untied", "attention-only"])
def test_config_to_spec_to_config_keeps_every_setting(config):
    spec = spec_from_mamba_ssm_config(config)
    exported = mamba_ssm_config_from_spec(spec)
    assert spec_from_mamba_ssm_config(exported) == spec
    # the same model: every given key comes back (d_intermediate as GatedMLP's rounded-up width)
    for key, value in config.items():
        if key == "d_intermediate":
            assert exported[key] == -(-value // 128) * 128
        elif key == "ssm_cfg" and config["attn_layer_idx"] == list(range(config["n_layer"])):
            assert exported[key] == {}  # no Mamba2 layer: nothing to configure
        elif isinstance(value, dict):
            assert {k: v for k, v in exported[key].items() if k in value} == value, key
        else:
            assert exported[key] == value, key


def test_mamba_ssm_config_is_a_fixed_point_of_export_and_load():
    config = mamba_ssm_config_from_spec(exportable_spec(norm="layernorm", tie_embeddings=False))
    assert mamba_ssm_config_from_spec(spec_from_mamba_ssm_config(config)) == config


def test_equal_blocks_under_two_symbols_and_unused_blocks_export():
    blocks = {**EXPORTABLE_BLOCKS, "M2": {**EXPORTABLE_BLOCKS["M"], "backend": "torch"},
              "G": {"type": "mlp", "kind": "gelu"}}  # G is defined but not in the layout
    config = mamba_ssm_config_from_spec(spec_with(blocks, "M F M2 F A F"))
    assert config == {**mamba_ssm_config_from_spec(exportable_spec()), "attn_layer_idx": [2]}


# ------------------------------------------------------------------------------------ what mamba_ssm cannot express
def _unsupported_cases() -> list[tuple[str, dict[str, Any], Any, dict[str, Any], str]]:
    m, a, f = EXPORTABLE_BLOCKS["M"], EXPORTABLE_BLOCKS["A"], EXPORTABLE_BLOCKS["F"]
    return [
        ("two SSD configs", {"M": m, "N": {**m, "d_state": 32}, "A": a, "F": f}, "M F N F", {},
         r"^blocks\.N\.d_state: 32 differs from blocks\.M\.d_state = 16; mamba_ssm has one ssm_cfg"),
        ("two attention configs", {"M": m, "A": a, "B": {**a, "n_heads": 2, "n_kv_heads": None}, "F": f},
         "A F B F", {}, r"^blocks\.B\.n_heads: 2 differs from blocks\.A\.n_heads = 4; mamba_ssm has one attn_cfg"),
        ("two MLP widths", {"M": m, "F": f, "G": {**f, "hidden": 256}}, "M F M G", {},
         r"^blocks\.G\.hidden: 256 differs from blocks\.F\.hidden = 128; mamba_ssm has one d_intermediate"),
        ("MLP first", EXPORTABLE_BLOCKS, "F M F", {}, r"^layout: .*layer 0 \(F\) is an MLP that does not follow a "
                                                      r"mixer \(first\)"),
        ("two MLPs in a row", EXPORTABLE_BLOCKS, "M F F", {}, r"^layout: .*layer 2 \(F\) is an MLP that does not "
                                                              r"follow a mixer \(after another MLP\)"),
        ("a mixer without its MLP", EXPORTABLE_BLOCKS, "M F A M F", {},
         r"^layout: .*layer 3 \(M, ssd\) follows the mixer at layer 2 without an MLP"),
        ("the last mixer without its MLP", EXPORTABLE_BLOCKS, "M F A", {},
         r"^layout: .*the last layer \(A, attention\) has no MLP after it"),
        ("only MLPs", {"F": f}, "F F", {}, r"^layout: mamba_ssm needs at least one mixer layer"),
        ("GELU MLP", {"M": m, "F": {"type": "mlp", "kind": "gelu", "hidden": 128}}, "M F", {},
         r"^blocks\.F\.kind: mamba_ssm's GatedMLP is SwiGLU .*got gelu"),
        ("MLP biases", {"M": m, "F": {**f, "bias": True}}, "M F", {}, r"^blocks\.F\.bias: mamba_ssm's GatedMLP"),
        ("MLP width off 128", {"M": m, "F": {"type": "mlp", "hidden_mult": 2.0}}, "M F", {},
         r"^blocks\.F\.hidden_mult: mamba_ssm's GatedMLP rounds its hidden width up to a multiple of 128; this "
         r"MLP's is 64"),
        ("sliding window", {"M": m, "A": {**a, "sliding_window": 8}}, "M A", {},
         r"^blocks\.A\.sliding_window: mamba_ssm's MHA attends to every past token; got a window of 8"),
        ("qk-norm", {"M": m, "A": {**a, "qk_norm": True}}, "M A", {}, r"^blocks\.A\.qk_norm: mamba_ssm's MHA has no"),
        ("RoPE on a fraction", {"M": m, "A": {**a, "rope_fraction": 0.3}}, "M A", {},
         r"^blocks\.A\.rope_fraction: .*head_dim 16 x rope_fraction 0\.3 = 4\.8; this block rotates the first 4, "
         r"so rope_fraction 0\.25 computes the same"),
        ("RoPE on an odd count", {"M": m, "A": {**a, "rope_fraction": 0.5625}}, "M A", {},
         r"^blocks\.A\.rope_fraction: .*= 9; this block rotates the first 8"),
        ("norm epsilon", EXPORTABLE_BLOCKS, "M F", {"norm_eps": 1e-6},
         r"^norm_eps: mamba_ssm's MambaConfig has no norm epsilon \(its norms use 1e-05\); got 1e-06"),
    ]


@pytest.mark.parametrize("blocks,layout,fields,message", [case[1:] for case in _unsupported_cases()],
                         ids=[case[0] for case in _unsupported_cases()])
def test_what_mamba_ssm_cannot_express_names_the_field(blocks, layout, fields, message, tmp_path):
    spec = spec_with(blocks, layout, **fields)
    with pytest.raises(ValueError, match=message):
        mamba_ssm_config_from_spec(spec)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        save_mamba_ssm_checkpoint(build_model(spec, device="meta"), out)
    assert not out.exists()


def test_a_user_block_type_is_named():
    class Toy(BaseModel):
        type: Literal["toy_export"] = "toy_export"

    register_block_spec(Toy)
    try:
        spec = spec_with({"M": EXPORTABLE_BLOCKS["M"], "T": {"type": "toy_export"}}, "M T")
        with pytest.raises(ValueError, match=r"^blocks\.T\.type: mamba_ssm has no 'toy_export' layer"):
            mamba_ssm_config_from_spec(spec)
    finally:
        unregister_block_spec("toy_export")


# ------------------------------------------------------------------------------------------ the checkpoint
def test_trained_run_exports_and_loads_back_with_equal_logits(trained_run, tmp_path):
    run = open_run(trained_run)
    assert run.step == 3
    out = tmp_path / "hf" / "tiny"  # parents are made
    written = save_mamba_ssm_checkpoint(run.model, out)
    assert written == [out / "config.json", out / "pytorch_model.bin"] and tree(out) == ["config.json",
                                                                                          "pytorch_model.bin"]
    config = json.loads((out / "config.json").read_text())
    assert config == mamba_ssm_config_from_spec(run.spec)
    spec, model = load_mamba_ssm_checkpoint(out)
    assert expand_layout(spec) == ["M", "F", "A", "F", "M", "F"] and model.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, 32, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = run.model(ids), model.eval()(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the trained weights, not a fresh init: the export differs from an untrained model of the same spec
    assert not torch.equal(model.backbone.layers[0].mixer.in_proj.weight, build_model(run.spec).backbone.layers[0]
                           .mixer.in_proj.weight)


def test_weights_have_mamba_ssm_names_and_shapes(trained_run, tmp_path):
    run = open_run(trained_run)
    save_mamba_ssm_checkpoint(run.model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    state = torch.load(tmp_path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    reference = mamba_ssm_state_dict(config)  # mamba_ssm's layout written independently (test_checkpoint)
    for i in (0, 2):  # options that helper leaves out: Mamba2's D has d_inner entries with D_has_hdim, and
        reference[f"backbone.layers.{i}.mixer.D"] = torch.ones(64)  # conv1d has no bias with conv_bias false
        del reference[f"backbone.layers.{i}.mixer.conv1d.bias"]
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert "backbone.layers.2.norm2.weight" in state and "backbone.layers.1.mixer.conv1d.bias" in state
    # tied: lm_head.weight is stored (as save_pretrained's torch.save(state_dict()) stores it), one storage
    assert state["lm_head.weight"].untyped_storage().data_ptr() == \
        state["backbone.embedding.weight"].untyped_storage().data_ptr()
    ours = run.model.state_dict()
    assert torch.equal(state["backbone.layers.2.mlp.fc1.weight"], ours["backbone.layers.5.mixer.fc1.weight"])
    assert torch.equal(state["backbone.layers.1.norm2.weight"], ours["backbone.layers.3.norm.weight"])
    assert torch.equal(state["backbone.layers.1.mixer.in_proj.bias"], ours["backbone.layers.2.mixer.in_proj.bias"])


def test_untied_layernorm_float64_model_round_trips_exactly(tmp_path):
    spec = spec_with({"M": EXPORTABLE_BLOCKS["M"], "A": EXPORTABLE_BLOCKS["A"]}, "M A M", norm="layernorm",
                     tie_embeddings=False)
    torch.manual_seed(1)
    model = build_model(spec, dtype=torch.float64)
    with torch.no_grad():
        for param in model.parameters():  # nothing left at its init value (LayerNorm biases 0, weights 1)
            param.add_(0.01 * torch.randn_like(param))
    save_mamba_ssm_checkpoint(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["rms_norm"], config["tie_embeddings"], config["d_intermediate"]) == (False, False, 0)
    back_spec, back = load_mamba_ssm_checkpoint(tmp_path)
    assert back.lm_head.weight.dtype == torch.float64 and back.lm_head.weight is not back.backbone.embedding.weight
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    ids = torch.randint(0, 32, (2, 24))
    assert torch.equal(back(ids), model(ids))


def test_an_existing_file_in_the_folder_is_never_overwritten(tmp_path):
    model = build_model(exportable_spec())
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"^{tmp_path}: already holds notes.txt; export writes only into a new or "
                                         "empty folder"):
        save_mamba_ssm_checkpoint(model, tmp_path)
    assert tree(tmp_path) == ["notes.txt"]
    first = tmp_path / "first"
    save_mamba_ssm_checkpoint(model, first)
    before = (first / "pytorch_model.bin").read_bytes()
    with pytest.raises(ValueError, match="already holds config.json, pytorch_model.bin"):
        save_mamba_ssm_checkpoint(build_model(exportable_spec()), first)  # not even a previous export
    assert (first / "pytorch_model.bin").read_bytes() == before
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'notes.txt'} is a file, not a folder, so .* cannot be made"):
        save_mamba_ssm_checkpoint(model, tmp_path / "notes.txt" / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    save_mamba_ssm_checkpoint(model, empty)
    assert tree(empty) == ["config.json", "pytorch_model.bin"]


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, failing):
    import archspec.checkpoint as checkpoint

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch if failing == "weights" else checkpoint, "save" if failing == "weights"
                        else "write_atomic", fail)
    with pytest.raises(OSError, match="No space left"):
        save_mamba_ssm_checkpoint(build_model(exportable_spec()), tmp_path / "a" / "b")
    assert tree(tmp_path) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(OSError):
        save_mamba_ssm_checkpoint(build_model(exportable_spec()), kept)
    assert tree(tmp_path) == ["kept"]  # an empty folder that was there stays, empty


# ------------------------------------------------------------------------------------------ the command
def test_cli_export_writes_a_loadable_checkpoint(trained_run, tmp_path, capsys):
    out = tmp_path / "mamba"
    before = tree(trained_run)
    assert main(["export", str(trained_run), "--to", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{trained_run} (tiny-export, last.ckpt at step 3) as mamba_ssm MambaLMHeadModel: 3 layers "
                        "(1 MHA), d_model 32, GatedMLP 128")
    assert lines[1:] == [f"wrote {out / 'config.json'}", f"wrote {out / 'pytorch_model.bin'}"]
    assert tree(trained_run) == before
    run, (_, model) = open_run(trained_run), load_mamba_ssm_checkpoint(out)
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), run.model(ids), rtol=0, atol=1e-6)
    # a mamba_ssm folder exports too (open_run reads both kinds)
    assert main(["export", str(out), "--to", str(tmp_path / "again"), "--format", "mamba_ssm"]) == 0
    assert (tmp_path / "again" / "config.json").read_text() == (out / "config.json").read_text()


def test_cli_export_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    m = EXPORTABLE_BLOCKS["M"]
    run = write_run(spec_with({"M": m, "F": {"type": "mlp", "kind": "gelu"}}, "M F"), tmp_path / "gelu")
    out = tmp_path / "out"
    assert main(["export", str(run), "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {run / 'spec.yaml'} blocks.F.kind: mamba_ssm's GatedMLP is SwiGLU (fc2(value * "
                   "silu(gate))); got gelu\n")
    assert not out.exists()

    good = write_run(exportable_spec(), tmp_path / "good")
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["export", str(good), "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --to {out}: already holds config.json;") and err.count("\n") == 1
    assert tree(out) == ["config.json"]

    assert main(["export", str(tmp_path / "missing"), "--to", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: no such run folder\n"
    assert not (tmp_path / "x").exists()


def test_cli_export_needs_to(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "runs/x"])
    assert exc.value.code == 2 and "--to" in capsys.readouterr().err
