"""What a search leaves behind: results table, best spec(s), plots.

``write_report(study, search, out_dir)`` writes (atomically, so a reader never sees half a file):

- ``trials.csv`` / ``trials.json``: one row per trial (number, state, objective values, searched values,
  layout and costs, training results, the reason of an infeasible trial, the error of a failed one);
- ``best.yaml`` (one objective): the best trial's complete spec; ``pareto/trial-<n>.yaml`` and
  ``pareto.csv`` / ``pareto.json`` (several objectives): the Pareto set;
- PNGs (matplotlib, Agg): ``objective_vs_attention.png``, ``history.png``, ``importance.png`` and, with
  two or more objectives, ``pareto.png``.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from archspec.loader import dump_spec, spec_from_dict
from archspec.fileio import write_atomic
from archspec.search.files import csv_text
from archspec.search.searchspec import RESULT_ATTRS, SearchSpec

ATTR_COLUMNS = (
    "layout",
    "n_layers",
    "attention_share",
    "mlp_share",
    "params",
    "non_embedding_params",
    "train_flops_per_token",
    "decode_state_bytes",
    *RESULT_ATTRS,
    "infeasible",
    "error",
)
"""User attrs shown as table columns, after the objective values and the searched values."""

MIN_TRIALS_FOR_IMPORTANCE = 3


@dataclass
class Report:
    """Paths of what ``write_report`` wrote, and messages about what it could not draw."""

    table_csv: Path
    table_json: Path
    best_specs: list[Path] = field(default_factory=list)
    pareto: Path | None = None
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def trial_rows(study: optuna.Study, search: SearchSpec) -> list[dict[str, Any]]:
    """One flat dict per trial: number, state, objective values (by metric), ``param.<name>``, the attrs."""
    metrics = [o.metric for o in search.objectives]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": trial.number, "state": _state(trial)}
        values = trial.values if trial.state == TrialState.COMPLETE and trial.values else [None] * len(metrics)
        row.update({f"objective.{m}": v for m, v in zip(metrics, values)})
        row.update({f"param.{k}": v for k, v in trial.params.items()})
        row.update({k: trial.user_attrs.get(k) for k in ATTR_COLUMNS})
        row["duration_s"] = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append(row)
    return rows


def _state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.PRUNED and "infeasible" in trial.user_attrs:
        return "INFEASIBLE"
    if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
        return "INTERRUPTED"
    return trial.state.name


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_report(study: optuna.Study, search: SearchSpec, out_dir: str | Path) -> Report:
    """Write the tables, best spec(s) and plots of ``study`` into ``out_dir``; see the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    rows = _finite(trial_rows(study, search))
    report = Report(table_csv=out / "trials.csv", table_json=out / "trials.json")
    write_atomic(report.table_csv, csv_text(rows))
    details = {
        "study_name": study.study_name,
        "search": search.name,
        "budget_flops": search.budget_flops,
        "objectives": [o.model_dump() for o in search.objectives],
        "trials": [
            {**row, "history": t.user_attrs.get("history"), "traceback": t.user_attrs.get("traceback")}
            for row, t in zip(rows, study.get_trials(deepcopy=False))
        ],
    }
    write_atomic(report.table_json, _json(_finite(details)))

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        report.notes.append("no trial completed: no best spec and no plots")
        return report
    if len(search.objectives) == 1:
        best = study.best_trial
        report.best_specs.append(_write_spec(best, out / "best.yaml"))
    else:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        report.best_specs += [_write_spec(t, out / "pareto" / f"trial-{t.number}.yaml") for t in front]
        pareto_rows = [r for r in rows if r["number"] in {t.number for t in front}]
        write_atomic(out / "pareto.csv", csv_text(pareto_rows))
        report.pareto = out / "pareto.json"
        write_atomic(report.pareto, _json(pareto_rows))
        report.plots.append(_plot_pareto(study, search, complete, front, out / "pareto.png"))
    report.plots.append(_plot_vs_attention(search, complete, out / "objective_vs_attention.png"))
    report.plots.append(_plot_history(study, search, out / "history.png"))
    importance = _plot_importance(study, search, complete, out / "importance.png")
    if isinstance(importance, Path):
        report.plots.append(importance)
    else:
        report.notes.append(importance)
    return report


