"""Optuna search over hybrid SSD / attention architectures at a fixed training-FLOP budget, and comparisons.

- ``load_search`` reads a search YAML (``archspec.search.searchspec``);
- ``run_search`` creates or resumes the study and runs trials (``archspec.search.study``);
- ``write_report`` writes the results table, best spec(s) and plots (``archspec.search.report``);
- ``compare`` trains several specs at one budget on the same data (``archspec.search.compare``);
- ``run_bench`` times the SSD mixer against attention over sequence lengths (``archspec.search.bench``).

Importing this package is cheap; the submodules load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SearchSpec": "archspec.search.searchspec",
    "load_search": "archspec.search.searchspec",
    "run_search": "archspec.search.study",
    "resolve_target": "archspec.search.study",
    "open_study": "archspec.search.study",
    "write_report": "archspec.search.report",
    "compare": "archspec.search.compare",
    "run_bench": "archspec.search.bench",
    "BenchConfig": "archspec.search.bench",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'archspec.search' has no attribute {name!r}")
