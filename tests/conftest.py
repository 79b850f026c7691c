"""Suite-wide test settings: `gpu` tests skip without CUDA, `postgres` tests without a server binary.

Without CUDA the Triton kernels run in Triton's interpreter: TRITON_INTERPRET is read when triton is first
imported, so it is set here, before any test module imports archspec.kernels.ssd.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def postgres_bin_dir() -> str | None:
    """The folder holding pg_ctl and initdb, or None when no PostgreSQL server is installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if shutil.which("initdb", path=candidate) and shutil.which("pg_ctl", path=candidate):
            return candidate
    found = shutil.which("initdb")
    return found.rsplit("/", 1)[0] if found and shutil.which("pg_ctl") else None


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread (and far faster when other processes share the cores);
    the training, CLI and eval tests use it for every module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_pg = pytest.mark.skip(reason="needs a PostgreSQL server (initdb/pg_ctl not found)")
    has_cuda = torch.cuda.is_available()
    has_pg = postgres_bin_dir() is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(no_cuda)
        if "postgres" in item.keywords and not has_pg:
            item.add_marker(no_pg)
