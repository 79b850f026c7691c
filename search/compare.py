"""Compare model specs at one training-FLOP budget on the same data and seed.

Every spec trains for ``budget_flops`` training FLOPs (``archspec.training.train`` turns the budget into
steps from the accounting) on the same task (the first spec's ``data`` section, or a given one), with the
same seed, validating at ``val_checks`` equal fractions of the budget so the loss curves share x positions.
The result is a table (markdown, CSV, JSON) of parameters, FLOPs per token, steps, tokens, final validation
loss and accuracy, training throughput, peak memory and decode state / KV-cache bytes at the task's
sequence length, and ``loss_vs_flops.png``.

On the CPU the peak memory is the process's peak resident set, so each spec trains in its own process by
default (``isolate``); on a GPU it is ``torch.cuda.max_memory_allocated`` of the run.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from archspec.accounting import account, human_bytes, human_count, human_flops, steps_for_budget
from archspec.data.config import DataConfig
from archspec.errors import SpecError
from archspec.loader import load_spec, read_yaml, validate_model
from archspec.fileio import write_atomic
from archspec.search.files import csv_text
from archspec.spec import ModelSpec

COLUMNS = (
    ("name", "spec", str),
    ("params", "params", human_count),
    ("fwd_flops_per_token", "fwd FLOPs/token", human_flops),
    ("steps", "steps", str),
    ("tokens", "tokens", human_count),
    ("train_flops", "train FLOPs", human_flops),
    ("val_loss", "val loss", lambda v: f"{v:.4f}"),
    ("val_accuracy", "val acc", lambda v: f"{v:.4f}"),
    ("tokens_per_second", "tokens/s", lambda v: f"{v:,.0f}"),
    ("peak_memory_bytes", "peak memory", human_bytes),
    ("state_bytes", "SSM+conv state", human_bytes),
    ("kv_bytes", "KV cache", human_bytes),
)
"""(row key, markdown header, formatter) of the markdown table."""


@dataclass
class CompareResult:
    """One row per spec (see COLUMNS; plus history and paths), the markdown table and the files written."""

    rows: list[dict[str, Any]]
    markdown: str
    files: list[Path] = field(default_factory=list)


class _TaskFile(BaseModel):
    """A bare data config, validated under the key ``data`` so errors name ``data.<field>``."""

    model_config = ConfigDict(extra="forbid")
    data: DataConfig


def load_task(path: str | Path) -> Any:
    """A data config from a YAML file: a bare config (``task: mqar ...``) or a spec with a ``data`` section."""
    data, linemap = read_yaml(path)
    if isinstance(data, dict) and "task" in data and "blocks" not in data:
        located = {("data", *key): line for key, line in linemap.items()}
        return validate_model(_TaskFile, {"data": data}, source=str(path), linemap=located).data
    spec = load_spec(path)
    if spec.data is None:
        raise SpecError("has no data section and is no data config", source=str(path), field="data")
    return spec.data


def compare(
    spec_paths: Sequence[str | Path],
    *,
    budget_flops: float,
    out_dir: str | Path,
    task: Any = None,
    seed: int = 0,
    val_checks: int = 8,
    accelerator: str = "auto",
    isolate: bool = True,
) -> CompareResult:
    """Train every spec for ``budget_flops`` on the same data and seed; write the table and plots to ``out_dir``.

    task: a DataConfig (default the first spec's data). Runs go to ``out_dir/runs/<name>`` and resume there
    when interrupted. Raises SpecError for a spec that does not load, RunDirError (before training anything) when
    ``out_dir/runs/<name>`` holds a run of another spec, budget, task or seed or a damaged ``last.ckpt`` to resume
    from, ValueError for bad arguments.
    """
    if not spec_paths:
        raise ValueError("spec_paths: expected at least one spec")
    if not budget_flops > 0 or not math.isfinite(budget_flops):
        raise ValueError(f"budget_flops: expected a positive finite number, got {budget_flops}")
    if val_checks < 1:
        raise ValueError(f"val_checks: expected at least 1, got {val_checks}")
    specs = [load_spec(p) for p in spec_paths]
    data = task if task is not None else specs[0].data
    if data is None:
        raise ValueError(f"task: {spec_paths[0]} has no data section; pass task (--task FILE)")
    out = Path(out_dir)
    names = _unique_names([s.name for s in specs])
    from archspec.training import check_last_checkpoint, check_out_dir, resolve_run_spec

    for spec, path in zip(specs, spec_paths):
        _check_one_step_fits(spec, data, budget_flops, str(path))
    run_specs = [_prepare(spec, data, budget_flops, seed, val_checks) for spec in specs]
    for name, run_spec in zip(names, run_specs):  # refuse, before training anything, earlier runs of another
        run_dir = out / "runs" / name            # budget, task or seed and damaged checkpoints to resume from
        resolved = resolve_run_spec(run_spec, data=data, budget_flops=budget_flops, seed=seed)
        check_out_dir(run_dir, resolved)
        check_last_checkpoint(run_dir, resolved.training.max_steps, hint=f"delete it to train {name} over")
    rows = []
    for name, run_spec, path in zip(names, run_specs, spec_paths):
        result = _train(run_spec, data, out / "runs" / name, budget_flops, seed, accelerator, isolate)
        rows.append(_row(name, str(path), run_spec, data, result))
    markdown = _markdown(rows, budget_flops, data)
    files = [out / "compare.md", out / "compare.csv", out / "compare.json", out / "loss_vs_flops.png"]
    write_atomic(files[0], markdown + "\n")
    write_atomic(files[1], csv_text([{k: v for k, v in r.items() if k != "history"} for r in rows]))
    write_atomic(files[2], json.dumps({"budget_flops": budget_flops, "task": data.model_dump(mode="json"),
                                       "seed": seed, "rows": rows}, indent=2) + "\n")
    _plot(rows, budget_flops, files[3])
    return CompareResult(rows=rows, markdown=markdown, files=files)


def _unique_names(names: list[str]) -> list[str]:
    if len(set(names)) == len(names):
        return names
    return [f"{i}-{n}" for i, n in enumerate(names)]


def _check_one_step_fits(spec: ModelSpec, data: Any, budget_flops: float, source: str) -> None:
    """SpecError when one optimizer step of ``spec`` on ``data`` costs more than the whole budget: it would train
    one step anyway and spend more than the others, so the comparison would not be at equal FLOPs."""
    batch = spec.training.batch_size * spec.training.accumulate_grad_batches
    step = account(spec.model_copy(update={"data": data}), data.seq_len).train_flops_per_token * batch * data.seq_len
    if step > budget_flops:
        raise SpecError(f"one optimizer step ({batch} x {data.seq_len} tokens) costs {human_flops(step)}, more than "
                        f"the budget of {human_flops(budget_flops)}", source=source, field="training.batch_size",
                        hint=f"raise --budget to at least {step:.3g} or lower the batch size")


def _prepare(spec: ModelSpec, data: Any, budget_flops: float, seed: int, val_checks: int) -> ModelSpec:
    """The spec with the shared data, budget, seed and a validation every 1/val_checks of its steps."""
    batch = spec.training.batch_size * spec.training.accumulate_grad_batches
    steps = steps_for_budget(spec.model_copy(update={"data": data}), budget_flops, batch, data.seq_len)
    training = spec.training.model_copy(
        update={"budget_flops": budget_flops, "seed": seed, "val_every_steps": max(1, math.ceil(steps / val_checks))}
    )
    return spec.model_copy(update={"training": training, "data": data})


def _train(
    spec: ModelSpec, data: Any, run_dir: Path, budget: float, seed: int, accelerator: str, isolate: bool
) -> dict[str, Any]:
    """The TrainResult of one run as a dict; in a fresh process when ``isolate`` (its result.json is read)."""
    kwargs = dict(data=data, budget_flops=budget, seed=seed, accelerator=accelerator, progress_bar=False)
    if not isolate:
        from archspec.training import train

        return train(spec, out_dir=run_dir, **kwargs).to_dict()
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=_train_child, args=(spec, run_dir, kwargs), name=f"archspec-compare-{spec.name}")
    proc.start()
    proc.join()
    if proc.exitcode == INTERRUPTED:
        raise KeyboardInterrupt
    result_file = run_dir / "result.json"
    if proc.exitcode != 0 or not result_file.exists():
        raise RunFailed(f"compare: training {spec.name} stopped (exit status {proc.exitcode}; its error is above); "
                        f"the runs that finished stay in {run_dir.parent}, and the same command continues from them")
    return json.loads(result_file.read_text())


class RunFailed(RuntimeError):
    """A spec's training process of ``compare`` ended without a result (it printed why)."""


INTERRUPTED = 130  # exit status of a training process stopped with Ctrl-C (128 + SIGINT)


def _train_child(spec: ModelSpec, run_dir: Path, kwargs: dict) -> None:
    """One spec's training in its own process: a mistake in the spec, its run folder or the device ends it with
    one ``error:`` line and exit status 2, Ctrl-C with 130; anything else with its traceback."""
    from archspec.errors import DeviceError, RunDirError
    from archspec.search.cli import quiet_training_logs
    from archspec.training import train

    quiet_training_logs()
    try:
        train(spec, out_dir=run_dir, **kwargs)
    except (SpecError, RunDirError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def _row(name: str, path: str, spec: ModelSpec, data: Any, result: dict) -> dict[str, Any]:
    acc = account(spec, data.seq_len)
    return {
        "name": name,
        "path": path,
        "params": acc.params,
        "non_embedding_params": acc.non_embedding_params,
        "fwd_flops_per_token": acc.fwd_flops_per_token,
        "train_flops_per_token": acc.train_flops_per_token,
        "steps": result["steps"],
        "tokens": result["tokens"],
        "train_flops": result["train_flops"],
        "val_loss": result["val_loss"],
        "val_accuracy": result["val_accuracy"],
        "best_val_loss": result["best_val_loss"],
        "tokens_per_second": result["tokens_per_second"],
        "peak_memory_bytes": result["peak_memory_bytes"],
        "peak_memory_source": result.get("peak_memory_source", ""),
        "state_bytes": sum(layer.state_bytes for layer in acc.layers),
        "kv_bytes": sum(layer.kv_bytes for layer in acc.layers),
        "decode_state_bytes": acc.decode_state_bytes(batch=1, dtype_bytes=2, seq_len=data.seq_len),
        "seq_len": data.seq_len,
        "wall_seconds": result["wall_seconds"],
        "out_dir": result.get("out_dir", ""),
        "history": result["history"],
    }


def _markdown(rows: list[dict[str, Any]], budget: float, data: Any) -> str:
    head = (f"Budget {human_flops(budget)} training FLOPs per spec, task {data.task} (seq_len {data.seq_len}); "
            f"decode state for one sequence of {data.seq_len} tokens, bf16 activations.")
    lines = [head, "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    for row in rows:
        cells = [fmt(row[key]) if row[key] is not None else "-" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for row in rows:
        points = [h for h in row["history"] if h.get("val_loss") is not None]
        flops = [h["flops"] for h in points]
        ax_loss.plot(flops, [h["val_loss"] for h in points], "o-", label=row["name"], markersize=3)
        ax_acc.plot(flops, [h.get("val_accuracy") for h in points], "o-", label=row["name"], markersize=3)
    for ax, what in ((ax_loss, "validation loss"), (ax_acc, "validation accuracy")):
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(what)
        ax.axvline(budget, color="gray", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"equal budget: {human_flops(budget)} training FLOPs")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buf.getvalue())
