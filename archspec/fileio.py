"""Files the project writes and reads back: atomic writes that never leave a half-written file or a stray
temporary one, JSON records read with errors that name the file and the line, and OSErrors said in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "read_json_object", "os_error_text", "file_in_the_way"]


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    When writing or renaming fails (or is interrupted), the temporary file is removed, ``path`` keeps its
    previous content and the error is raised again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json_object(path: Path, expected: str, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``. Raises ValueError naming the file (and line and column) when it cannot be
    read, is not UTF-8 JSON, or is not an object; ``expected`` completes "a JSON object ..." (e.g. "of
    MambaConfig keys"), ``hint`` how to recover (appended after "; " when given)."""
    tail = f"; {hint}" if hint else ""
    try:
        record = json.loads(path.read_bytes())
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror}){tail}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON at column {err.colno} ({err.msg}){tail}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text{tail}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object {expected}, got {type(record).__name__}{tail}")
    return record


def os_error_text(exc: OSError) -> str:
    """``<path>: <reason>`` for an OSError from the system (naming the destination of a failed rename), else
    the exception's own message. A folder that cannot be made because a file is in the way (``mkdir`` of
    ``notes.txt/out``: "File exists" or "Not a directory") reads ``<file> is a file, not a folder``."""
    path = exc.filename2 or exc.filename
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and path is not None:
        wanted = Path(os.fsdecode(path))
        blocker = file_in_the_way(wanted)
        if blocker is not None:
            return f"{blocker} is a file, not a folder" + ("" if blocker == wanted else f", so {wanted} cannot be made")
    return f"{path}: {exc.strerror}" if path is not None and exc.strerror else str(exc)


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder, or None."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None
