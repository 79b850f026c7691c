"""Training a spec on its data task with Lightning: budget -> steps, checkpoints, exact resume, result.json.

``train(spec, out_dir=...)`` leaves in ``out_dir``: ``spec.yaml`` (the spec as run: data, seed and step count
resolved, data files absolute), ``checkpoints/last.ckpt`` (saved after every validation),
``logs/version_<k>/metrics.csv`` (one per call) and ``result.json``.
Calling it again on the same ``out_dir`` with the same arguments continues from ``last.ckpt`` and ends with the
weights an uninterrupted run would have (a run that already finished is returned from its result.json, which is
left as it is); an ``out_dir`` holding a different spec is refused untouched.
``train(..., devices=N)`` trains data-parallel (Lightning's DDP) on N devices; see ``train``.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from archspec.accounting import steps_for_budget
from archspec.data import TaskDataModule, parse_data_config, task_vocab_size
from archspec.data.config import with_absolute_paths
from archspec.data.seeding import make_generator
from archspec.errors import DeviceError, RunDirError, SpecError
from archspec.fileio import write_atomic
from archspec.lightning_module import LMModule
from archspec.loader import dump_spec, load_spec
from archspec.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, damaged_checkpoint
from archspec.spec import ModelSpec



@dataclass
class TrainResult:
    """What one ``train`` call produced. FLOPs follow ``archspec.accounting`` (training = 3 x forward).

    steps: optimizer steps done in total (resumed runs included); tokens: input positions trained on;
    train_flops: tokens x train FLOPs per token; val_loss / val_accuracy: the final validation;
    best_val_loss: the lowest validation loss in ``history`` (step 0, the untrained model, included);
    history: one record per validation ``{step, tokens, flops, train_loss, val_loss, val_accuracy}`` with
    train_loss the mean since the previous record (None at step 0); tokens_per_second: training tokens of this
    call per second of training wall time (validation excluded); peak_memory_bytes: see ``peak_memory_source``
    ("cuda_max_memory_allocated" on a GPU, "process_peak_rss" on the CPU: the peak resident set of the whole
    process so far); wall_seconds: duration of this call; checkpoint_path: ``out_dir/checkpoints/last.ckpt``.
    """

    steps: int
    tokens: int
    train_flops: int
    val_loss: float | None
    val_accuracy: float | None
    best_val_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_source: str = ""
    wall_seconds: float = 0.0
    checkpoint_path: str = ""
    out_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinities become None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- data order
class ResumableBatches:
    """Shuffled training batches of a map-style dataset that a checkpoint can resume mid-epoch.

    Epoch e visits the items in the order ``randperm(len(dataset))`` drawn from a generator seeded by
    ``(seed, "train-order", e)``, in batches of ``batch_size`` (a last partial batch is dropped, so every
    optimizer step sees the same number of tokens). The position (epoch, batches done) is advanced by
    ``AdvanceBatches`` after each training batch; Lightning saves ``state_dict()`` in checkpoints and
    restores it, so a resumed run continues with exactly the batches an uninterrupted run would see.
    Items are dicts of tensors; batches are their ``default_collate`` (dict of (batch_size, ...) tensors).

    Data-parallel: ``batch_size`` stays the global batch; with ``world_size`` > 1 the process of rank ``rank``
    gets the ``rank``-th of ``world_size`` contiguous equal slices of each global batch (``batch_size //
    world_size`` items), so the ranks together see exactly the batches of a single-device run, and since every
    rank keeps the same position, a checkpoint of rank 0's position resumes all of them.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(f"batch_size: {batch_size} exceeds the {len(dataset)} training examples")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size: {batch_size} is not divisible by world_size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.done = 0

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        if self.done >= len(self):
            self.epoch, self.done = self.epoch + 1, 0
        order = torch.randperm(len(self.dataset), generator=make_generator(self.seed, "train-order", str(self.epoch)))
        batches = order[: len(self) * self.batch_size].view(len(self), self.batch_size)[self.done :]
        if self.world_size > 1:
            shard = self.batch_size // self.world_size
            batches = batches[:, self.rank * shard : (self.rank + 1) * shard]
        yield from DataLoader(self.dataset, batch_sampler=batches.tolist())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "done": self.done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.done = int(state["epoch"]), int(state["done"])


