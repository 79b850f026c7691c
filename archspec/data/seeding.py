"""Stable seed derivation: every random stream is a pure function of (seed, names), never of global RNG state."""

from __future__ import annotations

import hashlib
import operator

import torch

SPLITS = ("train", "val")


def check_split(split: str) -> str:
    """Return `split` if it is "train" or "val"; otherwise raise ValueError naming the argument."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed from `seed` and a path of names (stable across processes and Python versions)."""
    if isinstance(seed, bool):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed: expected an int, got {seed!r}") from None
    digest = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_generator(seed: int, *names: str) -> torch.Generator:
    """A CPU torch.Generator seeded with `derive_seed(seed, *names)`."""
    return torch.Generator().manual_seed(derive_seed(seed, *names))
