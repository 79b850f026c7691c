"""Task configurations: one pydantic model per data task, joined into `DataConfig` on the field `task`.

This module imports no torch, so the spec schema can embed these models. Every model forbids unknown
fields; cross-field rules live in `model_validator`s whose messages start with the offending field name.
Token-id layouts of the synthetic tasks are documented in `archspec.data.mqar` and `archspec.data.mad`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "CompressionConfig",
    "DataConfig",
    "FuzzyRecallConfig",
    "InContextRecallConfig",
    "MemorizationConfig",
    "MQARConfig",
    "NoisyRecallConfig",
    "SelectiveCopyingConfig",
    "SYNTHETIC_TASKS",
    "TextConfig",
    "TokensConfig",
    "parse_data_config",
    "with_absolute_paths",
]

NumTrain = Annotated[int, Field(ge=1, description="Number of training examples.")]
NumVal = Annotated[int, Field(ge=1, description="Number of validation examples.")]


class _TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _require_even(name: str, value: int) -> None:
    if value % 2:
        raise ValueError(f"{name}: must be even (the sequence is made of 2-token pairs), got {value}")


class MQARConfig(_TaskConfig):
    """Multi-query associative recall (zoology): kv pairs first, then each key queried once later."""

    task: Literal["mqar"] = "mqar"
    vocab_size: int = Field(
        8192, ge=4,
        description="Vocabulary size: id 0 is filler, keys from [1, V/2), values from [V/2, V).",
    )
    seq_len: int = Field(256, ge=4, description="Tokens per example.")
    num_kv_pairs: int = Field(16, ge=1, description="Key-value pairs per example; every key is queried once.")
    power_a: float = Field(
        0.01, gt=0.0, le=1.0,
        description="Power-law exponent a of the query-gap distribution p(gap) ~ gap^(a-1); 1 is uniform.",
    )
    random_non_queries: bool = Field(True, description="Fill non-query positions with random tokens instead of 0.")
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> MQARConfig:
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(
                f"num_kv_pairs: 4 * num_kv_pairs = {4 * self.num_kv_pairs} must be at most seq_len = {self.seq_len} "
                "(2 tokens per pair in the context, at least as many in the query region)"
            )
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size: {self.vocab_size} leaves {self.vocab_size // 2 - 1} distinct keys, fewer than "
                f"num_kv_pairs = {self.num_kv_pairs}; need vocab_size >= {2 * self.num_kv_pairs + 2}"
            )
        return self


class InContextRecallConfig(_TaskConfig):
    """MAD in-context recall (multi-query): k v k v ...; a repeated key must recall its earlier value."""

    task: Literal["in_context_recall"] = "in_context_recall"
    vocab_size: int = Field(16, ge=2, description="Vocabulary size, split equally into keys and values.")
    seq_len: int = Field(128, ge=2, description="Tokens per example (even).")
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> InContextRecallConfig:
        _require_even("seq_len", self.seq_len)
        return self


class NoisyRecallConfig(_TaskConfig):
    """MAD noisy in-context recall: in-context recall with 2-token noise slots from a separate vocabulary."""

    task: Literal["noisy_recall"] = "noisy_recall"
    vocab_size: int = Field(32, ge=3, description="Vocabulary size including the noise vocabulary.")
    seq_len: int = Field(128, ge=2, description="Tokens per example (even).")
    noise_vocab_size: int = Field(16, ge=1, description="Ids reserved for noise tokens (the top of the vocabulary).")
    frac_noise: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="Probability that a 2-token slot holds noise instead of a kv pair.",
    )
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> NoisyRecallConfig:
        _require_even("seq_len", self.seq_len)
        if self.vocab_size < self.noise_vocab_size + 2:
            raise ValueError(
                f"vocab_size: {self.vocab_size} must be at least noise_vocab_size + 2 = {self.noise_vocab_size + 2} "
                "(one key and one value besides the noise tokens)"
            )
        return self


class FuzzyRecallConfig(_TaskConfig):
    """MAD fuzzy in-context recall: keys and values are runs of 1..k_motif_size / 1..v_motif_size tokens."""

    task: Literal["fuzzy_recall"] = "fuzzy_recall"
    vocab_size: int = Field(
        16, ge=3,
        description="Vocabulary size: id 0 pads, the rest split equally into key and value tokens.",
    )
    seq_len: int = Field(128, ge=4, description="Tokens per example (left-padded with id 0).")
    k_motif_size: int = Field(3, ge=1, description="Longest key, in tokens.")
    v_motif_size: int = Field(3, ge=1, description="Longest value, in tokens.")
    num_kv_pairs: int = Field(
        4, ge=1,
        description="Distinct key-value pairs per example (at most (vocab_size - 1) // 2), drawn from repeatedly.",
    )
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> FuzzyRecallConfig:
        num_key_tokens = (self.vocab_size - 1) // 2
        if self.num_kv_pairs > num_key_tokens:
            raise ValueError(
                f"num_kv_pairs: {self.num_kv_pairs} exceeds the {num_key_tokens} key tokens of vocab_size = "
                f"{self.vocab_size}; need vocab_size >= {2 * self.num_kv_pairs + 1}"
            )
        longest_pair = self.k_motif_size + self.v_motif_size
        if self.seq_len < 2 * longest_pair:
            raise ValueError(
                f"seq_len: {self.seq_len} must hold two of the longest pairs, 2 * (k_motif_size + v_motif_size) = "
                f"{2 * longest_pair}"
            )
        return self


class SelectiveCopyingConfig(_TaskConfig):
    """MAD selective copying: tokens scattered among blanks, then a copy marker, then reproduce them in order."""

    task: Literal["selective_copying"] = "selective_copying"
    vocab_size: int = Field(16, ge=3, description="Vocabulary size: id 0 blank, id 1 copy marker, data tokens from 2.")
    seq_len: int = Field(256, ge=2, description="Tokens per example.")
    num_tokens_to_copy: int = Field(16, ge=1, description="Data tokens to copy.")
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> SelectiveCopyingConfig:
        if 2 * self.num_tokens_to_copy > self.seq_len:
            raise ValueError(
                f"num_tokens_to_copy: 2 * num_tokens_to_copy = {2 * self.num_tokens_to_copy} must be at most "
                f"seq_len = {self.seq_len} (the tokens appear once in the input and once as answers)"
            )
        return self


class CompressionConfig(_TaskConfig):
    """Compression (token-level form of MAD's): seq_len // 2 tokens, a compress marker, reproduce from blanks."""

    task: Literal["compression"] = "compression"
    vocab_size: int = Field(
        16, ge=3,
        description="Vocabulary size: id 0 blank, id 1 compress marker, data tokens from 2.",
    )
    seq_len: int = Field(32, ge=2, description="Tokens per example; seq_len // 2 tokens are compressed.")
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000


class MemorizationConfig(_TaskConfig):
    """MAD memorization: k v pairs under one fixed key->value map shared by every example of a seed."""

    task: Literal["memorization"] = "memorization"
    vocab_size: int = Field(256, ge=2, description="Vocabulary size: keys [0, V/2), values [V/2, 2*(V/2)).")
    seq_len: int = Field(32, ge=2, description="Tokens per example (even).")
    num_train: NumTrain = 10_000
    num_val: NumVal = 1_000

    @model_validator(mode="after")
    def _check(self) -> MemorizationConfig:
        _require_even("seq_len", self.seq_len)
        return self


class TokensConfig(_TaskConfig):
    """Pre-tokenised ids in raw binary files (uint16 or uint32, no header), read through a memmap."""

    task: Literal["tokens"] = "tokens"
    path: str = Field(description="Token file for training (and validation when val_path is not set).")
    val_path: str | None = Field(
        None,
        description="Separate validation token file; if unset the tail of `path` is held out.",
    )
    val_fraction: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="Share of `path` held out for validation when val_path is unset.",
    )
    dtype: Literal["uint16", "uint32"] = Field("uint16", description="Element type of the token files.")
    vocab_size: int = Field(ge=2, description="Vocabulary size of the model; every id in the files must be below it.")
    seq_len: int = Field(ge=1, description="Tokens per window.")
    num_train: int | None = Field(
        None, ge=1,
        description="Random training windows per epoch; default: training tokens // seq_len.",
    )
    num_val: int | None = Field(
        None, ge=1,
        description="Cap on the contiguous validation windows; default: all of them.",
    )


