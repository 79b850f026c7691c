"""The Optuna objective: one trial = one concrete spec trained on the search's FLOP budget.

A trial draws its values, builds the spec, records what it costs (user attrs), skips training when the spec is
infeasible (pruned, with the reason in the ``infeasible`` user attr), trains through
``archspec.training.train`` with ``budget_flops`` (so every trial spends the same training FLOPs, to within
one optimizer step) and returns the objective values. An exception inside a trial is recorded in the
``error`` and ``traceback`` user attrs before Optuna marks the trial failed; an interrupted trial (Ctrl-C)
gets ``interrupted: True`` so a resumed study does not count it. A trial that builds the same model as an
earlier complete trial (the same layer list and fields, however its values spelled them) reuses its result
(training is deterministic given spec, data and seed) and names it in ``duplicate_of``.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import optuna
from optuna.trial import FrozenTrial, TrialState

from archspec.layout import expand_layout
from archspec.loader import dump_spec
from archspec.spec import ModelSpec
from archspec.search.searchspec import RESULT_ATTRS, STATIC_METRICS, SearchSpec
from archspec.search.space import Infeasible, concrete_spec, static_metrics, suggest, violations
from archspec.training import train

TRACEBACK_LINES = 12
"""Lines of the formatted traceback kept in a failed trial's ``traceback`` user attr."""

class BudgetPruningCallback(pl.Callback):
    """Reports ``monitor`` to the trial at each validation and stops the trial when the pruner says so.

    Trials of one search train for different numbers of steps (the same FLOPs buy fewer steps of a bigger
    model), so values are not keyed by optimizer step or epoch but by the validation's share of the budget:
    each trial validates every ``val_every_steps = ceil(steps / val_checks)`` steps and after its last step,
    and reports the value at global step g as step ``ceil(g / val_every_steps)`` (1..val_checks), so trials
    are compared at equal fractions of their training FLOPs.
    (optuna_integration's PyTorchLightningPruningCallback keys by epoch, which stays 0 in step-based
    training, so only the first validation of a trial would count.)
    """

    def __init__(self, trial: optuna.Trial, monitor: str, val_every_steps: int) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.val_every_steps = val_every_steps
        self._reported: set[int] = set()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"monitor: the training run logs no {self.monitor!r} to prune on")
        step = math.ceil(trainer.global_step / self.val_every_steps)
        if step in self._reported:
            return
        self._reported.add(step)
        score = float(value)
        self.trial.report(score, step)
        if self.trial.should_prune():
            total = math.ceil(trainer.max_steps / self.val_every_steps)
            raise optuna.TrialPruned(f"pruned at validation {step} of {total} with {self.monitor} = {score:.4g}")


def make_objective(
    search: SearchSpec,
    out_dir: str | Path,
    *,
    accelerator: str = "auto",
) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    """The function ``study.optimize`` calls: trains trial n in ``out_dir/trials/n`` and returns its objectives."""
    out_dir = Path(out_dir)

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            return _run_trial(trial, search, out_dir / "trials" / str(trial.number), accelerator)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            lines = traceback.format_exc().strip().splitlines()
            trial.set_user_attr("traceback", "\n".join(lines[-TRACEBACK_LINES:]))
            raise

    return objective


def _run_trial(
    trial: optuna.Trial, search: SearchSpec, trial_dir: Path, accelerator: str
) -> float | tuple[float, ...]:
    values = suggest(trial, search)
    try:
        spec = concrete_spec(search, values, name=f"{search.name}-trial{trial.number}")
        metrics = static_metrics(search, spec)
        spec.training.budget_flops = search.budget_flops
        spec.training.seed = search.seed
        spec.training.val_every_steps = max(1, math.ceil(metrics["steps"] / search.val_checks))
        trial.set_user_attr("spec_yaml", dump_spec(spec))
        trial.set_user_attr("architecture", _architecture_key(spec))
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        broken = violations(search, metrics)
        if broken:
            raise Infeasible("; ".join(broken))
    except Infeasible as err:
        trial.set_user_attr("infeasible", err.reason)
        raise optuna.TrialPruned(f"infeasible: {err.reason}") from None
    twin = _completed_twin(trial, _architecture_key(spec))
    if twin is not None:
        for key, value in twin.user_attrs.items():
            if key != "spec_yaml":
                trial.set_user_attr(key, value)
        trial.set_user_attr("duplicate_of", twin.number)
        return twin.values[0] if len(twin.values) == 1 else tuple(twin.values)

    callbacks = []
    if search.pruning:
        callbacks.append(BudgetPruningCallback(trial, search.monitor, spec.training.val_every_steps))
    trial.set_user_attr("out_dir", str(trial_dir))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    result = train(
        spec,
        data=search.data,
        out_dir=trial_dir,
        budget_flops=search.budget_flops,
        seed=search.seed,
        callbacks=callbacks,
        accelerator=accelerator,
        resume=False,
        progress_bar=False,
    )
    record = result.to_dict()
    for key in RESULT_ATTRS:
        trial.set_user_attr(key, record.get(key))
    trial.set_user_attr("history", [_compact(row) for row in record.get("history", [])])
    scores = []
    for objective in search.objectives:
        value = metrics[objective.metric] if objective.metric in STATIC_METRICS else record.get(objective.metric)
        if value is None:
            raise ValueError(f"the training run reported no {objective.metric!r}")
        scores.append(float(value))
    return scores[0] if len(scores) == 1 else tuple(scores)


def _architecture_key(spec: ModelSpec) -> str:
    """A digest of the complete trial spec, with its layout expanded to the layer list and without its name: equal
    keys train identically (same data, seed and budget), however the layout was written."""
    canonical = spec.model_copy(update={"name": "trial", "layout": expand_layout(spec)})
    return hashlib.sha256(dump_spec(canonical).encode()).hexdigest()[:20]


def _completed_twin(trial: optuna.Trial, key: str) -> FrozenTrial | None:
    """An earlier complete trial of the same architecture (sampled values that build the same model, e.g. any
    placement of no attention layers): its result is reused."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.user_attrs.get("architecture") == key and "duplicate_of" not in other.user_attrs:
            return other
    return None


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    """A history row with floats rounded to 6 significant digits (user attrs live in the study storage)."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}
