"""Tiny trained runs for the eval / generate tests, and references computed without archspec's eval code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archspec.builder import LanguageModel, build_model
from archspec.checkpoint import spec_from_mamba_ssm_config
from archspec.data import make_dataset
from archspec.lightning_module import LMModule
from archspec.loader import load_spec, spec_from_dict
from archspec.spec import ModelSpec
from archspec.training import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "tiny-hybrid.yaml"
TINY_SET = [  # tiny-hybrid at d_model 32 on MQAR (vocab 32, 2 kv pairs in 32 tokens), 3 steps of 8 sequences
    "d_model=32", "vocab_size=32", "blocks.M.d_state=16", "blocks.M.chunk_size=16",
    "data.vocab_size=32", "data.seq_len=32", "data.num_kv_pairs=2", "data.num_train=64", "data.num_val=20",
    "training.batch_size=8", "training.max_steps=3", "training.warmup_steps=1", "training.lr=1e-2",
    "training.val_every_steps=1000",
]
TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
               for i in range(60))


def mqar_spec() -> ModelSpec:
    """tiny-hybrid shrunk: validation on all 20 examples (batches of 8, 8, 4)."""
    return load_spec(TINY, TINY_SET)


def text_spec(text_file: Path) -> ModelSpec:
    """The same model with a byte vocabulary (258) on byte-level text windows of 32 tokens."""
    data = mqar_spec().model_dump(mode="python")
    data.update(name="tiny-text", vocab_size=258)
    data["data"] = {"task": "text", "path": str(text_file), "seq_len": 32, "val_fraction": 0.1,
                    "num_train": 64, "num_val": 8}
    return spec_from_dict(data)


def train_tiny(spec: ModelSpec, out: Path) -> dict[str, Any]:
    """Train on the CPU; returns the run's result.json."""
    train(spec, out_dir=out, accelerator="cpu", progress_bar=False)
    return json.loads((out / "result.json").read_text())


def trained_model(run_dir: Path) -> LanguageModel:
    """The run's model loaded the Lightning way (LMModule.load_from_checkpoint), in eval mode."""
    spec = load_spec(run_dir / "spec.yaml")
    module = LMModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", spec=spec, map_location="cpu",
                                           weights_only=True)
    return module.model.eval()


@torch.no_grad()
def reference_metrics(model: LanguageModel, data: Any, split: str, seed: int, n: int) -> tuple[float, float, int]:
    """(loss, accuracy, scored tokens) over the first ``n`` examples of the split in one forward pass: the
    token-level mean cross-entropy and argmax accuracy over the targets that are not -100."""
    dataset = make_dataset(data, split, seed)
    ids = torch.stack([dataset[i]["input_ids"] for i in range(n)])
    targets = torch.stack([dataset[i]["targets"] for i in range(n)])
    logits = model(ids)[..., : model.spec.padded_vocab_size].float()
    scored = targets != -100
    loss = F.cross_entropy(logits[scored], targets[scored]).item()
    accuracy = (logits.argmax(-1)[scored] == targets[scored]).float().mean().item()
    return loss, accuracy, int(scored.sum())


MAMBA_SSM_CONFIG = {
    "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 32,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 32, "chunk_size": 16},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}


def write_mamba_ssm_folder(folder: Path) -> LanguageModel:
    """A mamba_ssm checkpoint folder (config.json + pytorch_model.bin, names as MambaLMHeadModel's) of a tiny
    randomly initialised Mamba-2; returns the model whose weights it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(spec_from_mamba_ssm_config(MAMBA_SSM_CONFIG)).eval()
    (folder / "config.json").write_text(json.dumps(MAMBA_SSM_CONFIG))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): equal snapshots mean nothing was written or added."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def is_close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
