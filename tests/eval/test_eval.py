"""`archspec eval RUN_DIR`: the numbers of training's validation for the run's last checkpoint, on its own data or
another task, as a table or JSON, from a run folder or a mamba_ssm checkpoint; the folder is only read."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from eval_helpers import (
    MAMBA_SSM_CONFIG, is_close, reference_metrics, snapshot, trained_model, write_mamba_ssm_folder,
)

from archspec.cli import main
from archspec.data import parse_data_config
from archspec.loader import load_spec

OTHER_TASK = {"task": "in_context_recall", "vocab_size": 16, "seq_len": 32, "num_train": 8, "num_val": 12}


def eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--accelerator", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return json.loads(captured.out)


def test_eval_reproduces_the_val_loss_and_accuracy_that_training_reported(mqar_run, capsys):
    run, result = mqar_run
    record = eval_json(capsys, str(run))
    assert result["steps"] == record["step"] == 3
    assert record["loss"] == pytest.approx(result["val_loss"], abs=1e-6)
    assert record["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-6)
    assert record["split"] == "val" and record["task"] == "mqar"
    assert (record["batches"], record["sequences"], record["tokens"]) == (3, 20, 20 * 32)  # batches of 8, 8 and 4


def test_eval_json_holds_the_run_the_data_and_consistent_numbers(mqar_run, capsys):
    run, _ = mqar_run
    record = eval_json(capsys, str(run))
    spec = load_spec(run / "spec.yaml")
    loss, accuracy, scored = reference_metrics(trained_model(run), spec.data, "val", spec.training.seed, 20)
    assert record["run"] == str(run) and record["kind"] == "run"
    assert record["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert record["data"] == str(run / "spec.yaml") and record["precision"] == "32-true"
    assert record["scored_tokens"] == scored
    assert is_close(record["loss"], loss, 1e-5) and is_close(record["accuracy"], accuracy, 1e-6)
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    assert record["tokens_per_second"] > 0 and record["seconds"] > 0


def test_eval_seed_draws_other_synthetic_examples(mqar_run, capsys):
    run, _ = mqar_run
    spec = load_spec(run / "spec.yaml")
    default = eval_json(capsys, str(run))
    record = eval_json(capsys, str(run), "--seed", "7")
    loss, accuracy, scored = reference_metrics(trained_model(run), spec.data, "val", 7, 20)
    assert default["seed"] == spec.training.seed and record["seed"] == 7
    assert is_close(record["loss"], loss, 1e-5) and record["scored_tokens"] == scored
    assert record["loss"] != default["loss"]


def test_eval_prints_a_table_of_loss_accuracy_perplexity_tokens_and_throughput(mqar_run, capsys):
    run, result = mqar_run
    assert main(["eval", str(run), "--accelerator", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{run} (tiny-hybrid, last.ckpt at step 3) on val of mqar (seq_len 32")
    rows = dict(line.split(None, 1) for line in lines[1:])
    assert list(rows) == ["loss", "accuracy", "perplexity", "tokens", "tokens/s"]
    assert float(rows["loss"]) == pytest.approx(result["val_loss"], abs=1e-6)
    assert float(rows["accuracy"]) == pytest.approx(result["val_accuracy"], abs=1e-4)
    assert float(rows["perplexity"]) == pytest.approx(math.exp(result["val_loss"]), rel=1e-3)
    assert rows["tokens"].endswith("scored of 640")


def test_batches_and_batch_size_choose_the_first_examples_of_the_split(mqar_run, capsys):
    run, _ = mqar_run
    spec = load_spec(run / "spec.yaml")
    model = trained_model(run)
    record = eval_json(capsys, str(run), "--batches", "2", "--batch-size", "3")
    assert (record["batches"], record["sequences"], record["batch_size"]) == (2, 6, 3)
    loss, accuracy, scored = reference_metrics(model, spec.data, "val", 0, 6)
    assert is_close(record["loss"], loss, 1e-5) and is_close(record["accuracy"], accuracy, 1e-6)
    assert record["scored_tokens"] == scored

    train_record = eval_json(capsys, str(run), "--split", "train", "--batches", "all")
    assert (train_record["split"], train_record["sequences"]) == ("train", 64)
    loss, accuracy, _ = reference_metrics(model, spec.data, "train", 0, 64)
    assert is_close(train_record["loss"], loss, 1e-5) and is_close(train_record["accuracy"], accuracy, 1e-6)


@pytest.mark.parametrize("form", ["data section", "bare task config", "whole spec"])
def test_eval_on_another_task_given_by_a_yaml_file(mqar_run, tmp_path, capsys, form):
    run, _ = mqar_run
    lines = [f"  {key}: {value}" for key, value in OTHER_TASK.items()]
    if form == "data section":
        text = "\n".join(["data:", *lines])
    elif form == "bare task config":
        text = "\n".join(line.strip() for line in lines)
    else:  # the run's own spec with its data section replaced
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        text = yaml.safe_dump({**spec, "data": OTHER_TASK}, sort_keys=False)
    data_file = tmp_path / "task.yaml"
    data_file.write_text(text + "\n")
    record = eval_json(capsys, str(run), "--data", str(data_file))
    assert (record["task"], record["data"], record["sequences"]) == ("in_context_recall", str(data_file), 12)
    loss, accuracy, _ = reference_metrics(trained_model(run), parse_data_config(OTHER_TASK), "val", 0, 12)
    assert is_close(record["loss"], loss, 1e-5) and is_close(record["accuracy"], accuracy, 1e-6)


def test_a_task_whose_ids_the_model_cannot_embed_is_refused_at_its_vocab_size_line(mqar_run, tmp_path, capsys):
    run, _ = mqar_run
    data_file = tmp_path / "big.yaml"
    data_file.write_text("data:\n  task: mqar\n  seq_len: 32\n  num_kv_pairs: 2\n  vocab_size: 64\n")
    assert main(["eval", str(run), "--data", str(data_file), "--accelerator", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"error: {data_file}:5 data.vocab_size: the mqar task uses 64 token ids, more than the vocab_size 32 of "
        f"{run}, use a task with vocab_size at most 32\n")


def test_a_data_file_is_validated_by_the_spec_schema_with_file_line_and_field(mqar_run, tmp_path, capsys):
    run, _ = mqar_run
    data_file = tmp_path / "typo.yaml"
    data_file.write_text("data:\n  task: mqar\n  vocab_size: 32\n  seq_lem: 32\n")
    assert main(["eval", str(run), "--data", str(data_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data_file}:4 data.seq_lem: unknown field 'seq_lem', did you mean 'seq_len'?")
    no_data = tmp_path / "nothing.yaml"
    no_data.write_text("name: x\n")
    assert main(["eval", str(run), "--data", str(no_data)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {no_data}:1: expected a data section")


def test_eval_of_a_text_run_reproduces_its_validation(text_run, capsys):
    run, result = text_run
    record = eval_json(capsys, str(run))
    assert record["task"] == "text" and record["sequences"] == 8
    assert record["loss"] == pytest.approx(result["val_loss"], abs=1e-6)
    assert record["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-6)


def test_a_text_file_that_went_missing_is_named_with_the_spec_field(text_run, tmp_path, capsys):
    run, _ = text_run
    moved = tmp_path / "run"
    moved.mkdir()
    spec_text = (run / "spec.yaml").read_text()
    corpus = str(run.parent / "corpus.txt")
    (moved / "spec.yaml").write_text(spec_text.replace(corpus, str(tmp_path / "gone.txt")))
    (moved / "checkpoints").mkdir()
    (moved / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    assert main(["eval", str(moved), "--accelerator", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: {moved / 'spec.yaml'} data.path: text file "
                                       f"'{tmp_path / 'gone.txt'}' does not exist\n")


def test_a_mamba_ssm_checkpoint_needs_data_and_is_evaluated_with_its_own_weights(tmp_path, capsys):
    folder = tmp_path / "mamba2-tiny"
    model = write_mamba_ssm_folder(folder)
    before = snapshot(folder)
    assert main(["eval", str(folder), "--accelerator", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: --data: {folder} is a mamba_ssm checkpoint without a data section; "
                                       "give a task with --data FILE.yaml\n")
    data_file = tmp_path / "task.yaml"
    data_file.write_text("task: mqar\nvocab_size: 32\nseq_len: 32\nnum_kv_pairs: 2\nnum_val: 10\n")  # bare
    record = eval_json(capsys, str(folder), "--data", str(data_file))
    assert (record["kind"], record["step"], record["checkpoint"]) == ("mamba_ssm", None,
                                                                      str(folder / "pytorch_model.bin"))
    assert record["sequences"] == 10 and MAMBA_SSM_CONFIG["vocab_size"] == 32
    task = {"task": "mqar", "vocab_size": 32, "seq_len": 32, "num_kv_pairs": 2, "num_val": 10}
    loss, accuracy, _ = reference_metrics(model, parse_data_config(task), "val", 0, 10)
    assert is_close(record["loss"], loss, 1e-5) and is_close(record["accuracy"], accuracy, 1e-6)
    assert snapshot(folder) == before


def test_eval_leaves_the_run_folder_byte_identical(mqar_run, tmp_path, capsys):
    run, _ = mqar_run
    before = snapshot(run)
    data_file = tmp_path / "task.yaml"
    data_file.write_text("data: " + json.dumps(OTHER_TASK) + "\n")
    for args in ([], ["--json"], ["--split", "train"], ["--data", str(data_file)]):
        assert main(["eval", str(run), "--accelerator", "cpu", *args]) == 0
    capsys.readouterr()
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "logs", "result.json", "spec.yaml"]

