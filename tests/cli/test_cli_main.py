"""The archspec command: validate, summary, schema and train in-process through main(argv); one real script run."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archspec.accounting import account, steps_for_budget
from archspec.cli import build_parser, main
from archspec.cliargs import parse_flops
from archspec.layout import describe_layout, expand_layout
from archspec.loader import load_spec
from archspec.training import claim_out_dir, resolve_run_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "specs" / "tiny-hybrid.yaml")
TINY_SET = [
    "d_model=32", "vocab_size=32", "blocks.M.d_state=16", "blocks.M.chunk_size=16",
    "data.vocab_size=32", "data.seq_len=32", "data.num_kv_pairs=2", "data.num_train=64", "data.num_val=16",
    "training.batch_size=8", "training.warmup_steps=1", "training.val_every_steps=1000",
]


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _bad_spec(tmp_path: Path) -> tuple[Path, int]:
    """A copy of tiny-hybrid.yaml with d_state 512 (over the limit); returns the path and that line number."""
    lines = Path(TINY).read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if "d_state:" in text)
    lines[line] = lines[line].replace("32", "512")
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, line + 1


def test_validate_prints_ok_for_each_shipped_spec(capsys):
    specs = [str(ROOT / "specs" / name) for name in ("tiny-hybrid.yaml", "tiny-mamba2.yaml", "mamba2-130m.yaml")]
    assert main(["validate", *specs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out] == specs
    assert all(": OK" in line for line in out)


def test_validate_reports_file_line_and_field_on_stderr_and_exits_2(tmp_path, capsys):
    bad, line = _bad_spec(tmp_path)
    assert main(["validate", TINY, str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{TINY}: OK" in captured.out  # the good file is still checked
    assert captured.err.startswith(f"error: {bad}:{line} blocks.M.d_state:")
    assert "512" in captured.err and "Traceback" not in captured.err


def test_validate_applies_set_overrides(capsys):
    assert main(["validate", TINY, "--set", "blocks.M.d_state=300"]) == 2
    assert "blocks.M.d_state" in capsys.readouterr().err


def test_summary_prints_the_table_totals_and_compact_layout(capsys):
    path = ROOT / "specs" / "mamba2-130m.yaml"
    assert main(["summary", str(path), "--seq-len", "4096"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(path)
    acc = account(spec, 4096)
    assert any(line.startswith("total") for line in out.splitlines())
    assert f"params {acc.params:,}" in out
    assert "seq_len 4096" in out
    assert out.rstrip().endswith(f"layout: {describe_layout(expand_layout(spec))}")
    assert "layout: M*24" in out


def test_summary_of_a_bad_spec_exits_2_without_traceback(tmp_path, capsys):
    bad, _ = _bad_spec(tmp_path)
    assert main(["summary", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_schema_writes_json_schema_to_a_file(tmp_path, capsys):
    out = tmp_path / "sub" / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert {"blocks", "layout", "training", "data"} <= set(schema["properties"])
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == schema  # first line: "wrote <path>"


@pytest.mark.parametrize(("text", "value"), [("1e12", 1e12), ("2.5T", 2.5e12), ("300G", 3e11), ("4k", 4e3),
                                             ("1.5e3M", 1.5e9), ("7", 7.0), ("2P", 2e15)])
def test_parse_flops_accepts_numbers_and_si_suffixes(text, value):
    assert parse_flops(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "0", "-1e9", "3X", "1e400", "T"])
def test_parse_flops_rejects_other_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match="FLOP count"):
        parse_flops(text)


def test_train_runs_a_budget_given_with_a_suffix(tmp_path, capsys):
    spec = load_spec(TINY, TINY_SET)
    seq_len, batch = spec.data.seq_len, spec.training.batch_size
    step_flops = account(spec, seq_len).train_flops_per_token * batch * seq_len
    budget = f"{3.5 * step_flops / 1e6:.6f}M"
    assert steps_for_budget(spec, parse_flops(budget), batch, seq_len) == 3
    out = tmp_path / "run"
    argv = ["train", TINY, "--out", str(out), "--budget", budget, "--seed", "1", "--accelerator", "cpu",
            "--no-progress", *_set_args(TINY_SET)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and result["tokens"] == 3 * batch * seq_len
    assert load_spec(out / "spec.yaml").training.seed == 1
    assert "3 steps" in capsys.readouterr().out


def test_train_refuses_a_run_dir_of_another_spec_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    claim_out_dir(out, resolve_run_spec(load_spec(TINY, [*TINY_SET, "training.lr=0.5"])))
    before = (out / "spec.yaml").read_text()
    argv = ["train", TINY, "--out", str(out), "--max-steps", "2", "--accelerator", "cpu", *_set_args(TINY_SET)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out_dir") and "different spec" in err and "Traceback" not in err
    assert (out / "spec.yaml").read_text() == before and sorted(p.name for p in out.iterdir()) == ["spec.yaml"]


def test_train_with_a_batch_larger_than_the_data_names_the_spec_and_field_and_leaves_no_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", TINY, "--out", str(out), "--max-steps", "2", "--accelerator", "cpu",
            *_set_args([*TINY_SET, "data.num_train=4"])]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {TINY} training.batch_size: 8 exceeds the 4 training examples")
    assert not out.exists()


def test_ctrl_c_exits_130_with_a_hint_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("archspec.cli.cmd_validate", interrupted)
    assert main(["validate", TINY]) == 130
    assert capsys.readouterr().err == "interrupted: running the same command again resumes\n"


def test_train_rejects_budget_together_with_max_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", TINY, "--max-steps", "3", "--budget", "1e9"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_parser_offers_every_command():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = {"validate", "summary", "train", "eval", "generate", "schema", "search", "compare", "bench"}
    assert commands <= set(sub.choices)


def test_installed_archspec_script_validates_and_fails_cleanly(tmp_path):
    script = Path(sys.executable).with_name("archspec")
    if not script.exists():
        script = Path(shutil.which("archspec") or "")
    if not script.is_file():
        pytest.skip("the archspec console script is not installed")
    bad, line = _bad_spec(tmp_path)
    run = subprocess.run([str(script), "validate", TINY, str(bad)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{TINY}: OK" in run.stdout
    assert run.stderr.startswith(f"error: {bad}:{line} blocks.M.d_state:") and "Traceback" not in run.stderr


def test_schema_that_cannot_be_written_exits_2_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "schema.json"
    out.write_text("{}\n")

    def disk_full(self: Path, data: bytes) -> int:
        self.write_text('{"tru')  # half a file, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    assert main(["schema", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/.schema.json.") and err.endswith(": No space left on device\n")
    assert out.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["schema.json"]


@pytest.mark.parametrize("command", [["schema", "--out", "{blocker}/schema.json"],
                                     ["train", TINY, "--out", "{blocker}/run", *_set_args(TINY_SET)]])
def test_an_out_path_through_a_file_exits_2_with_one_line_naming_the_file(tmp_path, capsys, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    assert main([arg.format(blocker=blocker) for arg in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker}") and err.count("\n") == 1 and "Traceback" not in err
    assert blocker.read_text() == "mine"


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_train_refuses_to_resume_from_a_damaged_checkpoint_until_told_to_start_over(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", TINY, "--out", str(out), "--max-steps", "2", "--accelerator", "cpu", "--no-progress",
            *_set_args(TINY_SET)]
    assert main(argv) == 0
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a run killed while saving
    (out / "result.json").unlink()
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: out_dir: {last} is damaged (truncated or not a checkpoint); delete it "
                                       "or pass --no-resume (resume=False) to start the run over\n")
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]
    assert main([*argv, "--no-resume"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 2


@pytest.mark.parametrize("inside", ["schema.json", "sub/schema.json"], ids=["parent", "grandparent"])
def test_schema_out_under_a_file_says_that_file_is_not_a_folder(tmp_path, capsys, inside):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    out = blocker / inside
    assert main(["schema", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {blocker} is a file, not a folder, so --out {out} cannot be written\n"
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_schema_out_that_is_a_folder_asks_for_a_file_name(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} is a folder; --out expects a file name such as "
                                       f"{tmp_path / 'spec.schema.json'}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_train_out_under_a_file_says_that_file_is_not_a_folder(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    argv = ["train", TINY, "--out", str(blocker / "run"), "--max-steps", "1", "--accelerator", "cpu", "--no-progress",
            *_set_args(TINY_SET)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: {blocker} is a file, not a folder, so {blocker / 'run'} "
                                       "cannot be made\n")
    assert blocker.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("devices", ["1", "2"])
def test_train_on_a_gpu_this_machine_lacks_is_one_line_and_creates_nothing(tmp_path, capsys, devices):
    out = tmp_path / "run"
    argv = ["train", TINY, "--out", str(out), "--max-steps", "1", "--accelerator", "gpu", "--devices", devices,
            "--no-progress", *_set_args(TINY_SET)]
    assert main(argv) == 2
    assert capsys.readouterr().err == "error: --accelerator gpu: no CUDA device is available; use --accelerator cpu\n"
    assert not out.exists()
