"""LightningDataModule serving the train / val DataLoaders of any DataConfig."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from archspec.data.config import task_vocab_size
from archspec.data.factory import make_dataset
from archspec.data.seeding import derive_seed


class TaskDataModule(pl.LightningDataModule):
    """Train / val loaders for `config`; the data and the shuffling order are fixed by `seed`.

    Batches are dict(input_ids=LongTensor(batch_size, seq_len), targets=LongTensor(batch_size, seq_len)).
    The train loader reshuffles each epoch from a generator seeded by `seed`; the val loader keeps order.
    """

    def __init__(self, config: Any, batch_size: int, seed: int, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.vocab_size = task_vocab_size(config)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once (both splits; later calls are no-ops)."""
        if self.train_dataset is None:
            self.train_dataset = make_dataset(self.config, "train", self.seed)
            self.val_dataset = make_dataset(self.config, "val", self.seed)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            self.setup()
            return self._loader(self.train_dataset if shuffle else self.val_dataset, shuffle)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle")) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
