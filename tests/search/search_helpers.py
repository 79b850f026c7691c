"""Helpers of the search tests: tiny search files and a stand-in trainer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from archspec.accounting import account, steps_for_budget
from archspec.training import TrainResult

TINY_BASE: dict[str, Any] = {
    "name": "tiny-base",
    "d_model": 32,
    "vocab_size": 16,
    "blocks": {
        "M": {"type": "ssd", "d_state": 8, "head_dim": 32, "expand": 1, "chunk_size": 16},
        "A": {"type": "attention", "n_heads": 1},
    },
    "layout": "M A",
    "training": {"batch_size": 4, "warmup_steps": 1, "val_batches": 1},
}
TINY_TASK = {"task": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64, "num_val": 8}


def tiny_search(**fields: Any) -> dict[str, Any]:
    """A search over a 2-layer model that trains 3 or 4 steps per trial; ``fields`` replace top-level keys."""
    search = {
        "name": "tiny",
        "base": TINY_BASE,
        "task": TINY_TASK,
        "budget_flops": 1.2e7,
        "space": {
            "attention_ratio": {"low": 0.0, "high": 0.5, "step": 0.5},
            "d_state": {"choices": [8, 16], "path": "blocks.M.d_state"},
        },
        "objectives": ["val_loss"],
        "sampler": {"type": "grid", "seed": 0},
        "pruner": {"type": "none"},
        "val_checks": 2,
        "n_trials": 4,
    }
    search.update(fields)
    return search


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fake_train(spec, *, out_dir, data, budget_flops, seed, **_: Any) -> TrainResult:
    """Stands in for archspec.training.train: spends the budget on paper, loss falls with the parameters."""
    batch = spec.training.batch_size * spec.training.accumulate_grad_batches
    steps = steps_for_budget(spec, budget_flops, batch, data.seq_len)
    acc = account(spec, data.seq_len)
    tokens = steps * batch * data.seq_len
    loss = 3.0 - math.log(acc.params) / 10 + 0.01 * seed
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return TrainResult(
        steps=steps, tokens=tokens, train_flops=int(tokens * acc.train_flops_per_token), val_loss=loss,
        val_accuracy=0.5, best_val_loss=loss, history=[{"step": steps, "val_loss": loss}],
        tokens_per_second=1000.0, peak_memory_bytes=1, wall_seconds=0.0, out_dir=str(out_dir),
    )