def shard_batches(n_items: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s part of each batch of ``range(n_items)`` taken in order ``batch_size`` at a time (the last
    batch possibly partial, as a ``DataLoader(batch_size=...)`` without shuffling makes them): the ``rank``-th of
    ``world_size`` contiguous parts (``torch.tensor_split``: sizes differ by at most one); empty parts are left out.
    """
    out = []
    for start in range(0, n_items, batch_size):
        part = torch.tensor_split(torch.arange(start, min(start + batch_size, n_items)), world_size)[rank]
        if len(part):
            out.append(part.tolist())
    return out


class AdvanceBatches(Callback):
    """Counts each finished training batch into the position of a ``ResumableBatches``."""

    def __init__(self, batches: ResumableBatches) -> None:
        self.batches = batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batches.done += 1


# --------------------------------------------------------------------------------------------- callbacks
class History(Callback):
    """Records one entry per validation (see ``TrainResult.history``); kept in checkpoints."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, LMModule):
            return
        metrics = trainer.callback_metrics
        self.history.append({
            "step": int(trainer.global_step),
            "tokens": int(pl_module.tokens_seen),
            "flops": int(pl_module.flops_seen),
            "train_loss": pl_module.pop_mean_train_loss(),
            "val_loss": float(metrics["val_loss"]) if "val_loss" in metrics else None,
            "val_accuracy": float(metrics["val_accuracy"]) if "val_accuracy" in metrics else None,
        })

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(record) for record in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(record) for record in state_dict["history"]]


