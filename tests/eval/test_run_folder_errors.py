"""Folders that `archspec eval` and `archspec generate` cannot open: exit 2 and one `error:` line naming the folder or
file, whatever the command; nothing in the folder changes."""

from __future__ import annotations

import shutil

import pytest
import torch
from eval_helpers import snapshot, trained_model, write_mamba_ssm_folder

from archspec.cli import main
from archspec.runs import open_run
from archspec.errors import RunDirError

COMMANDS = {"eval": ["eval"], "generate": ["generate", "--prompt-ids", "1,2"]}


def run_command(command: str, folder) -> int:
    name, *rest = COMMANDS[command]
    return main([name, str(folder), *rest, "--accelerator", "cpu"])


def copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.fixture(params=sorted(COMMANDS))
def command(request) -> str:
    return request.param


def test_a_run_folder_without_a_checkpoint(mqar_run, tmp_path, capsys, command):
    run = copy_run(mqar_run[0], tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    assert run_command(command, run) == 2
    last = run / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err == (f"error: {run}: has no checkpoint ({last} is missing); train it first: "
                                       f"archspec train {run / 'spec.yaml'} --out {run}\n")
    assert snapshot(run) == before and not (run / "checkpoints").exists()


def test_a_truncated_checkpoint(mqar_run, tmp_path, capsys, command):
    run = copy_run(mqar_run[0], tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(run)
    assert run_command(command, run) == 2
    assert capsys.readouterr().err == f"error: {last}: is damaged (truncated or not a checkpoint)\n"
    assert snapshot(run) == before


def test_a_checkpoint_of_another_model(mqar_run, tmp_path, capsys, command):
    run = copy_run(mqar_run[0], tmp_path)
    spec_file = run / "spec.yaml"
    spec_file.write_text(spec_file.read_text().replace("d_model: 32", "d_model: 64", 1))
    assert run_command(command, run) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'checkpoints' / 'last.ckpt'}: does not hold the model of {spec_file} (")
    assert "size mismatch" in err and err.count("\n") == 1


def test_a_missing_folder_a_file_and_a_folder_of_something_else(tmp_path, capsys, command):
    missing = tmp_path / "nope"
    assert run_command(command, missing) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such run folder\n"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert run_command(command, a_file) == 2
    assert capsys.readouterr().err.startswith(f"error: {a_file}: is a file; expected a run folder")
    other = tmp_path / "other"
    other.mkdir()
    assert run_command(command, other) == 2
    assert capsys.readouterr().err == (f"error: {other}: holds neither spec.yaml (a run of archspec train) nor "
                                       "config.json (a mamba_ssm checkpoint)\n")
    assert a_file.read_text() == "mine" and list(other.iterdir()) == []


def test_a_spec_yaml_that_does_not_load_is_named_with_its_line(mqar_run, tmp_path, capsys, command):
    run = copy_run(mqar_run[0], tmp_path)
    spec_file = run / "spec.yaml"
    lines = spec_file.read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if text.startswith("d_model:"))
    lines[line] = "d_model: 4"
    spec_file.write_text("\n".join(lines) + "\n")
    assert run_command(command, run) == 2
    assert capsys.readouterr().err.startswith(f"error: {spec_file}:{line + 1} d_model: must be at least 8, got 4")


def test_a_mamba_ssm_folder_without_weights(tmp_path, capsys, command):
    folder = tmp_path / "m"
    write_mamba_ssm_folder(folder)
    (folder / "pytorch_model.bin").unlink()
    assert run_command(command, folder) == 2
    assert capsys.readouterr().err == f"error: {folder / 'pytorch_model.bin'} does not exist\n"


def test_a_mamba_ssm_folder_takes_prompt_ids_but_no_text(tmp_path, capsys):
    folder = tmp_path / "m"
    write_mamba_ssm_folder(folder)
    assert main(["generate", str(folder), "--prompt", "hi", "--accelerator", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: --prompt: {folder} has no data section naming a text task, so it "
                                       "takes token ids, not text; give them as --prompt-ids 1,2,3\n")
    assert main(["generate", str(folder), "--prompt-ids", "1,2", "--max-new-tokens", "3", "--accelerator", "cpu"]) == 0
    assert len(capsys.readouterr().out.split(",")) == 5  # no context limit: no note either


def test_open_run_loads_the_trained_weights(mqar_run):
    opened = open_run(mqar_run[0])
    expected = trained_model(mqar_run[0]).state_dict()
    assert opened.kind == "run" and opened.step == 3 and not opened.model.training
    assert opened.model.state_dict().keys() == expected.keys()
    assert all((opened.model.state_dict()[k] == v).all() for k, v in expected.items())
    with pytest.raises(RunDirError):
        open_run(mqar_run[0] / "checkpoints")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA device")
def test_accelerator_gpu_without_cuda_is_refused_before_loading(mqar_run, capsys, command):
    name, *rest = COMMANDS[command]
    assert main([name, str(mqar_run[0]), *rest, "--accelerator", "gpu"]) == 2
    assert capsys.readouterr().err == "error: --accelerator gpu: no CUDA device is available; use --accelerator cpu\n"
