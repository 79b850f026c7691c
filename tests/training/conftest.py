"""A tiny CPU version of the shipped tiny-hybrid spec (SSD, MLP, attention, MLP on a small MQAR task)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archspec.loader import load_spec
from archspec.spec import ModelSpec

SPECS = Path(__file__).resolve().parents[2] / "specs"

TINY_OVERRIDES = [
    "d_model=32", "vocab_size=32", "blocks.M.d_state=16", "blocks.M.chunk_size=16",
    "data.vocab_size=32", "data.seq_len=32", "data.num_kv_pairs=2", "data.num_train=256", "data.num_val=32",
    "training.batch_size=8", "training.max_steps=30", "training.warmup_steps=3", "training.lr=1e-2",
    "training.val_every_steps=10", "training.val_batches=2",
]


def tiny_hybrid(*extra: str) -> ModelSpec:
    """specs/tiny-hybrid.yaml shrunk to d_model 32, MQAR with 2 kv pairs in 32 tokens, batch 8, 30 steps."""
    return load_spec(SPECS / "tiny-hybrid.yaml", [*TINY_OVERRIDES, *extra])


@pytest.fixture(scope="session")
def make_tiny_spec():
    """``tiny_hybrid``: call it with extra "key=value" overrides."""
    return tiny_hybrid


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return tiny_hybrid()


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    """Every module here runs its tiny models on one thread (tests/conftest.py)."""
