"""The one exception type for spec problems, the located error the schema raises internally, and the error for
a run folder that cannot be used.

``SpecError`` is what users see: it names the file, the line, the dotted field path and a hint::

    specs/x.yaml:12 blocks.M.d_state: must be at most 256, got 512

``FieldError`` is raised inside pydantic validators of the schema when a cross-field rule fails at a
place deeper than the validator itself (e.g. one item of the layout); ``archspec.loader`` reads its
``path`` to point the ``SpecError`` at the right line.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

__all__ = ["DeviceError", "FieldError", "RunDirError", "SpecError", "did_you_mean"]


class SpecError(ValueError):
    """A problem in a spec, located in its source.

    Attributes: ``message`` (what is wrong), ``source`` (file path, ``"override 'a=b'"`` or ``"<dict>"``),
    ``line`` (1-based, or None when unknown), ``field`` (dotted path such as ``blocks.M.d_state``, or None),
    ``hint`` (how to fix it, or None), ``also`` (further problems found in the same validation, each a
    SpecError). ``str()`` is ``"source:line field: message, hint"``; parts that are unknown are left out
    (``"source field: message"`` without a line, ``"source: message"`` without a field); each problem in
    ``also`` follows on its own line.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        self.hint = hint
        self.also: list[SpecError] = []
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        if self.field:
            where = f"{where} {self.field}" if where else self.field
        text = f"{self.message}, {self.hint}" if self.hint else self.message
        head = f"{where}: {text}" if where else text
        return "\n".join([head, *(str(other) for other in self.also)])


class FieldError(ValueError):
    """A validation failure at ``path`` (keys / list indices) relative to the object being validated.

    Raised from pydantic validators; pydantic keeps the exception in the error's ``ctx["error"]``, so the
    loader can extend the error location by ``path``. ``str()`` reads well on its own for Python users.
    """

    def __init__(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        self.path = path
        self.message = message
        self.hint = hint
        where = _dotted(path)
        text = f"{message}, {hint}" if hint else message
        super().__init__(f"{where}: {text}" if where else text)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate to ``name``, or None when nothing is close."""
    matches = get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else None


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)


class RunDirError(ValueError):
    """A run folder that cannot be used: it holds a run of a different spec, a spec.yaml that cannot be read, a
    damaged checkpoint, or no checkpoint where one is needed. The message names the folder or file."""


class DeviceError(ValueError):
    """An accelerator or device count this machine does not have (``--accelerator gpu`` without CUDA, more
    ``--devices`` than visible GPUs). The message names the option and what is available."""
