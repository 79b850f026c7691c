"""Fixtures for the DSL tests: writing small spec files into a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], str]:
    """write(name, text) -> path (str) of a file holding the dedented text."""

    def _write(name: str, text: str) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return str(path)

    return _write
