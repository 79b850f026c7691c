"""Token-id files (raw uint16/uint32, no header) and the window datasets built on 1-D token arrays."""

from __future__ import annotations

import itertools
import os
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from archspec.data.config import TokensConfig
from archspec.data.seeding import check_split, make_generator

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_WRITE_CHUNK = 1 << 20


def _numpy_dtype(dtype: str) -> type[np.unsignedinteger]:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def write_token_file(path: str | os.PathLike[str], ids: Iterable[int], dtype: str = "uint16") -> int:
    """Write `ids` to `path` as raw little-endian `dtype` values; returns how many were written.

    Streams `ids` in chunks, so a generator over a large corpus never sits in memory whole.
    Raises ValueError naming `ids` when an id is negative or does not fit `dtype`.
    """
    np_dtype = _numpy_dtype(dtype)
    limit = np.iinfo(np_dtype).max
    iterator = iter(ids)
    written = 0
    with open(path, "wb") as handle:
        while chunk := list(itertools.islice(iterator, _WRITE_CHUNK)):
            array = np.asarray(chunk, dtype=np.int64)
            bad = np.flatnonzero((array < 0) | (array > limit))
            if bad.size:
                index = int(bad[0])
                raise ValueError(
                    f"ids: id {int(array[index])} at index {written + index} does not fit {dtype} (0..{limit})"
                )
            handle.write(array.astype(np.dtype(np_dtype).newbyteorder("<")).tobytes())
            written += array.size
    return written


class MemmapTokens:
    """A read-only 1-D view of a token file; the memmap opens lazily, so the object pickles to DataLoader workers."""

    def __init__(self, path: str | os.PathLike[str], dtype: str = "uint16", field: str = "path") -> None:
        self.path = os.fspath(path)
        self.dtype = np.dtype(_numpy_dtype(dtype)).newbyteorder("<")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{field}: token file {self.path!r} does not exist")
        size = os.path.getsize(self.path)
        if size % self.dtype.itemsize:
            raise ValueError(
                f"{field}: {self.path!r} has {size} bytes, not a multiple of {dtype}'s {self.dtype.itemsize}; "
                "is dtype right?"
            )
        self.length = size // self.dtype.itemsize
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._array[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


class TokenWindows(Dataset):
    """Windows of seq_len + 1 tokens; item i is dict(input_ids=w[:-1], targets=w[1:]) as LongTensor(seq_len)."""

    def __init__(
        self, tokens: np.ndarray | MemmapTokens, starts: np.ndarray, seq_len: int, vocab_size: int, name: str
    ) -> None:
        self.tokens = tokens
        self.starts = starts
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.name = name

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        window = np.asarray(self.tokens[start : start + self.seq_len + 1]).astype(np.int64)
        top = int(window.max())
        if top >= self.vocab_size:
            offset = start + int(window.argmax())
            raise ValueError(
                f"vocab_size: {self.name} holds id {top} at token {offset}, not below vocab_size = {self.vocab_size}"
            )
        ids = torch.from_numpy(window)
        return {"input_ids": ids[:-1], "targets": ids[1:]}


def window_dataset(
    tokens: np.ndarray | MemmapTokens,
    region: tuple[int, int],
    *,
    seq_len: int,
    vocab_size: int,
    split: str,
    seed: int,
    num_windows: int | None,
    name: str,
    field: str,
) -> TokenWindows:
    """Windows inside tokens[lo:hi]: random starts for train (seeded by seed and split), contiguous ones for val.

    Train draws `num_windows` starts (default (hi - lo) // seq_len); val takes consecutive non-overlapping windows
    from lo, at most `num_windows`. Raises ValueError naming `field` when the region is shorter than seq_len + 1.
    """
    check_split(split)
    lo, hi = region
    available = hi - lo
    if available < seq_len + 1:
        raise ValueError(
            f"{field}: the {split} split of {name} has {available} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    if split == "train":
        count = num_windows if num_windows is not None else available // seq_len
        generator = make_generator(seed, "windows", split)
        starts = lo + torch.randint(0, available - seq_len, (count,), generator=generator).numpy()
    else:
        count = (available - 1) // seq_len
        if num_windows is not None:
            count = min(count, num_windows)
        starts = lo + seq_len * np.arange(count, dtype=np.int64)
    return TokenWindows(tokens, starts, seq_len, vocab_size, name)


def held_out_cut(length: int, val_fraction: float) -> int:
    """Index splitting `length` tokens into train [0, cut) and val [cut, length): the last val_fraction held out."""
    return length - max(1, round(length * val_fraction))


def tokens_dataset(config: TokensConfig, split: str, seed: int) -> TokenWindows:
    """The train or val windows of a token-file config (a separate val_path, or the tail of `path`)."""
    check_split(split)
    common = dict(seq_len=config.seq_len, vocab_size=config.vocab_size, split=split, seed=seed)
    if config.val_path is not None:
        field = "path" if split == "train" else "val_path"
        tokens = MemmapTokens(config.path if split == "train" else config.val_path, config.dtype, field)
        region = (0, len(tokens))
    else:
        field = "path" if split == "train" else "val_fraction"
        tokens = MemmapTokens(config.path, config.dtype, "path")
        cut = held_out_cut(len(tokens), config.val_fraction)
        region = (0, cut) if split == "train" else (cut, len(tokens))
    num_windows = config.num_train if split == "train" else config.num_val
    return window_dataset(tokens, region, num_windows=num_windows, name=tokens.path, field=field, **common)
