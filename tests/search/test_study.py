"""A search runs end to end, spends the same FLOPs per trial, records infeasible and failed trials, resumes."""

from __future__ import annotations

import csv
import json

import optuna
import pytest

from archspec.loader import load_spec
from archspec.search import objective as objective_module
from archspec.search.report import write_report
from archspec.search.searchspec import load_search
from archspec.search.study import finished_trials, resolve_target, run_search

from search_helpers import TINY_TASK, fake_train, tiny_search, write_yaml

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.slow
def test_tiny_study_trains_every_feasible_trial_on_the_same_budget_and_writes_the_report(tmp_path):
    # the grid has 4 points; the constraint rules out the largest model (two SSD layers of d_state 16)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(
        constraints={"params": {"max": 9400}},
        pruner={"type": "median", "n_startup_trials": 10},  # reports every validation, prunes nothing here
    ))
    search = load_search(path)
    out = tmp_path / "out"
    study = run_search(search, out, progress_bar=False)

    trials = study.get_trials()
    assert len(trials) == 4 and finished_trials(study) == 4
    infeasible = [t for t in trials if "infeasible" in t.user_attrs]
    assert len(infeasible) == 1
    assert infeasible[0].state == optuna.trial.TrialState.PRUNED
    assert infeasible[0].params == {"attention_ratio": 0.0, "d_state": 16}
    assert "params" in infeasible[0].user_attrs["infeasible"] and "9,400" in infeasible[0].user_attrs["infeasible"]
    assert not (out / "trials" / str(infeasible[0].number)).exists()  # never trained

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    for t in complete:
        spent, per_step = t.user_attrs["train_flops"], t.user_attrs["flops_per_step"]
        assert search.budget_flops - per_step < spent <= search.budget_flops
        assert t.user_attrs["steps"] == t.user_attrs["tokens"] // (4 * 16)
        assert t.values[0] == pytest.approx(t.user_attrs["val_loss"])
        # reported at validations 1 and 2 of 2 (half and all of the budget), the last one the final loss
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.intermediate_values[2] == pytest.approx(t.values[0])
        assert (out / "trials" / str(t.number) / "result.json").exists()

    report = write_report(study, search, out)
    best = load_spec(out / "best.yaml")
    assert best.name == f"tiny-trial{study.best_trial.number}"
    assert best.training.budget_flops == search.budget_flops
    assert best.blocks["M"].d_state == study.best_trial.params["d_state"]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["state"] for r in rows) == ["COMPLETE"] * 3 + ["INFEASIBLE"]
    data = json.loads((out / "trials.json").read_text())
    assert len(data["trials"]) == 4 and data["budget_flops"] == search.budget_flops
    names = {p.name for p in report.plots}
    assert names == {"objective_vs_attention.png", "history.png", "importance.png"}
    for p in report.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trial_repeating_earlier_values_reuses_their_result(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(objective_module, "train", lambda spec, **kw: calls.append(1) or fake_train(spec, **kw))
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        space={"d_state": {"choices": [8], "path": "blocks.M.d_state"}}, sampler={"type": "random"}, n_trials=2
    )))
    study = run_search(search, tmp_path / "out", progress_bar=False)
    first, second = study.get_trials()
    assert len(calls) == 1 and second.user_attrs["duplicate_of"] == 0 and second.values == first.values


def test_values_that_build_the_same_model_reuse_its_result(tmp_path, monkeypatch):
    # with no attention layer the placement changes nothing: "start" and "end" build the same model
    calls = []
    monkeypatch.setattr(objective_module, "train", lambda spec, **kw: calls.append(1) or fake_train(spec, **kw))
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        space={"attention_ratio": {"choices": [0.0]}, "placement": {"choices": ["start", "end"]}},
        sampler={"type": "grid"}, n_trials=2,
    )))
    study = run_search(search, tmp_path / "out", progress_bar=False)
    first, second = study.get_trials()
    assert first.params["placement"] != second.params["placement"]
    assert len(calls) == 1 and second.user_attrs["duplicate_of"] == 0 and second.values == first.values
    assert second.user_attrs["spec_yaml"] != first.user_attrs["spec_yaml"]  # each keeps its own (named) spec


def test_a_trial_that_raises_is_recorded_failed_with_its_error_and_the_study_goes_on(tmp_path, monkeypatch):
    def train_or_fail(spec, **kwargs):
        if spec.blocks["M"].d_state == 16:
            raise RuntimeError("simulated out of memory")
        return fake_train(spec, **kwargs)

    monkeypatch.setattr(objective_module, "train", train_or_fail)
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search()))
    study = run_search(search, tmp_path / "out", progress_bar=False)
    states = {(t.params["attention_ratio"], t.params["d_state"]): t for t in study.get_trials()}
    assert len(states) == 4
    for (ratio, d_state), t in states.items():
        if d_state == 16:
            assert t.state == optuna.trial.TrialState.FAIL
            assert t.user_attrs["error"] == "RuntimeError: simulated out of memory"
            assert "simulated out of memory" in t.user_attrs["traceback"]
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE


def test_resume_after_an_interruption_keeps_every_finished_trial_and_runs_only_the_missing_ones(tmp_path, monkeypatch):
    calls = []

    def interrupted_once(spec, **kwargs):
        calls.append(spec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_train(spec, **kwargs)

    monkeypatch.setattr(objective_module, "train", interrupted_once)
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        sampler={"type": "random", "seed": 3}, space={"lr": {"low": 1e-3, "high": 1e-2, "path": "training.lr"}}
    )))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_search(search, out, target=resolve_target(search, out, n_trials=2), progress_bar=False)
    study = run_search(search, out, target=resolve_target(search, out, n_trials=2), progress_bar=False)
    first = {t.number: (t.state, t.params, t.datetime_start) for t in study.get_trials()}
    assert finished_trials(study) == 2  # trial 0 and the one run after the interrupted trial 1
    assert study.trials[1].user_attrs["interrupted"] is True

    study = run_search(search, out, target=resolve_target(search, out, n_trials=4), progress_bar=False)
    trials = study.get_trials()
    assert finished_trials(study) == 4
    assert [t.number for t in trials] == list(range(5))  # 4 finished + the interrupted one, none repeated
    assert {t.number: (t.state, t.params, t.datetime_start) for t in trials[:3]} == first
    assert len(calls) == 5

    again = run_search(search, out, target=resolve_target(search, out, n_trials=4), progress_bar=False)
    assert len(again.get_trials()) == 5  # nothing more to do, nothing deleted


def test_a_study_refuses_to_resume_with_another_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "train", fake_train)
    out = tmp_path / "out"
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(n_trials=1)))
    run_search(search, out, progress_bar=False)
    changed = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(n_trials=1, budget_flops=2.4e7)))
    with pytest.raises(ValueError, match="budget_flops"):
        run_search(changed, out, progress_bar=False)


@pytest.mark.parametrize("change, field", [
    ({"seed": 5}, r"seed: study 'tiny' was run with seed = 0, this search has 5"),
    ({"task": {**TINY_TASK, "num_kv_pairs": 3}},
     r"task: .*\{'num_kv_pairs': 2\}, this search has \{'num_kv_pairs': 3\}"),
])
def test_a_study_refuses_to_resume_on_another_task_or_seed_and_keeps_its_trials(tmp_path, monkeypatch, change, field):
    monkeypatch.setattr(objective_module, "train", fake_train)
    out = tmp_path / "out"
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(n_trials=1)))
    run_search(search, out, progress_bar=False)
    changed = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(n_trials=2, **change)))
    with pytest.raises(ValueError, match=f"s.yaml {field}"):
        run_search(changed, out, progress_bar=False)
    assert len(run_search(search, out, progress_bar=False).get_trials()) == 1  # nothing added, nothing lost


def test_nsga2_two_objective_study_writes_the_pareto_front(tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "train", fake_train)
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        objectives=["val_loss", "decode_state_bytes"],
        sampler={"type": "nsga2", "seed": 0, "population_size": 2},
        pruner=None,
        n_trials=6,
    )))
    assert [o.direction for o in search.objectives] == ["minimize", "minimize"]
    out = tmp_path / "out"
    study = run_search(search, out, progress_bar=False)
    report = write_report(study, search, out)
    front = json.loads((out / "pareto.json").read_text())
    numbers = sorted(t.number for t in study.best_trials)
    assert sorted(row["number"] for row in front) == numbers
    assert sorted(p.name for p in report.best_specs) == sorted(f"trial-{n}.yaml" for n in numbers)
    for path in report.best_specs:
        load_spec(path)
    values = [(row["objective.val_loss"], row["objective.decode_state_bytes"]) for row in front]
    for a in values:  # no point of the front dominates another
        assert not any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in values)
    assert (out / "pareto.png").exists()


def test_a_journal_file_storage_holds_the_study_too(tmp_path, monkeypatch):
    monkeypatch.setattr(objective_module, "train", fake_train)
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(n_trials=2)))
    out = tmp_path / "out"
    target = resolve_target(search, out, storage=f"journal:{tmp_path / 'journal' / 'study.log'}")
    run_search(search, out, target=target, progress_bar=False)
    study = run_search(search, out, target=resolve_target(search, out, storage=target.storage, n_trials=3),
                       progress_bar=False)
    assert finished_trials(study) == 3 and (tmp_path / "journal" / "study.log").stat().st_size > 0