def _write_spec(trial: FrozenTrial, path: Path) -> Path:
    """The trial's spec, re-validated and dumped complete (it loads back with ``load_spec``)."""
    spec = spec_from_dict(yaml.safe_load(trial.user_attrs["spec_yaml"]), source=f"trial {trial.number}")
    write_atomic(path, dump_spec(spec))
    return path


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buf.getvalue())
    return path


def _label(search: SearchSpec, i: int) -> str:
    o = search.objectives[i]
    return f"{o.metric} ({'lower' if o.direction == 'minimize' else 'higher'} is better)"


def _plot_vs_attention(search: SearchSpec, complete: list[FrozenTrial], path: Path) -> Path:
    n = len(search.objectives)
    fig = Figure(figsize=(5.5 * n, 4))
    placements = sorted({str(t.params.get("placement", "")) for t in complete})
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1)
        for placement in placements:
            group = [t for t in complete if str(t.params.get("placement", "")) == placement]
            ax.scatter(
                [t.user_attrs.get("attention_share", 0.0) for t in group],
                [t.values[i] for t in group],
                label=f"placement {placement}" if placement else None,
                alpha=0.8,
            )
        ax.set_xlabel("attention layers / all layers")
        ax.set_ylabel(_label(search, i))
        ax.grid(alpha=0.3)
        if len(placements) > 1 or placements[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{search.name}: objective vs attention share ({len(complete)} complete trials)")
    return _save(fig, path)


def _plot_history(study: optuna.Study, search: SearchSpec, path: Path) -> Path:
    n = len(search.objectives)
    fig = Figure(figsize=(5.5 * n, 4))
    trials = study.get_trials(deepcopy=False)
    for i, objective in enumerate(search.objectives):
        ax = fig.add_subplot(1, n, i + 1)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        ax.scatter([t.number for t in done], [t.values[i] for t in done], label="complete", zorder=3)
        pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
        if pruned:
            last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
            ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned (last report)")
        if done:
            pick = min if objective.direction == "minimize" else max
            best, xs, ys = None, [], []
            for t in sorted(done, key=lambda t: t.number):
                best = t.values[i] if best is None else pick(best, t.values[i])
                xs.append(t.number)
                ys.append(best)
            ax.step(xs, ys, where="post", color="C3", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(_label(search, i))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{search.name}: optimisation history")
    return _save(fig, path)


def _plot_pareto(
    study: optuna.Study, search: SearchSpec, complete: list[FrozenTrial], front: list[FrozenTrial], path: Path
) -> Path:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    on_front = {t.number for t in front}
    rest = [t for t in complete if t.number not in on_front]
    ax.scatter([t.values[0] for t in rest], [t.values[1] for t in rest], color="gray", alpha=0.6, label="dominated")
    ax.plot([t.values[0] for t in front], [t.values[1] for t in front], "o-", color="C3", label="Pareto front")
    for t in front:
        ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(_label(search, 0))
    ax.set_ylabel(_label(search, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{search.name}: Pareto front ({len(front)} of {len(complete)} complete trials)")
    return _save(fig, path)


def _plot_importance(
    study: optuna.Study, search: SearchSpec, complete: list[FrozenTrial], path: Path
) -> Path | str:
    """A bar chart of optuna.importance for the first objective, or a message saying why there is none."""
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials, "
                f"the study has {len(complete)}")
    varied = [name for name in search.space if len({repr(t.params.get(name)) for t in complete}) > 1]
    if not varied:
        return "parameter importance: no searched value varies across the complete trials"
    sign = 1.0 if search.objectives[0].direction == "minimize" else -1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's note that it ranks low values: we negate
            importances = optuna.importance.get_param_importances(
                study, params=varied, target=lambda t: sign * t.values[0]
            )
    except (RuntimeError, ValueError) as err:
        return f"parameter importance could not be computed: {err}"
    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel(f"importance for {search.objectives[0].metric}")
    ax.set_title(f"{search.name}: parameter importance ({len(complete)} complete trials)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
