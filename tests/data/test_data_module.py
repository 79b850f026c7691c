"""TaskDataModule batches and the masked accuracy metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from archspec.data import TaskDataModule, masked_accuracy, write_token_file
from archspec.data.config import MQARConfig, SelectiveCopyingConfig, TokensConfig


def test_datamodule_yields_batches_of_the_configured_shape() -> None:
    config = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, num_train=40, num_val=10)
    module = TaskDataModule(config, batch_size=8, seed=3)
    module.setup("fit")
    assert module.vocab_size == 64
    train = list(module.train_dataloader())
    assert len(train) == 5
    for batch in train:
        assert set(batch) == {"input_ids", "targets"}
        assert batch["input_ids"].shape == batch["targets"].shape == (8, 32)
        assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    val = list(module.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val] == [8, 2]


def test_datamodule_order_is_fixed_by_the_seed() -> None:
    config = SelectiveCopyingConfig(vocab_size=12, seq_len=24, num_tokens_to_copy=4, num_train=64, num_val=16)

    def first_batch(seed: int) -> torch.Tensor:
        module = TaskDataModule(config, batch_size=16, seed=seed)
        module.setup()
        return next(iter(module.train_dataloader()))["input_ids"]

    assert torch.equal(first_batch(5), first_batch(5))
    assert not torch.equal(first_batch(5), first_batch(6))


def test_datamodule_serves_token_files(tmp_path: Path) -> None:
    path = tmp_path / "ids.bin"
    write_token_file(path, torch.randint(0, 500, (2000,)).tolist(), "uint16")
    config = TokensConfig(path=str(path), vocab_size=500, seq_len=16, num_train=20)
    module = TaskDataModule(config, batch_size=4, seed=0)
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16)
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])


def test_datamodule_rejects_a_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TaskDataModule(MQARConfig(), batch_size=0, seed=0)


def test_masked_accuracy_scores_only_unmasked_positions() -> None:
    logits = torch.randn(4, 10, 7)
    predicted = logits.argmax(-1)
    scored = torch.rand(4, 10) < 0.5
    scored[0, 0] = True
    right = torch.rand(4, 10) < 0.6
    targets = torch.where(right, predicted, (predicted + 1) % 7)
    targets = torch.where(scored, targets, torch.full_like(targets, -100))
    expected = (right & scored).sum().item() / scored.sum().item()
    accuracy = masked_accuracy(logits, targets)
    assert accuracy.dim() == 0 and accuracy.dtype == torch.float32
    assert accuracy.item() == pytest.approx(expected)


def test_masked_accuracy_is_nan_without_scored_positions() -> None:
    assert math.isnan(masked_accuracy(torch.randn(2, 3, 5), torch.full((2, 3), -100)).item())


def test_masked_accuracy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="targets"):
        masked_accuracy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
