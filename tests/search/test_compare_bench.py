"""`archspec compare` trains specs at one budget on the same data; `archspec bench` needs a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from archspec.cli import main
from archspec.search.bench import BenchConfig, CPURefused, crossover, run_bench
from archspec.search.compare import compare, load_task

from search_helpers import TINY_BASE, tiny_search, write_yaml


def _specs(tmp_path):
    data = tiny_search()["task"]
    ssd = write_yaml(tmp_path / "ssd.yaml", {**TINY_BASE, "name": "ssd", "layout": "M M", "data": data})
    hybrid = write_yaml(tmp_path / "hybrid.yaml", {**TINY_BASE, "name": "hybrid", "layout": "M A"})
    return ssd, hybrid


@pytest.mark.slow
def test_compare_trains_each_spec_on_the_same_budget_and_data(tmp_path):
    ssd, hybrid = _specs(tmp_path)
    result = compare([ssd, hybrid], budget_flops=1.2e7, out_dir=tmp_path / "out", val_checks=2, isolate=False)
    by_name = {row["name"]: row for row in result.rows}
    assert set(by_name) == {"ssd", "hybrid"}
    for row in result.rows:
        per_step = row["train_flops_per_token"] * 4 * 16
        assert 1.2e7 - per_step < row["train_flops"] <= 1.2e7
        assert row["val_loss"] is not None and row["tokens_per_second"] > 0
        assert row["history"][-1]["flops"] == row["train_flops"]
    assert by_name["ssd"]["kv_bytes"] == 0 and by_name["hybrid"]["kv_bytes"] > 0
    assert "| ssd |" in result.markdown and "| hybrid |" in result.markdown
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["task"]["task"] == "mqar" and len(saved["rows"]) == 2
    assert (tmp_path / "out" / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "compare.csv").read_text().count("\n") == 3


@pytest.mark.slow
def test_compare_command_trains_each_spec_in_its_own_process(tmp_path, capsys):
    ssd, hybrid = _specs(tmp_path)
    task = write_yaml(tmp_path / "task.yaml", {**tiny_search()["task"], "seq_len": 32})
    status = main(["compare", str(ssd), str(hybrid), "--budget", "2.4e7", "--task", str(task),
                   "--val-checks", "1", "--out", str(tmp_path / "out")])
    assert status == 0
    rows = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"]
    assert [r["seq_len"] for r in rows] == [32, 32]
    assert all(r["peak_memory_source"] == "process_peak_rss" for r in rows)
    assert "wrote" in capsys.readouterr().out


def test_compare_into_a_folder_of_another_budget_is_refused_before_training_anything(tmp_path, capsys):
    ssd, hybrid = _specs(tmp_path)
    out = tmp_path / "out"
    compare([hybrid], task=load_task(ssd), budget_flops=1.2e7, out_dir=out, val_checks=1, isolate=False)
    earlier = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    status = main(["compare", str(ssd), str(hybrid), "--budget", "2.4e7", "--task", str(ssd), "--val-checks", "1",
                   "--in-process", "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: out_dir: {out / 'runs' / 'hybrid'} already holds") and "budget_flops" in err
    assert not (out / "runs" / "ssd").exists()  # refused before the first spec trained
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier


def test_load_task_reads_a_bare_config_or_a_spec_and_locates_mistakes(tmp_path):
    ssd, hybrid = _specs(tmp_path)
    assert load_task(ssd).task == "mqar"
    bad = write_yaml(tmp_path / "bad.yaml", {"task": "mqar", "seq_len": 0})
    with pytest.raises(Exception, match=r"bad.yaml:2 data.seq_len"):
        load_task(bad)


def test_compare_needs_data(tmp_path):
    _, hybrid = _specs(tmp_path)
    with pytest.raises(ValueError, match="no data section"):
        compare([hybrid], budget_flops=1e7, out_dir=tmp_path / "out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_bench_refuses_on_the_cpu_and_runs_its_smoke_version_when_allowed(tmp_path, capsys):
    with pytest.raises(CPURefused, match="--allow-cpu"):
        run_bench(BenchConfig(), out_dir=tmp_path)
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err

    assert main(["bench", "--allow-cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["seq_len"] for r in rows] == [32, 64, 128]
    assert all(r["tokens"] == 256 and r["ssd_fwd_bwd_ms"] > 0 and r["attention_fwd_ms"] > 0 for r in rows)
    assert (tmp_path / "crossover.png").exists() and "seq_len" in (tmp_path / "bench.md").read_text()


def test_crossover_is_the_first_length_where_ssd_is_faster():
    rows = [{"seq_len": n, "ssd_fwd_ms": s, "attention_fwd_ms": a} for n, s, a in
            [(512, 2.0, 1.0), (1024, 2.0, None), (2048, 2.0, 3.0), (4096, 1.0, 9.0)]]
    assert crossover(rows, "fwd") == 2048
    assert crossover(rows[:2], "fwd") is None


def test_bench_config_rejects_widths_that_do_not_split_into_heads():
    with pytest.raises(ValueError, match="attn_head_dim"):
        BenchConfig(d_model=100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke version")
def test_bench_core_times_the_bare_operations(tmp_path):
    result = run_bench(BenchConfig(core=True), out_dir=tmp_path, allow_cpu=True)
    assert "ssd_scan vs causal attention" in result.markdown
    assert all(r["ssd_fwd_ms"] > 0 and r["attention_fwd_bwd_ms"] > 0 for r in result.rows)


@pytest.mark.gpu
@pytest.mark.parametrize("core", [False, True], ids=["mixers", "core"])
def test_bench_on_a_gpu_times_both_at_every_length(tmp_path, core):
    config = BenchConfig(seq_lens=(256, 1024), d_model=256, tokens=4096, d_state=64, head_dim=64,
                         attn_head_dim=64, chunk_size=64, core=core)
    result = run_bench(config, out_dir=tmp_path)
    assert [r["batch"] for r in result.rows] == [16, 4]
    for row in result.rows:
        assert all(row[k] > 0 for k in ("ssd_fwd_ms", "ssd_fwd_bwd_ms", "attention_fwd_ms", "attention_fwd_bwd_ms"))
    assert "CPU" not in result.device and (tmp_path / "crossover.png").exists()


def test_compare_refuses_a_damaged_checkpoint_up_front_with_one_line_and_trains_once_it_is_deleted(tmp_path, capsys):
    ssd, hybrid = _specs(tmp_path)
    out = tmp_path / "out"
    compare([hybrid], task=load_task(ssd), budget_flops=1.2e7, out_dir=out, val_checks=1, isolate=False)
    last = out / "runs" / "hybrid" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a run killed while saving its checkpoint
    (out / "runs" / "hybrid" / "result.json").unlink()
    earlier = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = ["compare", str(ssd), str(hybrid), "--budget", "1.2e7", "--task", str(ssd), "--val-checks", "1",
            "--out", str(out)]
    assert main(argv) == 2  # each spec in its own process by default: refused before any process starts
    assert capsys.readouterr().err == (f"error: out_dir: {last} is damaged (truncated or not a checkpoint); "
                                       "delete it to train hybrid over\n")
    assert not (out / "runs" / "ssd").exists()  # refused before the first spec trained
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier

    last.unlink()  # the way out the message gives
    assert main([*argv, "--in-process"]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["ssd", "hybrid"] and all(r["val_loss"] is not None for r in rows)


def test_a_spec_whose_training_process_stops_on_a_mistake_gives_one_line_per_process_and_keeps_finished_runs(
    tmp_path, capfd
):
    ssd, hybrid = _specs(tmp_path)
    big_batch = write_yaml(tmp_path / "big.yaml", {**TINY_BASE, "name": "big", "layout": "M A",
                                                   "training": {"batch_size": 128}})
    out = tmp_path / "out"
    argv = ["compare", str(ssd), str(big_batch), "--budget", "1.3e8", "--task", str(ssd), "--val-checks", "1",
            "--out", str(out)]  # a budget of a few of big's steps
    assert main(argv) == 2  # each spec in its own process: the second one finds its batch larger than the data
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "training.batch_size: 128 exceeds the 64 training examples" in err
    assert err.strip().splitlines()[-1] == (
        f"error: compare: training big stopped (exit status 2; its error is above); the runs that finished stay in "
        f"{out / 'runs'}, and the same command continues from them")
    assert (out / "runs" / "ssd" / "result.json").exists() and not (out / "runs" / "big").exists()


def test_a_budget_below_one_optimizer_step_is_refused_before_training_anything(tmp_path, capsys):
    ssd, hybrid = _specs(tmp_path)
    out = tmp_path / "out"
    assert main(["compare", str(ssd), str(hybrid), "--budget", "1e6", "--out", str(out), "--in-process"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ssd} training.batch_size: one optimizer step (4 x 16 tokens) costs ")
    assert "more than the budget of 1.0 MFLOP, raise --budget to at least" in err
    assert not out.exists()
