"""One entry point from any DataConfig to a Dataset, plus the vocabulary a model needs for it."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from archspec.data.config import SYNTHETIC_TASKS, TextConfig, TokensConfig
from archspec.data.seeding import check_split
from archspec.data.synthetic import SyntheticDataset, generate_examples
from archspec.data.text import text_dataset
from archspec.data.tokens import tokens_dataset


def make_dataset(config: Any, split: str, seed: int) -> Dataset:
    """The `split` ("train" or "val") dataset of `config`; items are dict(input_ids, targets) LongTensor(seq_len).

    Synthetic tasks are generated up front from (config, split, seed); token and text files are read lazily.
    Raises FileNotFoundError naming a missing file, ValueError for a bad split or too little data.
    """
    check_split(split)
    task = getattr(config, "task", None)
    if task in SYNTHETIC_TASKS:
        return SyntheticDataset(*generate_examples(config, split, seed))
    if isinstance(config, TokensConfig):
        return tokens_dataset(config, split, seed)
    if isinstance(config, TextConfig):
        return text_dataset(config, split, seed)
    raise ValueError(f"config: expected a DataConfig, got {type(config).__name__}")


