"""Result files of a search: CSV from rows of dicts (atomic writes: archspec.fileio.write_atomic)."""

from __future__ import annotations

import csv
import io
from typing import Any


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV with a header of every key seen, in first-seen order; missing cells are empty."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
