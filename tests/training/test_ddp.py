"""train(devices=2) on the CPU (two gloo processes): the same run as on one device, exact resume, rank-0 outputs.

The data-parallel runs spawn fresh processes (a few seconds each), so the module shares them between tests.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from archspec.cli import build_parser
from archspec.errors import SpecError
from archspec.loader import load_spec
from archspec.training import ResumableBatches, _ephemeral_low, _free_port, resolve_run_spec, shard_batches, train

from stop_callbacks import Crash, CtrlC

# 32 training examples = 4 global batches of 8 per epoch: 6 steps cross an epoch boundary; validation at 0, 3, 6
STEPS = ["training.max_steps=6", "training.val_every_steps=3", "data.num_train=32"]
GRADS = "grads_step0.pt"


class SaveFirstGradients(Callback):
    """Rank 0 saves the gradients of optimizer step 0 (after DDP's all-reduce, before clipping) in the run folder."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.is_global_zero:
            grads = {name: p.grad.detach().clone() for name, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, Path(trainer.default_root_dir) / GRADS)


class SaveBackend(Callback):
    """Rank 0 writes the name of the process group's backend (gloo, nccl) to backend.txt in the run folder."""

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / "backend.txt").write_text(torch.distributed.get_backend())


def _state_dict(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_tiny_spec):
    """The same spec and seed trained on one device and on two (CPU processes)."""
    spec = make_tiny_spec(*STEPS)
    root = tmp_path_factory.mktemp("ddp")
    one = train(spec, out_dir=root / "one", progress_bar=False, accelerator="cpu", callbacks=[SaveFirstGradients()])
    two = train(spec, out_dir=root / "two", progress_bar=False, accelerator="cpu", devices=2,
                callbacks=[SaveFirstGradients()])
    return spec, root, one, two


two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs two CUDA devices")


@pytest.mark.gpu
@two_gpus
def test_two_gpus_over_nccl_take_the_one_gpu_gradient(tmp_path, make_tiny_spec):
    """DDP on two GPUs (NCCL, bf16-mixed, the Triton SSD kernels): step 0's gradient, the losses and the counters of
    one GPU, up to bf16 rounding (the ranks' batches of 4 run other kernel shapes than one batch of 8)."""
    spec = make_tiny_spec(*STEPS)
    one = train(spec, out_dir=tmp_path / "one", progress_bar=False, accelerator="gpu",
                callbacks=[SaveFirstGradients()])
    two = train(spec, out_dir=tmp_path / "two", progress_bar=False, accelerator="gpu", devices=2,
                callbacks=[SaveFirstGradients(), SaveBackend()])
    assert (tmp_path / "two" / "backend.txt").read_text() == "nccl"
    g1, g2 = (torch.load(tmp_path / run / GRADS, weights_only=True) for run in ("one", "two"))
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        err = float((g2[name] - g1[name]).norm() / g1[name].norm())
        assert err < 2e-2, f"{name}: {err:.2e}"
    for a, b in zip(one.history, two.history, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-2)
    assert (two.steps, two.tokens, two.train_flops) == (one.steps, one.tokens, one.train_flops)
    assert two.peak_memory_source == "cuda_max_memory_allocated"


def test_two_devices_validate_like_one(runs):
    _, _, one, two = runs
    assert [r["step"] for r in two.history] == [r["step"] for r in one.history] == [0, 3, 6]
    assert two.history[0]["val_loss"] == pytest.approx(one.history[0]["val_loss"], rel=1e-6, abs=0)
    for a, b in zip(one.history, two.history):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5, abs=0)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
        if a["train_loss"] is not None:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5, abs=0)


def test_two_devices_take_the_single_device_gradient_and_steps(runs):
    _, root, one, two = runs
    g1, g2 = (torch.load(root / run / GRADS, weights_only=True) for run in ("one", "two"))
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:  # the same gradient, not e.g. half of it (which AdamW's update would hide)
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    a, b = _state_dict(root / "one"), _state_dict(root / "two")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # 6 AdamW steps at lr 1e-2 on parameters of size ~1: measured ~1e-5
    assert (two.steps, two.tokens, two.train_flops) == (one.steps, one.tokens, one.train_flops)
    assert two.tokens == 6 * 8 * 32  # the global batch: tokens and FLOPs do not depend on the device count


