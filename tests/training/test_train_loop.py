"""train(): a tiny CPU run learns, budgets become steps, resume is exact, results are written, run dirs are kept."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import archspec.builder as archspec_builder
from archspec.accounting import account, steps_for_budget
from archspec.cli import main
from archspec.data import write_token_file
from archspec.errors import SpecError
from archspec.loader import load_spec
from archspec.training import (
    AdvanceBatches,
    ResumableBatches,
    RunDirError,
    TrainResult,
    check_last_checkpoint,
    claim_out_dir,
    resolve_precision,
    resolve_run_spec,
    train,
)

from stop_callbacks import Crash, CtrlC

FAST_VAL = ["training.val_every_steps=1000"]  # validate only at step 0 and after the last step


def _state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_tiny_spec):
    spec = make_tiny_spec()
    out = tmp_path_factory.mktemp("tiny_run")
    return spec, out, train(spec, out_dir=out, progress_bar=False, accelerator="cpu")


def test_tiny_hybrid_run_lowers_the_validation_loss(tiny_run):
    spec, _, result = tiny_run
    assert result.steps == spec.training.max_steps == 30
    assert [r["step"] for r in result.history] == [0, 10, 20, 30]
    initial = result.history[0]["val_loss"]
    assert result.history[0]["train_loss"] is None
    assert result.val_loss == result.history[-1]["val_loss"]
    assert result.val_loss < 0.9 * initial
    assert result.best_val_loss == min(r["val_loss"] for r in result.history)
    assert 0.0 <= result.val_accuracy <= 1.0


def test_tokens_and_flops_follow_the_accounting(tiny_run):
    spec, _, result = tiny_run
    seq_len, batch = spec.data.seq_len, spec.training.batch_size
    assert result.tokens == 30 * batch * seq_len
    assert result.train_flops == result.tokens * account(spec, seq_len).train_flops_per_token
    assert [r["tokens"] for r in result.history] == [s * batch * seq_len for s in (0, 10, 20, 30)]
    assert result.tokens_per_second > 0
    assert result.peak_memory_source == "process_peak_rss" and result.peak_memory_bytes > 0


def test_run_dir_holds_result_json_spec_and_last_checkpoint(tiny_run):
    spec, out, result = tiny_run
    stored = json.loads((out / "result.json").read_text())
    assert stored["steps"] == result.steps and stored["history"] == result.to_dict()["history"]
    assert not list(out.glob(".*tmp*"))
    assert load_spec(out / "spec.yaml") == resolve_run_spec(spec)
    assert Path(result.checkpoint_path) == out / "checkpoints" / "last.ckpt"
    assert torch.load(result.checkpoint_path, weights_only=False)["global_step"] == 30


def test_out_dir_of_another_spec_is_refused_and_left_unchanged(tiny_run, make_tiny_spec):
    spec, out, _ = tiny_run
    before = _snapshot(out)
    other = make_tiny_spec("training.lr=0.02")
    with pytest.raises(RunDirError, match=r"different spec.*training\.lr"):
        train(other, out_dir=out, progress_bar=False, accelerator="cpu")
    with pytest.raises(RunDirError, match="different spec"):
        train(spec, out_dir=out, max_steps=31, progress_bar=False, accelerator="cpu", resume=False)
    assert _snapshot(out) == before


def test_budget_sets_the_steps_to_within_one_optimizer_step(tmp_path, make_tiny_spec):
    spec = make_tiny_spec(*FAST_VAL)
    seq_len = spec.data.seq_len
    step_flops = account(spec, seq_len).train_flops_per_token * spec.training.batch_size * seq_len
    budget = 4.6 * step_flops
    assert steps_for_budget(spec, budget, spec.training.batch_size, seq_len) == 4
    result = train(spec, out_dir=tmp_path, budget_flops=budget, progress_bar=False, accelerator="cpu")
    assert result.steps == 4
    assert 0 <= budget - result.train_flops < step_flops
    stored = load_spec(tmp_path / "spec.yaml").training
    assert (stored.max_steps, stored.budget_flops) == (4, budget)


def test_resolve_run_spec_picks_steps_from_arguments_budget_or_spec(tiny_spec, make_tiny_spec):
    seq_len, batch = tiny_spec.data.seq_len, tiny_spec.training.batch_size
    step_flops = account(tiny_spec, seq_len).train_flops_per_token * batch * seq_len
    assert resolve_run_spec(tiny_spec).training.max_steps == 30
    assert resolve_run_spec(tiny_spec, max_steps=7, seed=3).training.model_dump(
        include={"max_steps", "seed", "budget_flops"}) == {"max_steps": 7, "seed": 3, "budget_flops": None}
    budgeted = make_tiny_spec(f"training.budget_flops={9.5 * step_flops}", "training.accumulate_grad_batches=2")
    assert resolve_run_spec(budgeted).training.max_steps == 4  # 2 batches per optimizer step
    assert resolve_run_spec(budgeted, max_steps=2).training.budget_flops is None
    with pytest.raises(ValueError, match="max_steps, budget_flops"):
        resolve_run_spec(tiny_spec, max_steps=3, budget_flops=1e9)
    with pytest.raises(ValueError, match="max_steps"):
        resolve_run_spec(tiny_spec, max_steps=0)
    with pytest.raises(ValueError, match="data"):
        resolve_run_spec(tiny_spec.model_copy(update={"data": None}))
    with pytest.raises(ValueError, match="vocab_size"):
        resolve_run_spec(tiny_spec, data=tiny_spec.data.model_copy(update={"vocab_size": 64}))


def test_resume_after_an_interruption_matches_the_uninterrupted_run(tmp_path, make_tiny_spec):
    # 4 batches per epoch: the checkpoint at step 4 ends epoch 0, the run crosses two more epoch boundaries
    spec = make_tiny_spec("training.max_steps=10", "training.val_every_steps=4", "training.warmup_steps=2",
                       "data.num_train=32")
    straight = train(spec, out_dir=tmp_path / "straight", progress_bar=False, accelerator="cpu")
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(spec, out_dir=resumed_dir, progress_bar=False, accelerator="cpu", callbacks=[Crash(at_step=6)])
    assert torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not (resumed_dir / "result.json").exists()
    resumed = train(spec, out_dir=resumed_dir, progress_bar=False, accelerator="cpu")
    assert (resumed.steps, resumed.tokens, resumed.train_flops) == (straight.steps, straight.tokens,
                                                                    straight.train_flops)
    assert resumed.val_loss == straight.val_loss
    assert resumed.history == straight.history
    a, b = _state_dict(tmp_path / "straight" / "checkpoints" / "last.ckpt"), _state_dict(Path(resumed.checkpoint_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    kept = _snapshot(resumed_dir)
    again = train(spec, out_dir=resumed_dir, progress_bar=False, accelerator="cpu")  # a finished run: nothing to do
    assert again == resumed  # the stored result, throughput and wall time included
    assert _snapshot(resumed_dir) == kept  # result.json and last.ckpt are not rewritten

    with pytest.raises(RuntimeError, match="simulated crash"):  # starting over, then crashing after step 4
        train(spec, out_dir=resumed_dir, progress_bar=False, accelerator="cpu", resume=False, callbacks=[Crash(6)])
    redone = train(spec, out_dir=resumed_dir, progress_bar=False, accelerator="cpu")
    assert redone.wall_seconds != again.wall_seconds  # trained on from step 4, not the result.json of before
    assert redone.history == straight.history


def test_ctrl_c_raises_keyboard_interrupt_keeps_the_checkpoint_and_restores_the_sigint_handler(
        tmp_path, make_tiny_spec):
    spec = make_tiny_spec("training.max_steps=6", "training.val_every_steps=2")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # not Lightning's sys.exit(1), which an Optuna trial would not record
        train(spec, out_dir=tmp_path, progress_bar=False, accelerator="cpu", callbacks=[CtrlC(at_step=3)])
    assert signal.getsignal(signal.SIGINT) is handler  # a second Ctrl-C still stops the program
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (tmp_path / "result.json").exists()


def test_batch_larger_than_the_training_set_is_a_spec_error_before_out_dir_is_touched(tmp_path, make_tiny_spec):
    spec = make_tiny_spec("data.num_train=4")
    with pytest.raises(SpecError, match=r"training\.batch_size: 8 exceeds the 4 training examples.*data\.num_train"):
        train(spec, out_dir=tmp_path / "run", progress_bar=False, accelerator="cpu")
    assert not (tmp_path / "run").exists()  # so the corrected spec is not refused as "a different spec"


def test_out_dir_that_is_a_file_is_refused_and_kept(tmp_path, tiny_spec):
    (tmp_path / "run").write_text("my notes\n")
    with pytest.raises(RunDirError, match="is a file"):
        train(tiny_spec, out_dir=tmp_path / "run", progress_bar=False, accelerator="cpu")
    assert (tmp_path / "run").read_text() == "my notes\n"


class StopAtFirstValidation(Callback):
    """Acts like a pruner: records the steps it sees validated and stops the fit at the first one."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_validation_end(self, trainer, pl_module):
        self.seen.append(trainer.global_step)
        trainer.should_stop = True


