"""Evaluating a trained model on a data task: loss, masked accuracy, perplexity and throughput.

``evaluate(model, data, split=..., batch_size=..., max_batches=..., seed=...)`` computes exactly what training's
validation logs (``LMModule.validation_step`` under Lightning): the loss is the mean cross-entropy over the target
positions that are not -100, the accuracy the share of them where the argmax of the logits is the target, each
pooled over the first ``max_batches`` batches of the split's examples in order (``DataLoader(batch_size,
shuffle=False)``, the last partial batch kept), weighting each batch by its scored positions. With the run's own data
section, seed, ``training.batch_size`` and ``training.val_batches`` it reproduces the run's val_loss / val_accuracy.

``load_data_file(path, vocab_size=...)`` reads another task from YAML: a file with a ``data:`` section (a whole
spec, or only ``data:``) or a bare task config (``task: mqar ...``), validated by the spec schema, with errors naming
the file, line and field; the task must fit the model's vocabulary.
"""

from __future__ import annotations

import math
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader

from archspec.data import DataConfig, make_dataset, task_vocab_size
from archspec.data.metrics import masked_cross_entropy
from archspec.data.sampling import IGNORE_INDEX
from archspec.errors import SpecError
from archspec.loader import load_yaml_tree, read_yaml, validate_model
from archspec.spec import ModelSpec

__all__ = ["EvalResult", "evaluate", "load_data_file", "check_data_fits", "autocast_for"]


@dataclass
class EvalResult:
    """What one evaluation measured.

    split: "train" or "val"; task / seq_len: of the data; batch_size; batches, sequences: evaluated; tokens: input
    positions; scored_tokens: positions with a target (not -100), which loss and accuracy average over; loss: mean
    cross-entropy (nats); accuracy: masked next-token accuracy; perplexity: exp(loss); seconds: wall time of the
    loop; tokens_per_second: input positions per second. loss / accuracy / perplexity are NaN without scored tokens.
    """

    split: str
    task: str
    seq_len: int
    batch_size: int
    batches: int
    sequences: int
    tokens: int
    scored_tokens: int
    loss: float
    accuracy: float
    perplexity: float
    seconds: float
    tokens_per_second: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinities become None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast context Lightning's ``precision`` runs a step under: bf16 / fp16 autocast for "bf16-mixed" /
    "16-mixed", none for "32-true"."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    *,
    split: str = "val",
    batch_size: int,
    max_batches: int | None = None,
    seed: int = 0,
    precision: str = "32-true",
    source: str | None = None,
) -> EvalResult:
    """Loss, accuracy and throughput of ``model`` (a LanguageModel, on its device) on ``split`` of ``data``.

    The examples are ``make_dataset(data, split, seed)`` in order, ``batch_size`` per batch, the first
    ``max_batches`` batches (None: all). ``precision`` as Lightning's ("32-true", "bf16-mixed", "16-mixed").
    A dataset that cannot be made (a missing file, too little data) raises SpecError naming ``source`` (the file
    the data section came from) and ``data.<field>``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches: expected None or a positive int, got {max_batches}")
    dataset = _dataset(data, split, seed, source)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    scored_total = torch.zeros((), dtype=torch.int64, device=device)
    batches = sequences = tokens = 0
    started = time.perf_counter()
    try:
        with autocast_for(precision, device):
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                if max_batches is not None and batches >= max_batches:
                    break
                input_ids = batch["input_ids"].to(device)
                targets = batch["targets"].to(device)
                logits = model(input_ids)
                loss = masked_cross_entropy(logits, targets)  # as LMModule.compute_loss
                scored = targets != IGNORE_INDEX
                n_scored = scored.sum()
                # Lightning pools each batch's mean weighted by its scored positions (batches without any are skipped)
                loss_sum += torch.where(n_scored > 0, loss.double() * n_scored, 0.0)
                correct += ((logits.argmax(dim=-1) == targets) & scored).sum()
                scored_total += n_scored
                batches += 1
                sequences += input_ids.shape[0]
                tokens += input_ids.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    n = int(scored_total)
    loss_value = float(loss_sum) / n if n else math.nan
    return EvalResult(
        split=split, task=data.task, seq_len=data.seq_len, batch_size=batch_size, batches=batches,
        sequences=sequences, tokens=tokens, scored_tokens=n, loss=loss_value,
        accuracy=int(correct) / n if n else math.nan, perplexity=_exp(loss_value), seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 and tokens else None,
    )


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


_NAMED = re.compile(r"(\w+): (.*)", re.S)


def _dataset(data: Any, split: str, seed: int, source: str | None) -> Any:
    try:
        return make_dataset(data, split, seed)
    except (OSError, ValueError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise  # a system error naming its own file: archspec.cli prints it as it is
        named = _NAMED.match(str(err))
        field, message = (f"data.{named.group(1)}", named.group(2)) if named else ("data", str(err))
        if field == "data.split":
            raise
        raise SpecError(message, source=source, field=field) from err


# --------------------------------------------------------------------------------------------- another task
class _DataFile(BaseModel):
    """A file holding only a ``data:`` section."""

    model_config = ConfigDict(extra="forbid")
    data: DataConfig


def load_data_file(path: str | os.PathLike[str], *, vocab_size: int | None = None,
                   model: str = "the model") -> Any:
    """The data config in a YAML file: a bare task config (``task: ...``), a file with only a ``data:`` section,
    or a whole spec (with ``blocks``) whose ``data`` section to take.

    When ``vocab_size`` is given the task's vocabulary must fit it (``task_vocab_size(data) <= vocab_size``, the
    rule of ModelSpec); ``model`` names the model in that error. Raises SpecError naming the file, line and field.
    """
    source = os.path.normpath(os.fspath(path))
    raw, lines = read_yaml(source)
    if isinstance(raw, dict) and "blocks" in raw:
        tree, locs = load_yaml_tree(source)
        data = validate_model(ModelSpec, tree, source=source, linemap=locs).data
        if data is None:
            raise SpecError("missing: the spec has no data section", source=source, field="data",
                            hint="add one, or give a file with only a data section")
    else:
        if isinstance(raw, dict) and "task" in raw and "data" not in raw:  # a bare config: errors name data.<field>
            raw, lines = {"data": raw}, {("data", *key): line for key, line in lines.items()}
        elif not isinstance(raw, dict) or "data" not in raw:
            raise SpecError("expected a data section (data: {task: ...}), a task config (task: ...) or a spec",
                            source=source, line=1)
        locs = {key: (source, line) for key, line in lines.items()}
        data = validate_model(_DataFile, raw, source=source, linemap=locs).data
    if vocab_size is not None:
        check_data_fits(data, vocab_size, model=model, source=source, linemap=locs)
    return data


def check_data_fits(data: Any, vocab_size: int, *, model: str = "the model", source: str | None = None,
                    linemap: dict[Any, Any] | None = None) -> None:
    """Raise SpecError at ``data.vocab_size`` when the task uses ids the model's ``vocab_size`` does not cover."""
    need = task_vocab_size(data)
    if need <= vocab_size:
        return
    linemap = linemap or {}
    where = linemap.get(("data", "vocab_size")) or linemap.get(("data",)) or (source, None)
    raise SpecError(f"the {data.task} task uses {need} token ids, more than the vocab_size {vocab_size} of {model}",
                    source=where[0], line=where[1], field="data.vocab_size",
                    hint=f"use a task with vocab_size at most {vocab_size}")