class ValidateAtEnd(Callback):
    """Stops the fit right after the last optimizer step, which makes Lightning validate once more there."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class TrainClock(Callback):
    """Wall time of training inside ``fit`` with validation taken out, and the tokens trained meanwhile."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0
        self._start: float | None = None
        self._tokens_at_start = 0

    def _tick(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._start = time.perf_counter()
        self._tokens_at_start = getattr(pl_module, "tokens_seen", 0)

    def _tock(self, pl_module: pl.LightningModule) -> None:
        if self._start is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._start
        self.tokens += getattr(pl_module, "tokens_seen", 0) - self._tokens_at_start
        self._start = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tick(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tock(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._tick(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tock(pl_module)


@contextmanager
def ctrl_c_as_keyboard_interrupt(trainer: pl.Trainer) -> Iterator[None]:
    """Lightning answers Ctrl-C inside ``fit``/``validate`` with ``sys.exit(1)``; raise KeyboardInterrupt instead, so
    callers such as an Optuna trial see an interruption (and record it) rather than an exit."""
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        raise KeyboardInterrupt from None


# --------------------------------------------------------------------------------------------- run directory
def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [f"{prefix or '<spec>'}: {a!r} -> {b!r}"]


def _as_run(spec: ModelSpec) -> ModelSpec:
    """``spec`` without the settings that change how a run computes but not what (activation checkpointing), and
    with its data files absolute (``with_absolute_paths``: relative ones against the working directory, as a
    spec.yaml written before paths were stored absolute has them), so that a run may be resumed with them
    switched, or with the relative paths it was started with."""
    training = spec.training.model_copy(update={"activation_checkpointing": False})
    return spec.model_copy(update={"training": training, "data": with_absolute_paths(spec.data)})


def check_out_dir(out_dir: Path, spec: ModelSpec) -> None:
    """Raise RunDirError when ``out_dir`` is a file or holds a spec.yaml that does not load or differs from ``spec``
    (beyond settings that do not change the results, such as activation checkpointing)."""
    path = out_dir / "spec.yaml"
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"out_dir: {out_dir} is a file, not a folder; use another out_dir")
    if not path.exists():
        return
    try:
        previous = load_spec(path)
    except SpecError as exc:
        raise RunDirError(f"out_dir: {out_dir} holds a spec.yaml that does not load ({exc}); "
                          "use another out_dir or remove it") from exc
    if _as_run(previous) != _as_run(spec):
        diff = _differences(_as_run(previous).model_dump(), _as_run(spec).model_dump())
        shown = "; ".join(diff[:5]) + (f"; ... {len(diff) - 5} more" if len(diff) > 5 else "")
        raise RunDirError(f"out_dir: {out_dir} already holds a run of a different spec ({shown}); "
                          "use another out_dir or remove it")


def claim_out_dir(out_dir: Path, spec: ModelSpec) -> None:
    """Create ``out_dir`` and write ``spec.yaml`` with the data files absolute (``with_absolute_paths``), so that
    the run can be evaluated or resumed from any working directory; if one is there already it must hold the
    same spec.

    Raises RunDirError (nothing in ``out_dir`` is changed) when ``check_out_dir`` refuses it.
    """
    check_out_dir(out_dir, spec)
    path = out_dir / "spec.yaml"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, dump_spec(spec.model_copy(update={"data": with_absolute_paths(spec.data)})))


RESTART_HINT = "delete it or pass --no-resume (resume=False) to start the run over"


def check_last_checkpoint(out_dir: Path, max_steps: int, *, hint: str = RESTART_HINT) -> None:
    """Raise RunDirError when a run in ``out_dir`` that has not finished ``max_steps`` steps would resume from a
    damaged ``checkpoints/last.ckpt`` (truncated or not a checkpoint); ``hint`` says what to do about it."""
    last = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not last.exists() or _finished_result(out_dir, max_steps) is not None:
        return
    if damaged_checkpoint(last):
        raise RunDirError(f"out_dir: {last} is damaged (truncated or not a checkpoint); {hint}")


def _finished_result(out_dir: Path, max_steps: int) -> TrainResult | None:
    """The stored result of a run in ``out_dir`` that reached ``max_steps`` and was written after ``last.ckpt``
    (not one left over from before a ``resume=False`` restart), or None."""
    path, last = out_dir / "result.json", out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    try:
        if path.stat().st_mtime_ns < last.stat().st_mtime_ns:
            return None
        result = TrainResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return result if result.steps >= max_steps else None


# --------------------------------------------------------------------------------------------- resolution
def resolve_run_spec(
    spec: ModelSpec, *, data: Any = None, max_steps: int | None = None,
    budget_flops: float | None = None, seed: int | None = None,
) -> ModelSpec:
    """The spec as it will run: ``data`` in place of ``spec.data``, the seed, and ``training.max_steps`` fixed.

    Steps: ``max_steps`` if given; else ``steps_for_budget`` of ``budget_flops`` (or ``training.budget_flops``)
    at ``batch_size * accumulate_grad_batches`` sequences of ``data.seq_len`` tokens per step; else
    ``training.max_steps``. ``training.budget_flops`` keeps the budget that set the steps (None otherwise).
    """
    if max_steps is not None and budget_flops is not None:
        raise ValueError("max_steps, budget_flops: pass at most one of them")
    if data is None:
        data = spec.data
    elif isinstance(data, dict):
        data = parse_data_config(data)
    if data is None:
        raise ValueError("data: the spec has no data section; pass data=<a DataConfig>")
    if task_vocab_size(data) > spec.vocab_size:
        raise ValueError(f"data: the {data.task} task needs vocab_size >= {task_vocab_size(data)}, "
                         f"the spec has vocab_size {spec.vocab_size}")
    cfg = spec.training
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
        budget = None
    else:
        budget = budget_flops if budget_flops is not None else cfg.budget_flops
        if budget is not None:
            batch = cfg.batch_size * cfg.accumulate_grad_batches
            max_steps = steps_for_budget(spec, budget, batch, data.seq_len)
        else:
            max_steps = cfg.max_steps
    seed = cfg.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    training = cfg.model_copy(update={"max_steps": max_steps, "budget_flops": budget, "seed": seed})
    return spec.model_copy(update={"training": training, "data": data})


def uses_cuda(accelerator: str) -> bool:
    """Whether the Trainer's ``accelerator`` ("auto", "cpu", "gpu" or "cuda") puts the run on a CUDA device."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_devices(accelerator: str, devices: int = 1) -> None:
    """Raise DeviceError when ``accelerator`` asks for CUDA on a machine without it, or for more CUDA devices
    than are visible; before anything is trained or written."""
    if accelerator not in ("gpu", "cuda") and not (devices > 1 and uses_cuda(accelerator)):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--accelerator {accelerator}: no CUDA device is available; use --accelerator cpu")
    if devices > count:
        raise DeviceError(f"--devices {devices}: only {count} CUDA device{'s' * (count != 1)} visible")


def resolve_precision(precision: str, accelerator: str) -> str:
    """``"auto"`` -> ``"bf16-mixed"`` when training on a CUDA device with bf16 support, else ``"32-true"``."""
    if precision != "auto":
        return precision
    cuda = uses_cuda(accelerator) and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def _peak_memory(on_cuda: bool) -> tuple[int, str]:
    if on_cuda:
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


def _prepare_out_dir(out: Path, run_spec: ModelSpec, datamodule: TaskDataModule, resume: bool) -> TrainResult | None:
    """Refuse a batch larger than the training set (SpecError, before ``out`` is touched), claim ``out``, and return
    the stored result of a run there that already finished (when resuming), else None after checking that a
    checkpoint to resume from is not damaged (RunDirError)."""
    cfg = run_spec.training
    n_train = len(datamodule.train_dataset)
    if n_train < cfg.batch_size:
        raise SpecError(f"{cfg.batch_size} exceeds the {n_train} training examples of the {run_spec.data.task} task",
                        field="training.batch_size", hint="lower it or raise data.num_train")
    claim_out_dir(out, run_spec)  # once the data fits the batch: a refused spec leaves no spec.yaml behind
    if not resume:
        return None
    finished = _finished_result(out, cfg.max_steps)
    if finished is None:
        check_last_checkpoint(out, cfg.max_steps)
    return finished


# --------------------------------------------------------------------------------------------- train
def train(
    spec: ModelSpec,
    *,
    out_dir: str | os.PathLike[str],
    data: Any = None,
    max_steps: int | None = None,
    budget_flops: float | None = None,
    seed: int | None = None,
    callbacks: Sequence[Callback] = (),
    accelerator: str = "auto",
    devices: int = 1,
    resume: bool = True,
    progress_bar: bool = True,
    log_every: int = 50,
) -> TrainResult:
    """Train ``spec`` on ``data`` (default ``spec.data``) for the resolved steps; see ``resolve_run_spec``.

    Validates the untrained model (step 0), every ``training.val_every_steps`` optimizer steps and after the
    last step (``training.val_batches`` batches each). ``resume`` continues from ``out_dir/checkpoints/
    last.ckpt`` when present; ``resume=False`` starts over in the same ``out_dir``. ``callbacks`` are added to
    the Trainer (e.g. an Optuna pruning callback monitoring "val_loss"). Returns the TrainResult, also written
    to ``out_dir/result.json``. Raises RunDirError if ``out_dir`` holds a different spec or a damaged ``last.ckpt``
    to resume from, SpecError when ``training.batch_size`` exceeds the training examples (before ``out_dir`` is
    touched), ValueError on bad arguments.

    ``devices=N`` > 1 trains data-parallel with Lightning's DDP strategy on N GPUs (N processes with the gloo
    backend on the CPU). ``training.batch_size`` stays the global batch (SpecError unless N divides it): rank r
    trains on the r-th contiguous slice of every global batch of the single-device data order, and the loss of
    each rank is its summed cross-entropy over the scored tokens of the whole global batch (times N, since DDP
    averages gradients), so a step uses the gradient of the single-device step. Validation batches are sliced
    the same way and its metrics are token-weighted over all ranks, so steps, tokens, FLOPs, budgets and losses
    are comparable across device counts (equal up to floating-point summation order).
    Launching: the run folder checks and ``spec.yaml`` happen here, then ``train`` starts N fresh processes
    itself (``torch.multiprocessing``, "spawn") and waits for them; each sets the environment of Lightning's
    ``LightningEnvironment`` for externally launched processes (``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)
    and runs the step-0 validation and the fit with ``strategy="ddp"``. Neither Lightning launcher fits: "ddp"
    re-runs ``sys.argv`` as the other ranks (pytest, a notebook kernel), and "ddp_spawn" would run the step-0
    ``validate`` and the ``fit`` in two sets of processes and bring back only rank 0's weights and metrics (not
    the History, counters or clock). The same path serves the CLI and in-process callers (tests, notebooks); a
    script calling it needs the ``if __name__ == "__main__":`` guard that every "spawn" start method needs.
    Rank 0 writes result.json, the metrics and (through Lightning) the checkpoints; the returned TrainResult is
    read back from result.json (``wall_seconds`` includes starting the processes; ``peak_memory_bytes`` is rank
    0's). ``callbacks`` must then be picklable: each process runs its own copy, and their state is not brought
    back. Each process runs ``max(1, torch.get_num_threads() // N)`` CPU threads. A worker that fails makes this
    raise RuntimeError (with the worker's traceback); Ctrl-C in a worker raises KeyboardInterrupt here.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices: expected a positive int, got {devices!r}")
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"accelerator: expected 'auto', 'cpu' or 'gpu', got {accelerator!r}")
    check_devices(accelerator, devices)
    started = time.perf_counter()
    run_spec = resolve_run_spec(spec, data=data, max_steps=max_steps, budget_flops=budget_flops, seed=seed)
    cfg = run_spec.training
    out = Path(out_dir)
    check_out_dir(out, run_spec)
    if devices > 1:
        return _train_distributed(run_spec, out, callbacks=callbacks, accelerator=accelerator, devices=devices,
                                  resume=resume, progress_bar=progress_bar, log_every=log_every)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = TaskDataModule(run_spec.data, cfg.batch_size, cfg.seed)
    datamodule.setup("fit")
    module = LMModule(run_spec)  # built before the folder is claimed: a model that cannot be built changes nothing
    finished = _prepare_out_dir(out, run_spec, datamodule, resume)
    if finished is not None:
        return finished
    train_batches = ResumableBatches(datamodule.train_dataset, cfg.batch_size, cfg.seed)
    val_loader = datamodule.val_dataloader()
    on_cuda = uses_cuda(accelerator)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    return _fit(run_spec, out, module, train_batches, val_loader, callbacks=callbacks, accelerator=accelerator,
                devices=devices, resume=resume, progress_bar=progress_bar, log_every=log_every,
                elapsed=lambda: time.perf_counter() - started)


def _fit(
    run_spec: ModelSpec, out: Path, module: LMModule, train_batches: ResumableBatches, val_loader: DataLoader, *,
    callbacks: Sequence[Callback], accelerator: str, devices: int, resume: bool, progress_bar: bool,
    log_every: int, elapsed: Callable[[], float], distributed: bool = False,
) -> TrainResult:
    """The step-0 validation (unless resuming), the fit and the TrainResult (written to result.json by rank 0)."""
    cfg = run_spec.training
    ckpt_dir = out / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    precision = resolve_precision(cfg.precision, accelerator)
    on_cuda = uses_cuda(accelerator)
    history, clock = History(), TrainClock()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST_CHECKPOINT.removesuffix(".ckpt"), monitor=None,
                                 save_top_k=1, save_last=False, enable_version_counter=False)
    common = dict(
        accelerator="gpu" if accelerator == "cuda" else accelerator,
        devices=devices,
        precision=precision,
        limit_val_batches=cfg.val_batches if cfg.val_batches is not None else 1.0,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=out,
        use_distributed_sampler=False,  # the data loaders slice the data themselves
    )

    def ddp() -> dict[str, Any]:  # a fresh strategy and environment for each Trainer
        return dict(strategy=DDPStrategy(), plugins=[LightningEnvironment()]) if distributed else {}

    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path is None:  # step 0: the untrained model, seen by History only (not by the caller's callbacks)
        step0 = pl.Trainer(**common, **ddp(), callbacks=[history], logger=False, enable_checkpointing=False)
        with ctrl_c_as_keyboard_interrupt(step0):
            step0.validate(module, dataloaders=val_loader, verbose=False)
    trainer = pl.Trainer(
        **common,
        **ddp(),
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.grad_clip,
        gradient_clip_algorithm="norm",
        val_check_interval=cfg.val_every_steps * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[AdvanceBatches(train_batches), history, clock, ValidateAtEnd(), *callbacks, checkpoint],
        logger=CSVLogger(save_dir=out, name="logs"),
        log_every_n_steps=max(1, min(log_every, len(train_batches))),
    )
    with ctrl_c_as_keyboard_interrupt(trainer):
        trainer.fit(module, train_dataloaders=train_batches, val_dataloaders=val_loader, ckpt_path=ckpt_path)

    records = history.history
    final = records[-1] if records else {}
    val_losses = [r["val_loss"] for r in records if r["val_loss"] is not None and math.isfinite(r["val_loss"])]
    peak, peak_source = _peak_memory(on_cuda)
    result = TrainResult(
        steps=int(trainer.global_step),
        tokens=int(module.tokens_seen),
        train_flops=int(module.flops_seen),
        val_loss=final.get("val_loss"),
        val_accuracy=final.get("val_accuracy"),
        best_val_loss=min(val_losses) if val_losses else None,
        history=[dict(r) for r in records],
        tokens_per_second=clock.tokens / clock.seconds if clock.seconds > 0 and clock.tokens > 0 else None,
        peak_memory_bytes=peak,
        peak_memory_source=peak_source,
        wall_seconds=elapsed(),
        checkpoint_path=str(last),
        out_dir=str(out),
    )
    if trainer.is_global_zero:
        write_atomic(out / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------- data parallel
def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections as their local port (Linux's default if unreadable)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for the ranks' rendezvous, taken below the ephemeral
    range: rank 1 retries its connect until rank 0 listens, and a connect to a free port inside that range can be
    given the same port as its own (a TCP self-connect), which then holds it and rank 0's bind fails."""
    low = _ephemeral_low()
    draw = random.SystemRandom()
    for _ in range(100):
        port = draw.randrange(max(1024, low // 2), max(1025, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_INTERRUPTED = 130  # a worker's exit status after Ctrl-C (128 + SIGINT)


def _train_distributed(
    run_spec: ModelSpec, out: Path, *, callbacks: Sequence[Callback], accelerator: str, devices: int,
    resume: bool, progress_bar: bool, log_every: int,
) -> TrainResult:
    """``train`` with ``devices`` > 1: the checks and ``spec.yaml`` here, then one spawned process per rank."""
    import torch.multiprocessing as mp

    cfg = run_spec.training
    if cfg.batch_size % devices:
        raise SpecError(f"{cfg.batch_size} is not divisible by the {devices} devices (it is the global batch, "
                        "split evenly over the devices)", field="training.batch_size",
                        hint=f"use a multiple of {devices} or another number of devices")
    datamodule = TaskDataModule(run_spec.data, cfg.batch_size, cfg.seed)
    datamodule.setup("fit")
    n_val = len(datamodule.val_dataset)
    if n_val < devices:
        raise SpecError(f"{n_val} validation examples cannot give each of the {devices} devices one",
                        field="data.num_val", hint=f"raise it to at least {devices}")
    finished = _prepare_out_dir(out, run_spec, datamodule, resume)
    del datamodule
    if finished is not None:
        return finished

    threads = max(1, torch.get_num_threads() // devices)
    args = (run_spec, str(out), tuple(callbacks), accelerator, devices, resume, progress_bar, log_every,
            _free_port(), threads, time.time())
    context = mp.start_processes(_distributed_worker, args=args, nprocs=devices, join=False, start_method="spawn")
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        if exc.exit_code == _INTERRUPTED:
            raise KeyboardInterrupt from None
        raise RuntimeError(f"data-parallel training: {exc}") from None
    except mp.ProcessRaisedException as exc:
        raise RuntimeError(f"data-parallel training: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too: let them stop, then end any that do not
        _stop(context.processes)
        raise
    return TrainResult(**json.loads((out / "result.json").read_text()))


def _stop(processes: Sequence[Any], grace_seconds: float = 10.0) -> None:
    """Wait up to ``grace_seconds`` for ``processes`` (ours) to end, then terminate and finally kill the rest."""
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()


def _distributed_worker(
    rank: int, run_spec: ModelSpec, out: str, callbacks: tuple[Callback, ...], accelerator: str, devices: int,
    resume: bool, progress_bar: bool, log_every: int, port: int, threads: int, wall_start: float,
) -> None:
    """One rank of a data-parallel run (in a process of its own): its data slices, the step-0 validation, the fit."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0", LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(devices))
    torch.set_num_threads(threads)
    try:
        cfg = run_spec.training
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = TaskDataModule(run_spec.data, cfg.batch_size, cfg.seed)
        datamodule.setup("fit")
        train_batches = ResumableBatches(datamodule.train_dataset, cfg.batch_size, cfg.seed,
                                         rank=rank, world_size=devices)
        val_shards = shard_batches(len(datamodule.val_dataset), cfg.batch_size, rank, devices)
        val_loader = DataLoader(datamodule.val_dataset, batch_sampler=val_shards)
        module = LMModule(run_spec)
        _fit(run_spec, Path(out), module, train_batches, val_loader, callbacks=callbacks, accelerator=accelerator,
             devices=devices, resume=resume, progress_bar=progress_bar, log_every=log_every,
             elapsed=lambda: time.time() - wall_start, distributed=True)
    except KeyboardInterrupt:
        sys.exit(_INTERRUPTED)
    finally:
        # Lightning leaves the process group up; a rank that exits with it can abort at interpreter shutdown
        # ("terminate called without an active exception": gloo's threads outlive the interpreter)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
