"""Runs trained once for the eval / generate tests: tiny-hybrid on MQAR and on byte-level text, 3 steps each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from eval_helpers import TEXT, mqar_spec, text_spec, train_tiny


@pytest.fixture(scope="session")
def mqar_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """(run folder, its result.json) of tiny-hybrid trained on MQAR."""
    out = tmp_path_factory.mktemp("eval") / "mqar"
    with torch.random.fork_rng():
        return out, train_tiny(mqar_spec(), out)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """(run folder, its result.json) of tiny-hybrid (vocab 258) trained on byte-level text."""
    root = tmp_path_factory.mktemp("eval_text")
    text_file = root / "corpus.txt"
    text_file.write_text(TEXT)
    out = root / "run"
    with torch.random.fork_rng():
        return out, train_tiny(text_spec(text_file), out)


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    """Every module here runs its tiny models on one thread (tests/conftest.py)."""
