"""Shared settings of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread):
    """Every module here runs its tiny models on one thread (tests/conftest.py)."""
