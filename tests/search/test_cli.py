"""`archspec search` runs, resumes and reports a study; mistakes in the search file exit 2 with file:line."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shlex
from pathlib import Path

import pytest
import torch

from archspec.cli import main
from archspec.search import objective as objective_module
from archspec.search import report as report_module
from archspec.search import study as study_module

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


def _files(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("damage", "where"), [
    (lambda text: text[: len(text) // 2], ":3: not valid JSON at column"),  # cut short in "storage": ...
    (lambda text: "", ":1: not valid JSON at column 1"),
    (lambda text: "[]", ": expected a JSON object with study_name and storage"),
    (lambda text: '{"study_name": "tiny"}', " storage: expected a string, missing"),
], ids=["truncated", "empty", "not-an-object", "no-storage"])
def test_a_damaged_study_json_exits_2_naming_it_and_the_way_out_and_leaves_the_folder_as_it_is(
    tmp_path, monkeypatch, capsys, damage, where
):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    out = tmp_path / "out"
    assert main(["search", str(path), "--out", str(out), "--no-progress"]) == 0
    marker = out / "study.json"
    marker.write_text(damage(marker.read_text()))
    before = _files(out)
    capsys.readouterr()
    for extra in ([], ["--report-only"]):
        assert main(["search", str(path), "--out", str(out), "--n-trials", "2", "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {marker}{where}") and err.count("\n") == 1
        assert f"if that is study 'tiny' in sqlite:///{(out / 'study.db').resolve()}, delete it" in err
        assert _files(out) == before
    marker.unlink()  # the way out the message gives: the folder is this study's
    assert main(["search", str(path), "--out", str(out), "--n-trials", "2", "--no-progress"]) == 0
    assert "2 finished trials" in capsys.readouterr().out


def test_report_only_into_the_folder_of_another_study_keeps_its_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    out, other = tmp_path / "out", tmp_path / "other"
    assert main(["search", str(path), "--out", str(out), "--no-progress"]) == 0
    storage = ["--storage", f"sqlite:///{out / 'study.db'}"]
    assert main(["search", str(path), "--out", str(other), *storage, "--study-name", "b", "--no-progress"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["search", str(path), "--out", str(out), *storage, "--study-name", "b", "--report-only"]) == 2
    assert "holds study 'tiny'" in capsys.readouterr().err
    assert _files(out) == before


@pytest.mark.parametrize("url", [
    pytest.param("postgresql+psycopg2://user:secret@127.0.0.1:1/db", id="postgres-port-without-server",
                 marks=pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="needs psycopg2")),
    pytest.param("sqlite:///{tmp_path}", id="sqlite-file-that-is-a-folder"),
])
def test_a_database_that_refuses_the_connection_exits_2_with_the_drivers_reason_and_claims_nothing(
    tmp_path, monkeypatch, capsys, url
):
    monkeypatch.setattr(objective_module, "train", fake_train)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    url = url.format(tmp_path=tmp_path)
    out = tmp_path / "out"
    for extra in ([], ["--report-only"]):
        assert main(["search", str(path), "--out", str(out), "--storage", url, "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        shown = url.replace("secret", "***")
        assert err.startswith(f"error: storage: cannot open {shown}: ") and err.count("\n") == 1
        assert "secret" not in err and "Traceback" not in err
        assert len(err) > len(f"error: storage: cannot open {shown}: ") + 10  # the driver's reason follows
        assert not out.exists()


def test_a_storage_whose_driver_is_not_installed_exits_2_naming_it(tmp_path, capsys):
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed")
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    url = "mysql://user:secret@127.0.0.1:1/db"
    assert main(["search", str(path), "--out", str(tmp_path / "out"), "--storage", url, "--no-progress"]) == 2
    assert capsys.readouterr().err == ("error: storage: mysql://user:***@127.0.0.1:1/db needs a database driver "
                                       "that is not installed (MySQLdb)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="needs psycopg2")
def test_a_postgres_host_that_never_answers_gives_up_after_the_connect_timeout_and_exits_2(
    tmp_path, monkeypatch, capsys
):
    import psycopg2

    calls = []

    def silent_host(*args, **kwargs):  # what libpq does once connect_timeout runs out on a host dropping packets
        calls.append(kwargs)
        raise psycopg2.OperationalError('connection to server at "192.0.2.1", port 5432 failed: timeout expired')

    monkeypatch.setattr(psycopg2, "connect", silent_host)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=1))
    url = "postgresql+psycopg2://user:secret@192.0.2.1/db"
    assert main(["search", str(path), "--out", str(tmp_path / "out"), "--storage", url, "--no-progress"]) == 2
    assert calls and all(call["connect_timeout"] == study_module.CONNECT_TIMEOUT_S == 10 for call in calls)
    err = capsys.readouterr().err
    assert err.startswith("error: storage: cannot open postgresql+psycopg2://user:***@192.0.2.1/db: ")
    assert err.endswith("timeout expired\n") and "secret" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("url", "connect_args"), [
    ("postgresql://u:pw@db.example/study", {"connect_timeout": 10}),
    ("postgresql+psycopg2://u:pw@db.example/study", {"connect_timeout": 10}),
    ("postgresql+psycopg://u:pw@db.example/study", {"connect_timeout": 10}),
    ("postgresql+pg8000://u:pw@db.example/study", None),  # no libpq: another keyword, left to the driver's default
    ("mysql://u:pw@db.example/study", None),
    ("sqlite:////tmp/study.db", {"timeout": 60}),  # a lock wait, not a connect timeout
], ids=["postgresql", "psycopg2", "psycopg3", "pg8000", "mysql", "sqlite"])
def test_only_postgres_through_libpq_gets_a_connect_timeout(url, connect_args):
    kwargs = study_module.engine_kwargs(url)
    assert kwargs.get("connect_args") == connect_args


@pytest.mark.parametrize("where", ["default", "own-storage"])
def test_a_report_that_cannot_be_written_says_the_trials_are_safe_and_how_to_rewrite_it(
    tmp_path, monkeypatch, capsys, where
):
    monkeypatch.setattr(objective_module, "train", fake_train)
    real_write = report_module.write_atomic

    def disk_full_at_best_yaml(path, data):
        if path.name == "best.yaml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(report_module, "write_atomic", disk_full_at_best_yaml)
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search(n_trials=2))
    out = tmp_path / "out dir"
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    extra = {"default": [], "own-storage": ["--storage", storage, "--study-name", "mine"]}[where]
    assert main(["search", str(path), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    name, url = ("tiny", f"sqlite:///{(out / 'study.db').resolve()}") if where == "default" else ("mine", storage)
    assert err.startswith(f"error: {out / 'best.yaml'}: No space left on device; ") and err.count("\n") == 1
    assert f"the study's 2 finished trials are safe in study {name!r} in {url}" in err
    command = err.split("`")[1]
    assert command.startswith("archspec search ") and command.endswith(" --report-only")

    monkeypatch.setattr(report_module, "write_atomic", real_write)  # space freed: the command given rewrites it
    assert main(shlex.split(command)[1:]) == 0
    assert "2 finished trials (2 complete)" in capsys.readouterr().out
    assert (out / "best.yaml").exists() and (out / "trials.csv").read_text().count("\n") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_search_and_compare_on_a_gpu_this_machine_lacks_stop_before_any_trial(tmp_path, capsys):
    path = write_yaml(tmp_path / "tiny.yaml", tiny_search())
    expected = "error: --accelerator gpu: no CUDA device is available; use --accelerator cpu\n"
    assert main(["search", str(path), "--out", str(tmp_path / "out"), "--accelerator", "gpu", "--no-progress"]) == 2
    assert capsys.readouterr().err == expected
    spec = Path(__file__).resolve().parents[2] / "specs" / "tiny-mamba2.yaml"
    assert main(["compare", str(spec), "--budget", "1e9", "--out", str(tmp_path / "cmp"), "--accelerator", "gpu"]) == 2
    assert capsys.readouterr().err == expected
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.yaml"]
