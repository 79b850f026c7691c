"""Byte-level tokenizer (ids 0-255 are bytes, 256 BOS, 257 EOS) and windows over UTF-8 text files."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from archspec.data.config import TextConfig
from archspec.data.seeding import check_split
from archspec.data.tokens import TokenWindows, held_out_cut, window_dataset

BOS_ID = 256
EOS_ID = 257
BYTE_VOCAB_SIZE = 258


class ByteTokenizer:
    """UTF-8 bytes as ids, with optional BOS (256) / EOS (257) around each encoded text. vocab_size is 258."""

    vocab_size = BYTE_VOCAB_SIZE
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, add_bos: bool = False, add_eos: bool = False) -> None:
        self.add_bos = add_bos
        self.add_eos = add_eos

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """(len(data) + specials,) uint16 ids of raw bytes, with BOS / EOS as configured."""
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        parts = [np.array([BOS_ID], np.uint16)] if self.add_bos else []
        parts.append(ids)
        if self.add_eos:
            parts.append(np.array([EOS_ID], np.uint16))
        return np.concatenate(parts)

    def encode(self, text: str) -> list[int]:
        """Ids of the UTF-8 encoding of `text`, with BOS / EOS as configured."""
        return self.encode_bytes(text.encode("utf-8")).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the byte ids in `ids` (BOS / EOS dropped; invalid UTF-8 becomes U+FFFD)."""
        values = [int(i) for i in ids]
        bad = [i for i in values if not 0 <= i < BYTE_VOCAB_SIZE]
        if bad:
            raise ValueError(f"ids: expected ids in [0, {BYTE_VOCAB_SIZE}), got {bad[0]}")
        return bytes(i for i in values if i < 256).decode("utf-8", errors="replace")


def read_text_tokens(paths: str | list[str], tokenizer: ByteTokenizer, field: str = "path") -> np.ndarray:
    """(n,) uint16: the files in `paths`, each checked as UTF-8 and tokenised as one document, concatenated."""
    parts = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{field}: text file {os.fspath(path)!r} does not exist")
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{field}: {os.fspath(path)!r} is not UTF-8 text (bad byte at offset {error.start})"
            ) from None
        parts.append(tokenizer.encode_bytes(data))
    if not parts:
        raise ValueError(f"{field}: expected at least one text file, got none")
    return np.concatenate(parts)


def text_dataset(config: TextConfig, split: str, seed: int) -> TokenWindows:
    """The train or val windows of a text config (a separate val_path, or the tail of `path`)."""
    check_split(split)
    tokenizer = ByteTokenizer(config.add_bos, config.add_eos)
    if config.val_path is not None:
        field = "path" if split == "train" else "val_path"
        paths = config.path if split == "train" else config.val_path
        tokens = read_text_tokens(paths, tokenizer, field)
        region = (0, len(tokens))
    else:
        field = "path" if split == "train" else "val_fraction"
        paths = config.path
        tokens = read_text_tokens(paths, tokenizer, "path")
        cut = held_out_cut(len(tokens), config.val_fraction)
        region = (0, cut) if split == "train" else (cut, len(tokens))
    return window_dataset(
        tokens,
        region,
        seq_len=config.seq_len,
        vocab_size=config.vocab_size,
        split=split,
        seed=seed,
        num_windows=config.num_train if split == "train" else config.num_val,
        name=str(paths),
        field=field,
    )
