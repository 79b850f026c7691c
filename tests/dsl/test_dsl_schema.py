"""JSON Schema export, block registration, the spec's own cross-field rules, and YAML reading details."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from dsl_helpers import TINY
from pydantic import BaseModel, Field, ValidationError

from archspec.errors import FieldError, SpecError
from archspec.layout import expand_layout
from archspec.loader import load_spec, parse_yaml, read_yaml
from archspec.schema import model_json_schema_text
from archspec.spec import ModelSpec, SSDSpec, block_spec_types, register_block_spec, unregister_block_spec


class HyenaSpec(BaseModel):
    """A user block type for the registration tests."""

    type: Literal["hyena_test"] = "hyena_test"
    order: int = Field(2, ge=1, le=4)
    filter_len: int = 64

    def check_model(self, d_model: int) -> None:
        if d_model % self.order:
            raise FieldError(("order",), f"order {self.order} does not divide d_model {d_model}")


@pytest.fixture
def hyena():
    register_block_spec(HyenaSpec)
    yield HyenaSpec
    unregister_block_spec("hyena_test")


def test_json_schema_is_strict_json_with_every_builtin_block_type() -> None:
    schema = json.loads(model_json_schema_text())
    assert schema["$schema"].startswith("https://json-schema.org/")
    mapping = schema["properties"]["blocks"]["additionalProperties"]["discriminator"]["mapping"]
    assert set(mapping) == {"ssd", "attention", "mlp"}
    for name in ("SSDSpec", "AttentionSpec", "MLPSpec", "RatioLayout", "RepeatGroup", "TrainingSpec", "MQARConfig"):
        assert name in schema["$defs"]
    assert schema["$defs"]["SSDSpec"]["properties"]["d_state"]["maximum"] == 256
    d_conv = schema["$defs"]["AttentionSpec"]["properties"]["d_conv"]
    assert (d_conv["default"], d_conv["minimum"], d_conv["maximum"]) == (0, 0, 8) and "conv" in d_conv["description"]


def test_registered_block_type_validates_from_yaml_and_appears_in_the_schema(write, hyena) -> None:
    text = TINY.replace("layout:", "  H:\n    type: hyena_test\n    order: 4\nlayout:")
    path = write("s.yaml", text.replace('"M F A F"', '"M H A F"'))
    spec = load_spec(path)
    assert isinstance(spec.blocks["H"], HyenaSpec) and spec.blocks["H"].order == 4
    assert expand_layout(spec) == ["M", "H", "A", "F"]
    assert "hyena_test" in block_spec_types()
    mapping = json.loads(model_json_schema_text())["properties"]["blocks"]["additionalProperties"]["discriminator"]
    assert "hyena_test" in mapping["mapping"]


def test_registered_block_errors_are_located_like_builtin_ones(write, hyena) -> None:
    text = TINY.replace("layout:", "  H:\n    type: hyena_test\n    order: 3\nlayout:")
    path = write("s.yaml", text)
    assert str(_error(path)) == f"{path}:17 blocks.H.order: order 3 does not divide d_model 64"
    path = write("t.yaml", text.replace("order: 3", "order: 9"))
    assert str(_error(path)) == f"{path}:17 blocks.H.order: must be at most 4, got 9"


def test_unregistered_types_are_rejected_again(write, hyena) -> None:
    unregister_block_spec("hyena_test")
    path = write("s.yaml", TINY.replace("type: mlp", "type: hyena_test"))
    assert str(_error(path)) == (
        f"{path}:14 blocks.F.type: unknown block type 'hyena_test', expected one of attention, mlp, ssd"
    )
    register_block_spec(HyenaSpec)  # the fixture removes it again


def test_register_block_spec_checks_its_argument(hyena) -> None:
    class NoType(BaseModel):
        x: int = 1

    class Other(BaseModel):
        type: Literal["hyena_test"] = "hyena_test"

    with pytest.raises(ValueError, match="needs a field `type"):
        register_block_spec(NoType)
    with pytest.raises(ValueError, match="already registered"):
        register_block_spec(Other)
    with pytest.raises(ValueError, match="built-in"):
        unregister_block_spec("ssd")
    assert register_block_spec(HyenaSpec) is HyenaSpec  # registering the same class again is a no-op


def test_model_spec_checks_cross_field_rules_in_python_too() -> None:
    with pytest.raises(ValidationError, match=r"blocks\.M\.head_dim: head_dim 48 does not divide d_inner"):
        ModelSpec(name="x", d_model=64, vocab_size=10, blocks={"M": {"type": "ssd", "head_dim": 48}}, layout="M")
    with pytest.raises(ValidationError, match=r"layout: unknown block symbol 'A' at column 3"):
        ModelSpec(name="x", d_model=64, vocab_size=10, blocks={"M": SSDSpec(head_dim=32)}, layout="M A")


def test_read_yaml_records_lines_of_keys_and_items(write) -> None:
    path = write("x.yaml", "a: 1\nb:\n  c: [x, y]\n  d:\n    - 1\n    - e: 2\n")
    data, lines = read_yaml(path)
    assert data == {"a": 1, "b": {"c": ["x", "y"], "d": [1, {"e": 2}]}}
    assert lines == {
        (): 1, ("a",): 1, ("b",): 2, ("b", "c"): 3, ("b", "c", 0): 3, ("b", "c", 1): 3,
        ("b", "d"): 4, ("b", "d", 0): 5, ("b", "d", 1): 6, ("b", "d", 1, "e"): 6,
    }


def test_yaml_floats_need_no_dot_and_merge_keys_work() -> None:
    data, _ = parse_yaml("lr: 1e-3\nbig: 3E4\nname: 1e\nbase: &b {x: 1}\nchild: {<<: *b, y: 2}\n")
    assert data["lr"] == 1e-3 and data["big"] == 3e4 and data["name"] == "1e"
    assert data["child"] == {"x": 1, "y": 2}


def test_yaml_syntax_error_in_a_string_source() -> None:
    with pytest.raises(SpecError) as info:
        parse_yaml("a: 1\n  b: 2\n", "inline")
    assert str(info.value) == "inline:2: YAML syntax error at column 4: mapping values are not allowed here"


def _error(path: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value
