"""`archspec search` runs, resumes and reports a study; mistakes in the search file exit 2 with file:line."""

from __future__ import annotations

import json

from archspec.cli import main
from archspec.search import objective as objective_module

from search_helpers import fake_train, tiny_search, write_yaml


def test_search_command_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search())
    out = tmp_path / "out"
    assert main(["search", str(path), "--out", str(out), "--n-trials", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 finished trials (2 complete)" in text and "best: trial" in text
    assert (out / "study.db").exists() and (out / "best.yaml").exists()

    assert main(["search", str(path), "--out", str(out), "--no-progress"]) == 0  # resumes up to n_trials 4
    assert "4 finished trials" in capsys.readouterr().out
    (out / "trials.csv").unlink()
    assert main(["search", str(path), "--out", str(out), "--report-only"]) == 0
    assert (out / "trials.csv").read_text().count("\n") == 5
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == 4


def test_search_command_reports_file_line_field_and_exits_2(tmp_path, capsys):
    text = write_yaml(tmp_path / "ok.yaml", tiny_search()).read_text().replace("n_trials: 4", "n_trials: zero")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["search", str(path), "--out", str(tmp_path / "out")]) == 2
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("n_trials"))
    assert capsys.readouterr().err.startswith(f"error: {path}:{line} n_trials:")


def test_report_only_without_a_study_exits_2(tmp_path, capsys):
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search())
    assert main(["search", str(path), "--out", str(tmp_path / "out"), "--report-only"]) == 2
    assert "no study 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no empty study.db left behind


def test_report_only_refuses_a_study_of_another_budget_and_keeps_its_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", fake_train)
    out = tmp_path / "out"
    assert main(["search", str(write_yaml(tmp_path / "a.yaml", tiny_search(n_trials=1))), "--out", str(out),
                 "--no-progress"]) == 0
    report = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = write_yaml(tmp_path / "b.yaml", tiny_search(budget_flops=2.4e7))
    capsys.readouterr()
    assert main(["search", str(other), "--out", str(out), "--report-only"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {other} budget_flops: study 'tiny' was run with")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == report


def test_an_output_folder_belongs_to_one_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    out = tmp_path / "out"
    assert main(["search", str(path), "--out", str(out), "--no-progress"]) == 0
    assert main(["search", str(path), "--out", str(out), "--study-name", "other", "--no-progress"]) == 2
    assert "holds study 'tiny'" in capsys.readouterr().err


def test_a_storage_url_that_does_not_open_exits_2_and_does_not_claim_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    out = tmp_path / "out"
    bad_url = ["--storage", "nosuchdb://u:secret@host/x"]
    assert main(["search", str(path), "--out", str(out), *bad_url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage: cannot open the URL") and "secret" not in err
    assert not (out / "study.json").exists()
    assert main(["search", str(path), "--out", str(out), "--no-progress"]) == 0  # the corrected command runs