class TextConfig(_TaskConfig):
    """UTF-8 text files tokenised to bytes (ids 0-255) with BOS = 256 and EOS = 257 around each file."""

    task: Literal["text"] = "text"
    path: str | list[str] = Field(description="Text file(s) for training (and validation when val_path is not set).")
    val_path: str | list[str] | None = Field(
        None,
        description="Separate validation text file(s); if unset the tail of `path` is held out.",
    )
    val_fraction: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="Share of the training bytes held out for validation when val_path is unset.",
    )
    vocab_size: int = Field(
        258, ge=258,
        description="Vocabulary size of the model (256 bytes + BOS + EOS; larger pads).",
    )
    seq_len: int = Field(ge=1, description="Tokens per window.")
    add_bos: bool = Field(True, description="Put BOS (256) before each file.")
    add_eos: bool = Field(True, description="Put EOS (257) after each file.")
    num_train: int | None = Field(
        None, ge=1,
        description="Random training windows per epoch; default: training tokens // seq_len.",
    )
    num_val: int | None = Field(
        None, ge=1,
        description="Cap on the contiguous validation windows; default: all of them.",
    )


DataConfig = Annotated[
    Union[
        MQARConfig,
        InContextRecallConfig,
        NoisyRecallConfig,
        FuzzyRecallConfig,
        SelectiveCopyingConfig,
        CompressionConfig,
        MemorizationConfig,
        TokensConfig,
        TextConfig,
    ],
    Field(discriminator="task"),
]
"""Any data task, chosen by its `task` field."""

SYNTHETIC_TASKS = frozenset(
    {"mqar", "in_context_recall", "noisy_recall", "fuzzy_recall", "selective_copying", "compression", "memorization"}
)
"""Task names whose examples are generated (not read from files)."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(DataConfig)


def parse_data_config(data: Any) -> Any:
    """Validate a mapping (e.g. a YAML section) into the matching task config; raises pydantic.ValidationError."""
    return _ADAPTER.validate_python(data)


def with_absolute_paths(config: Any) -> Any:
    """``config`` with the files it names (``path`` and ``val_path`` of the tokens and text tasks) made absolute
    against the current working directory, as ``os.path.abspath`` does (``~`` is left as it is: the files are
    opened as written); any other config, or None, is returned unchanged.
    """
    if not isinstance(config, (TokensConfig, TextConfig)):
        return config

    def absolute(value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            return [os.path.abspath(item) for item in value]
        return None if value is None else os.path.abspath(value)

    return config.model_copy(update={"path": absolute(config.path), "val_path": absolute(config.val_path)})


def task_vocab_size(config: Any) -> int:
    """Embedding rows a model needs for `config`: every input and target id is below it (specials included)."""
    vocab_size = getattr(config, "vocab_size", None)
    if not isinstance(vocab_size, int):
        raise ValueError(f"config: expected a DataConfig with an int vocab_size, got {type(config).__name__}")
    return vocab_size