def test_caller_callbacks_see_in_fit_validations_and_can_stop_the_run(tmp_path, make_tiny_spec):
    spec = make_tiny_spec("training.max_steps=8", "training.val_every_steps=3")
    stopper = StopAtFirstValidation()
    result = train(spec, out_dir=tmp_path, progress_bar=False, accelerator="cpu", callbacks=[stopper])
    assert stopper.seen == [3]  # not the step-0 validation of the untrained model
    assert result.steps == 3 and [r["step"] for r in result.history] == [0, 3]
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 3


def test_resumable_batches_continue_mid_epoch_and_reshuffle_each_epoch():
    data = [{"x": torch.tensor([i])} for i in range(10)]
    seen = []
    batches = ResumableBatches(data, batch_size=3, seed=5)
    assert len(batches) == 3  # the partial batch is dropped
    for epoch in range(2):
        for batch in batches:
            seen.append(batch["x"].flatten().tolist())
            batches.done += 1  # what AdvanceBatches does after each training batch
    assert sorted(sum(seen[:3], [])) == sorted(set(sum(seen[:3], [])))
    assert seen[:3] != seen[3:]

    restored = ResumableBatches(data, batch_size=3, seed=5)
    restored.load_state_dict({"epoch": 1, "done": 1})
    assert [b["x"].flatten().tolist() for b in restored] == seen[4:]
    assert isinstance(AdvanceBatches(restored), Callback)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableBatches(data, batch_size=11, seed=0)


