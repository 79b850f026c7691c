"""JSON Schema export of the model spec (for editors and docs): ``archspec schema``."""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic_core
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaWarningKind

from archspec.spec import ModelSpec

__all__ = ["model_json_schema", "model_json_schema_text"]


class _FiniteDefaults(GenerateJsonSchema):
    """Leaves out defaults JSON cannot hold (infinite floats, e.g. ``dt_limit``), silently."""

    def encode_default(self, dft: Any) -> Any:
        if _has_non_finite(dft):
            raise pydantic_core.PydanticSerializationError("non-finite default")
        return super().encode_default(dft)

    def emit_warning(self, kind: JsonSchemaWarningKind, detail: str) -> None:
        if kind != "non-serializable-default":
            super().emit_warning(kind, detail)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


def model_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ModelSpec, including every registered block type."""
    schema = ModelSpec.model_json_schema(schema_generator=_FiniteDefaults)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def model_json_schema_text() -> str:
    """``model_json_schema()`` as indented JSON text (strict JSON: no NaN or Infinity)."""
    return json.dumps(model_json_schema(), indent=2, allow_nan=False) + "\n"
