"""Data for archspec: synthetic tasks (MQAR, the MAD suite), token files, byte-level text, and a DataModule.

`archspec.data.config` (the pydantic task configs) imports no torch; so does this package's import: the
torch-based names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from archspec.data.config import (
    SYNTHETIC_TASKS,
    CompressionConfig,
    DataConfig,
    FuzzyRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    MQARConfig,
    NoisyRecallConfig,
    SelectiveCopyingConfig,
    TextConfig,
    TokensConfig,
    parse_data_config,
    task_vocab_size,
)

_LAZY = {
    "make_dataset": "archspec.data.factory",
    "generate_examples": "archspec.data.synthetic",
    "SyntheticDataset": "archspec.data.synthetic",
    "masked_accuracy": "archspec.data.metrics",
    "TaskDataModule": "archspec.data.module",
    "ByteTokenizer": "archspec.data.text",
    "write_token_file": "archspec.data.tokens",
    "MemmapTokens": "archspec.data.tokens",
    "TokenWindows": "archspec.data.tokens",
    "IGNORE_INDEX": "archspec.data.sampling",
}

__all__ = [
    "SYNTHETIC_TASKS",
    "CompressionConfig",
    "DataConfig",
    "FuzzyRecallConfig",
    "InContextRecallConfig",
    "MemorizationConfig",
    "MQARConfig",
    "NoisyRecallConfig",
    "SelectiveCopyingConfig",
    "TextConfig",
    "TokensConfig",
    "parse_data_config",
    "task_vocab_size",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'archspec.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