def test_rank_zero_writes_the_run_folder_once(runs):
    spec, root, _, two = runs
    out = root / "two"
    assert json.loads((out / "result.json").read_text()) == two.to_dict()
    assert load_spec(out / "spec.yaml") == resolve_run_spec(spec)
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]
    assert (out / "logs" / "version_0" / "metrics.csv").read_text().count("\n") > 3
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert two.tokens_per_second > 0 and two.peak_memory_source == "process_peak_rss"


def test_two_device_run_resumes_exactly_on_two_devices(runs, tmp_path):
    spec, root, _, two = runs
    with pytest.raises(RuntimeError, match="simulated crash"):  # after the checkpoint of step 3, mid-epoch 0
        train(spec, out_dir=tmp_path, progress_bar=False, accelerator="cpu", devices=2, callbacks=[Crash(at_step=4)])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not (tmp_path / "result.json").exists()
    resumed = train(spec, out_dir=tmp_path, progress_bar=False, accelerator="cpu", devices=2)
    assert resumed.history == two.history
    a, b = _state_dict(root / "two"), _state_dict(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_in_the_workers_raises_keyboard_interrupt_and_keeps_the_checkpoint(runs, tmp_path):
    spec = runs[0]
    with pytest.raises(KeyboardInterrupt):
        train(spec, out_dir=tmp_path, progress_bar=False, accelerator="cpu", devices=2, callbacks=[CtrlC(at_step=4)])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not (tmp_path / "result.json").exists()


def test_batch_not_divisible_by_the_devices_is_a_spec_error_before_out_dir_is_touched(tmp_path, make_tiny_spec):
    with pytest.raises(SpecError, match=r"training\.batch_size: 8 is not divisible by the 3 devices"):
        train(make_tiny_spec(), out_dir=tmp_path / "run", progress_bar=False, accelerator="cpu", devices=3)
    assert not (tmp_path / "run").exists()
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="devices"):
            train(make_tiny_spec(), out_dir=tmp_path / "run", accelerator="cpu", devices=bad)
    assert not (tmp_path / "run").exists()


def test_ranks_slice_each_global_batch_and_resume_their_slices():
    data = [{"x": torch.tensor([i])} for i in range(10)]
    whole = [b["x"].flatten().tolist() for b in ResumableBatches(data, batch_size=4, seed=5)]
    slices = [[b["x"].flatten().tolist() for b in ResumableBatches(data, 4, 5, rank=r, world_size=2)]
              for r in range(2)]
    assert [s0 + s1 for s0, s1 in zip(*slices)] == whole  # rank 0 the first half, rank 1 the second
    restored = ResumableBatches(data, 4, 5, rank=1, world_size=2)
    restored.load_state_dict({"epoch": 0, "done": 1})
    assert [b["x"].flatten().tolist() for b in restored] == slices[1][1:]
    with pytest.raises(ValueError, match="batch_size: 4 is not divisible"):
        ResumableBatches(data, 4, 5, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        ResumableBatches(data, 4, 5, rank=2, world_size=2)


def test_validation_slices_cover_the_batches_of_a_plain_loader():
    assert shard_batches(10, 4, 0, 2) == [[0, 1], [4, 5], [8]]
    assert shard_batches(10, 4, 1, 2) == [[2, 3], [6, 7], [9]]
    assert shard_batches(9, 4, 1, 2) == [[2, 3], [6, 7]]  # the last batch [8] has nothing for rank 1
    assert shard_batches(8, 8, 0, 1) == [list(range(8))]


def test_cli_train_takes_devices():
    args = build_parser().parse_args(["train", "x.yaml", "--devices", "2"])
    assert args.devices == 2
    assert build_parser().parse_args(["train", "x.yaml"]).devices == 1


def test_rendezvous_port_is_free_and_below_the_ephemeral_range():
    """Outgoing connections never get such a port, so a rank retrying its connect cannot connect to itself on it."""
    low = _ephemeral_low()
    ports = {_free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports) and len(ports) > 1
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports.pop()))
