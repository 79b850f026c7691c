"""Opening a trained model read-only: an ``archspec train`` run folder or a mamba_ssm checkpoint folder.

``open_run(path)`` returns the spec and the model with its trained weights, for ``archspec eval`` and
``archspec generate``. A run folder holds ``spec.yaml`` (the spec as run) and ``checkpoints/last.ckpt`` (the
Lightning checkpoint: the LMModule's state dict under ``state_dict``, its keys prefixed with ``model.``); the
weights are read with ``torch.load(weights_only=True)``, without a Lightning Trainer. A mamba_ssm folder holds
``config.json`` and ``pytorch_model.bin`` (see ``archspec.checkpoint``); its spec has no data section.
Nothing in the folder is written or changed.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from archspec.builder import LanguageModel, build_model
from archspec.spec import ModelSpec
from archspec.errors import RunDirError

__all__ = ["CHECKPOINT_DIR", "LAST_CHECKPOINT", "MODEL_PREFIX", "OpenedRun", "damaged_checkpoint", "open_run"]

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"

MODEL_PREFIX = "model."
"""LMModule keeps the LanguageModel as ``self.model``: its parameters are ``model.<name>`` in the checkpoint."""


@dataclass
class OpenedRun:
    """A trained model opened from ``path``.

    kind: "run" (an ``archspec train`` folder) or "mamba_ssm"; spec: the run's spec.yaml (or the spec
    equivalent to the mamba_ssm config); spec_path: the file the spec came from; checkpoint: the weight file;
    step: optimizer steps the checkpoint was saved after (None for mamba_ssm).
    The model is on the CPU in eval mode.
    """

    path: Path
    kind: Literal["run", "mamba_ssm"]
    spec: ModelSpec
    spec_path: Path
    model: LanguageModel
    checkpoint: Path
    step: int | None = None


def open_run(path: str | os.PathLike[str]) -> OpenedRun:
    """Open a run folder (spec.yaml + checkpoints/last.ckpt) or a mamba_ssm folder (config.json +
    pytorch_model.bin). Raises RunDirError naming the folder or file when it is missing, has no checkpoint, or
    holds one that is damaged or does not fit its spec; SpecError when spec.yaml does not load."""
    root = Path(path)
    if not root.exists():
        raise RunDirError(f"{root}: no such run folder")
    if not root.is_dir():
        raise RunDirError(f"{root}: is a file; expected a run folder (spec.yaml + {CHECKPOINT_DIR}/{LAST_CHECKPOINT}) "
                          "or a mamba_ssm checkpoint folder (config.json + pytorch_model.bin)")
    if (root / "spec.yaml").is_file():
        return _open_archspec_run(root)
    if (root / "config.json").is_file():
        return _open_mamba_ssm(root)
    raise RunDirError(f"{root}: holds neither spec.yaml (a run of archspec train) nor config.json (a mamba_ssm "
                      "checkpoint)")


def damaged_checkpoint(path: Path) -> bool:
    """Whether the checkpoint file ``path`` is truncated or not a checkpoint at all (torch.save writes a zip
    archive, whose directory sits at its end)."""
    return not zipfile.is_zipfile(path)


def _open_archspec_run(root: Path) -> OpenedRun:
    from archspec.loader import load_spec

    spec_path = root / "spec.yaml"
    spec = load_spec(spec_path)
    last = root / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not last.is_file():
        raise RunDirError(f"{root}: has no checkpoint ({last} is missing); train it first: "
                          f"archspec train {spec_path} --out {root}")
    if damaged_checkpoint(last):
        raise RunDirError(f"{last}: is damaged (truncated or not a checkpoint)")
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise RunDirError(f"{last}: cannot be loaded ({_one_line(err)})") from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise RunDirError(f"{last}: is not a Lightning checkpoint of archspec (no state_dict)")
    weights = {key[len(MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}
    model = build_model(spec)
    _load_weights(model, weights, last, spec_path)
    step = checkpoint.get("global_step")
    return OpenedRun(path=root, kind="run", spec=spec, spec_path=spec_path, model=model.eval(), checkpoint=last,
                     step=int(step) if isinstance(step, int) else None)


def _open_mamba_ssm(root: Path) -> OpenedRun:
    from archspec.checkpoint import load_mamba_ssm_checkpoint

    try:
        spec, model = load_mamba_ssm_checkpoint(root)
    except ValueError as err:  # a file missing or damaged, a config archspec cannot represent
        text = _one_line(err)
        raise RunDirError(text.removeprefix("dir_or_files: ") if str(root) in text else f"{root}: {text}") from err
    return OpenedRun(path=root, kind="mamba_ssm", spec=spec, spec_path=root / "config.json", model=model.eval(),
                     checkpoint=root / "pytorch_model.bin")


def _load_weights(model: LanguageModel, weights: dict[str, Any], checkpoint: Path, spec_path: Path) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        parts = [f"missing {_some(missing)}"] if missing else []
        parts += [f"unexpected {_some(unexpected)}"] if unexpected else []
        raise RunDirError(f"{checkpoint}: does not hold the model of {spec_path} ({'; '.join(parts)})")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # shapes that differ from the spec's
        raise RunDirError(f"{checkpoint}: does not hold the model of {spec_path} ({_one_line(err)})") from err


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _one_line(err: BaseException) -> str:
    """The error's message on one line (Lightning and torch messages span several), at most 300 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
