"""Synthetic tasks: examples as a pure function of (config, split, seed), and a Dataset holding them."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from archspec.data import mad
from archspec.data.mqar import mqar_examples
from archspec.data.seeding import check_split, make_generator

TaskFn = Callable[[Any, int, torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]
"""fn(config, num_examples, generator, task_seed) -> (input_ids, targets), each (num_examples, seq_len) int64."""

GENERATORS: dict[str, TaskFn] = {
    "mqar": mqar_examples,
    "in_context_recall": mad.in_context_recall_examples,
    "noisy_recall": mad.noisy_recall_examples,
    "fuzzy_recall": mad.fuzzy_recall_examples,
    "selective_copying": mad.selective_copying_examples,
    "compression": mad.compression_examples,
    "memorization": mad.memorization_examples,
}

CHUNK = 1024
"""Examples generated per call of a task function (bounds peak memory; part of the data's definition)."""


def generate_examples(config: Any, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All examples of one split: (input_ids, targets), each (num_train or num_val, seq_len) int64.

    The split enters the generator's seed, so train and val differ; equal arguments give equal tensors.
    """
    task = getattr(config, "task", None)
    if task not in GENERATORS:
        raise ValueError(f"config: expected a synthetic task config ({sorted(GENERATORS)}), got task {task!r}")
    check_split(split)
    total = config.num_train if split == "train" else config.num_val
    generator = make_generator(seed, task, split)
    chunks = [GENERATORS[task](config, min(CHUNK, total - start), generator, seed) for start in range(0, total, CHUNK)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


class SyntheticDataset(Dataset):
    """Pre-generated examples; item i is dict(input_ids=LongTensor(seq_len), targets=LongTensor(seq_len))."""

    def __init__(self, input_ids: torch.Tensor, targets: torch.Tensor) -> None:
        if input_ids.shape != targets.shape or input_ids.dim() != 2:
            raise ValueError(
                f"targets: expected the shape of input_ids {tuple(input_ids.shape)} (2-D), got {tuple(targets.shape)}"
            )
        self.input_ids = input_ids.to(torch.int32)
        self.targets = targets.to(torch.int32)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index].long(), "targets": self.targets[index].long()}
