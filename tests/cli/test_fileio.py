"""archspec.fileio.write_atomic: a file is replaced whole or not at all, and a failed write leaves no temporary file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from archspec.fileio import write_atomic


def _fails_halfway(error: BaseException):
    """A Path.write_bytes that writes half of the data, then raises ``error`` (a full disk, a Ctrl-C)."""

    def write_bytes(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise error

    return write_bytes


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "trials.csv"
    write_atomic(path, "a,b\n1,2\n")
    write_atomic(path, b"a,b\n3,4\n")
    assert path.read_text() == "a,b\n3,4\n"
    assert [p.name for p in path.parent.iterdir()] == ["trials.csv"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_write_that_fails_halfway_keeps_the_old_content_removes_the_temporary_file_and_raises(
    tmp_path, monkeypatch, error
):
    path = tmp_path / "result.json"
    path.write_text('{"steps": 30}\n')
    monkeypatch.setattr(Path, "write_bytes", _fails_halfway(error))
    with pytest.raises(type(error)):
        write_atomic(path, '{"steps": 60, "history": []}\n')
    assert path.read_text() == '{"steps": 30}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_rename_that_fails_removes_the_temporary_file_and_raises(tmp_path):
    path = tmp_path / "best.yaml"
    path.mkdir()  # a folder in the way: the rename onto it fails
    (path / "kept.txt").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(path, "name: x\n")
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]
    assert (path / "kept.txt").read_text() == "kept"


def test_training_writes_spec_yaml_and_result_json_through_it():
    from archspec import training

    assert training.write_atomic is write_atomic