def test_claim_out_dir_writes_the_spec_once(tmp_path, tiny_spec):
    claim_out_dir(tmp_path / "run", tiny_spec)
    claim_out_dir(tmp_path / "run", tiny_spec)
    assert load_spec(tmp_path / "run" / "spec.yaml") == tiny_spec
    (tmp_path / "run" / "spec.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RunDirError, match="does not load"):
        claim_out_dir(tmp_path / "run", tiny_spec)


def test_precision_auto_is_fp32_on_the_cpu():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_train_rejects_fewer_than_one_device(tmp_path, tiny_spec):  # more than one: tests/training/test_ddp.py
    with pytest.raises(ValueError, match="devices"):
        train(tiny_spec, out_dir=tmp_path, devices=0)
    assert not tmp_path.joinpath("spec.yaml").exists()


def test_check_last_checkpoint_refuses_only_a_damaged_checkpoint_a_run_would_resume_from(tmp_path):
    run = tmp_path / "run"
    check_last_checkpoint(run, max_steps=4)  # no run yet
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"step": 2}, last)
    check_last_checkpoint(run, max_steps=4)  # a whole checkpoint: the run resumes from it
    last.write_bytes(last.read_bytes()[:20])  # killed while saving
    with pytest.raises(RunDirError, match=r"^out_dir: .*last\.ckpt is damaged \(truncated or not a checkpoint\); "
                                          r"delete it to start over$"):
        check_last_checkpoint(run, max_steps=4, hint="delete it to start over")
    done = TrainResult(steps=4, tokens=0, train_flops=0, val_loss=None, val_accuracy=None, best_val_loss=None)
    (run / "result.json").write_text(json.dumps(done.to_dict()))  # written after the checkpoint: the run finished
    check_last_checkpoint(run, max_steps=4)  # nothing left to resume
    with pytest.raises(RunDirError, match="delete it or pass --no-resume"):
        check_last_checkpoint(run, max_steps=5)  # more steps asked for: it would resume


class _StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def test_training_with_checkpointing_matches_training_without(tmp_path, make_tiny_spec, monkeypatch):
    calls = []
    original = archspec_builder.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(archspec_builder, "checkpoint", counting)
    runs = {}
    for on in (False, True):
        spec = make_tiny_spec("training.max_steps=5", "training.val_every_steps=5",
                              f"training.activation_checkpointing={str(on).lower()}")
        steps = _StepLosses()
        result = train(
            spec, out_dir=tmp_path / str(on), progress_bar=False, accelerator="cpu", callbacks=[steps])
        runs[on] = (result, steps.losses, len(calls))
    (off, off_losses, off_calls), (on_result, on_losses, on_calls) = runs[False], runs[True]
    assert off_calls == 0
    assert on_calls - off_calls == 5 * 4  # every training step checkpoints each of the 4 layers, validation none
    assert len(off_losses) == len(on_losses) == 5
    assert on_losses == pytest.approx(off_losses, rel=0, abs=1e-5)
    assert on_result.val_loss == pytest.approx(off.val_loss, rel=0, abs=1e-5)
    assert on_result.train_flops == off.train_flops


