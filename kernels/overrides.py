"""Kernel tuning hooks read from the environment: VAR="field=value,field=value" with integer values."""

from __future__ import annotations

import os

__all__ = ["env_overrides"]


def env_overrides(variable: str) -> dict[str, int]:
    """The fields set by environment variable `variable` ({} when it is unset or empty)."""
    spec = os.environ.get(variable)
    if not spec:
        return {}
    return {k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(",") if item.strip())}