def test_a_run_resumes_with_activation_checkpointing_switched(tmp_path, make_tiny_spec):
    """Checkpointing changes how a step computes, not what: a run stopped without it continues with it."""
    out = tmp_path / "run"
    first = make_tiny_spec("training.max_steps=4", "training.val_every_steps=2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(first, out_dir=out, progress_bar=False, accelerator="cpu", callbacks=[Crash(at_step=2)])
    switched = make_tiny_spec("training.max_steps=4", "training.val_every_steps=2",
                              "training.activation_checkpointing=true")
    resumed = train(switched, out_dir=out, progress_bar=False, accelerator="cpu")
    whole = train(first, out_dir=tmp_path / "whole", progress_bar=False, accelerator="cpu")
    assert resumed.steps == whole.steps == 4
    assert resumed.val_loss == pytest.approx(whole.val_loss, rel=0, abs=1e-5)
    other = make_tiny_spec("training.max_steps=4", "training.val_every_steps=2", "training.lr=0.5")
    with pytest.raises(RunDirError, match="training.lr"):
        train(other, out_dir=out, progress_bar=False, accelerator="cpu")


# --------------------------------------------------------------------------------------------- data file paths
TOKENS = {"task": "tokens", "path": "tokens.bin", "vocab_size": 32, "seq_len": 32, "val_fraction": 0.1,
          "num_train": 16}  # a path relative to the working directory


@pytest.fixture
def token_cwd(tmp_path, monkeypatch) -> Path:
    """The working directory: tmp_path/work, holding tokens.bin (2048 random ids below 32)."""
    work = tmp_path / "work"
    work.mkdir()
    ids = torch.randint(0, 32, (2048,), generator=torch.Generator().manual_seed(0))
    write_token_file(work / "tokens.bin", ids.tolist())
    monkeypatch.chdir(work)
    return work


def _train_tokens(spec, out: Path, data=TOKENS, **kwargs) -> TrainResult:
    return train(spec, out_dir=out, data=data, progress_bar=False, accelerator="cpu", **kwargs)


def _crashed_token_run(spec, out: Path) -> None:
    """A run on tokens.bin stopped by a crash after step 2 of 4 (checkpointed at step 2)."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_tokens(spec, out, callbacks=[Crash(at_step=2)])


def test_spec_yaml_stores_data_files_absolute_so_eval_works_from_anywhere(
        token_cwd, tmp_path, make_tiny_spec, monkeypatch, capsys):
    out = tmp_path / "run"
    result = _train_tokens(make_tiny_spec("training.max_steps=2", *FAST_VAL), out)
    assert load_spec(out / "spec.yaml").data.path == str(token_cwd / "tokens.bin")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(out), "--accelerator", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(result.val_loss, abs=1e-6)


def test_a_run_resumes_given_its_relative_data_path_and_accepts_the_absolute_one(token_cwd, tmp_path, make_tiny_spec):
    spec, out = make_tiny_spec("training.max_steps=4", "training.val_every_steps=2"), tmp_path / "run"
    _crashed_token_run(spec, out)
    assert _train_tokens(spec, out).steps == 4
    assert _train_tokens(spec, out, data={**TOKENS, "path": str(token_cwd / "tokens.bin")}).steps == 4


def test_a_spec_yaml_with_a_relative_data_path_still_resumes_from_its_working_directory(
        token_cwd, tmp_path, make_tiny_spec):
    """Run folders of earlier versions hold the data paths as given; they resolve against the working directory."""
    spec, out = make_tiny_spec("training.max_steps=4", "training.val_every_steps=2"), tmp_path / "run"
    _crashed_token_run(spec, out)
    stored = out / "spec.yaml"
    stored.write_text(stored.read_text().replace(str(token_cwd / "tokens.bin"), "tokens.bin"))
    assert load_spec(stored).data.path == "tokens.bin"
    assert _train_tokens(spec, out).steps == 4
    assert _train_tokens(spec, out, data={**TOKENS, "path": str(token_cwd / "tokens.bin")}).steps == 4
