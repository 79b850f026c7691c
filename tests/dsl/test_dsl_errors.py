"""Each kind of spec mistake gives one SpecError naming file, line, field and a human message."""

from __future__ import annotations

import pytest

from archspec.errors import FieldError, SpecError
from archspec.loader import load_spec, spec_from_dict, validate_model

from dsl_helpers import TINY


def error_of(path: str, overrides: tuple[str, ...] = ()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value


def test_unknown_field_names_line_and_suggests_the_close_field(write) -> None:
    path = write("s.yaml", TINY.replace("    d_state: 16", "    d_stat: 16"))
    err = error_of(path)
    assert str(err) == f"{path}:7 blocks.M.d_stat: unknown field 'd_stat', did you mean 'd_state'?"
    assert (err.source, err.line, err.field, err.hint) == (path, 7, "blocks.M.d_stat", "did you mean 'd_state'?")
    assert isinstance(err, ValueError)


def test_unknown_field_without_close_match_lists_the_known_fields(write) -> None:
    path = write("s.yaml", TINY + "training:\n  zzz: 1\n")
    err = error_of(path)
    assert err.line == 17 and err.field == "training.zzz" and err.message == "unknown field 'zzz'"
    assert err.hint.startswith("known fields: batch_size, accumulate_grad_batches")


def test_out_of_range_value(write) -> None:
    path = write("s.yaml", TINY.replace("d_state: 16", "d_state: 512"))
    assert str(error_of(path)) == f"{path}:7 blocks.M.d_state: must be at most 256, got 512"


def test_value_below_minimum(write) -> None:
    path = write("s.yaml", TINY.replace("d_model: 64", "d_model: 4"))
    assert str(error_of(path)) == f"{path}:2 d_model: must be at least 8, got 4"


def test_wrong_type(write) -> None:
    path = write("s.yaml", TINY.replace("n_heads: 2", "n_heads: two"))
    assert str(error_of(path)) == f"{path}:12 blocks.A.n_heads: must be an integer, got 'two'"


def test_wrong_literal_lists_the_choices(write) -> None:
    path = write("s.yaml", TINY + "norm: rms\n")
    assert str(error_of(path)) == f"{path}:16 norm: must be one of 'rmsnorm', 'layernorm', got 'rms'"


def test_missing_required_field_points_at_its_parent(write) -> None:
    path = write("s.yaml", TINY.replace("    n_heads: 2\n", ""))
    assert str(error_of(path)) == f"{path}:10 blocks.A.n_heads: missing required field"


def test_unknown_block_type(write) -> None:
    path = write("s.yaml", TINY.replace("type: mlp", "type: ssm"))
    assert str(error_of(path)) == (
        f"{path}:14 blocks.F.type: unknown block type 'ssm', expected one of attention, mlp, ssd, did you mean 'ssd'?"
    )


def test_missing_block_type(write) -> None:
    path = write("s.yaml", TINY.replace("    type: mlp\n", "    kind: gelu\n"))
    assert str(error_of(path)) == f"{path}:13 blocks.F.type: missing block type, expected one of attention, mlp, ssd"


def test_unknown_data_task_suggests_the_close_one(write) -> None:
    path = write("s.yaml", TINY + "data:\n  task: mqr\n")
    err = error_of(path)
    assert err.line == 17 and err.field == "data.task" and err.hint == "did you mean 'mqar'?"
    assert err.message.startswith("unknown task 'mqr', expected one of compression, fuzzy_recall")


def test_data_task_rule_points_at_the_named_field(write) -> None:
    data = "data:\n  task: mqar\n  vocab_size: 128\n  seq_len: 16\n  num_kv_pairs: 8\n"
    path = write("s.yaml", TINY + data)
    err = error_of(path)
    assert (err.line, err.field) == (20, "data.num_kv_pairs")
    assert err.message.startswith("4 * num_kv_pairs = 32 must be at most seq_len = 16")


def test_undefined_layout_symbol_in_a_pattern_names_the_column(write) -> None:
    path = write("s.yaml", TINY.replace('layout: "M F A F"', 'layout: "M F B F"'))
    assert str(error_of(path)) == f"{path}:15 layout: unknown block symbol 'B' at column 5, defined symbols: A, F, M"


def test_undefined_layout_symbol_suggests_a_defined_one(write) -> None:
    text = TINY.replace("  A:\n", "  Attn:\n").replace('layout: "M F A F"', 'layout: "M F Atn F"')
    path = write("s.yaml", text)
    assert str(error_of(path)) == f"{path}:15 layout: unknown block symbol 'Atn' at column 5, did you mean 'Attn'?"


def test_undefined_symbol_in_a_nested_list_layout_points_at_its_item(write) -> None:
    layout = "layout:\n  - M\n  - repeat: 2\n    layers:\n      - F\n      - Q\n"
    path = write("s.yaml", TINY.replace('layout: "M F A F"\n', layout))
    assert str(error_of(path)) == f"{path}:20 layout[1].layers[1]: unknown block symbol 'Q', defined symbols: A, F, M"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("M (F A", "'(' at column 3 is never closed"),
        ("M F) A", "unmatched ')' at column 4"),
        ("M*", "expected a repeat count after '*' at column 2"),
        ("M*0", "repeat count at column 3 must be at least 1, got 0"),
        ("*3", "'*' at column 1 has nothing to repeat"),
        ("M # A", "unexpected character '#' at column 3"),
        ("M () A", "empty group '()' at column 3"),
        ("M 3", "unexpected number at column 3, write a repeat as SYMBOL*N or (...)*N"),
        ("MA*3", "repeat after the run 'MA' at column 3 is ambiguous, write M A*N or (M A)*N"),
        ("  ", "empty pattern"),
    ],
)
def test_bad_pattern_syntax_names_the_column(write, pattern: str, message: str) -> None:
    path = write("s.yaml", TINY.replace('layout: "M F A F"', f'layout: "{pattern}"'))
    assert str(error_of(path)) == f"{path}:15 layout: {message}"


def test_ratio_shares_above_one(write) -> None:
    layout = "layout:\n  n_layers: 8\n  base: M\n  ratios:\n    A: 0.7\n    F: 0.5\n"
    path = write("s.yaml", TINY.replace('layout: "M F A F"\n', layout))
    assert str(error_of(path)) == f"{path}:18 layout.ratios: shares add up to 0.7 + 0.5 = 1.2, more than 1"


def test_ratio_counts_that_round_above_n_layers(write) -> None:
    layout = "layout:\n  n_layers: 3\n  base: M\n  ratios:\n    A: 0.5\n    F: 0.5\n"
    path = write("s.yaml", TINY.replace('layout: "M F A F"\n', layout))
    assert str(error_of(path)) == (
        f"{path}:18 layout.ratios: the shares round to 4 layers (A: 2, F: 2), more than n_layers = 3"
    )


def test_ratio_with_undefined_symbol_points_at_its_key(write) -> None:
    layout = "layout:\n  n_layers: 8\n  base: M\n  ratios:\n    B: 0.25\n"
    path = write("s.yaml", TINY.replace('layout: "M F A F"\n', layout))
    assert str(error_of(path)) == f"{path}:19 layout.ratios.B: unknown block symbol 'B', defined symbols: A, F, M"


def test_head_dim_not_dividing_d_inner(write) -> None:
    path = write("s.yaml", TINY.replace("d_model: 64", "d_model: 72"))
    assert str(error_of(path)) == (
        f"{path}:8 blocks.M.head_dim: head_dim 32 does not divide d_inner = expand * d_model = 2 * 72 = 144, "
        "use a head_dim that divides 144, e.g. 36"
    )


def test_ngroups_not_dividing_nheads(write) -> None:
    path = write("s.yaml", TINY.replace("    chunk_size: 16\n", "    chunk_size: 16\n    ngroups: 3\n"))
    assert str(error_of(path)) == (
        f"{path}:10 blocks.M.ngroups: ngroups 3 does not divide nheads = d_inner / head_dim = 128 / 32 = 4"
    )


def test_attention_heads_not_dividing_d_model_without_head_dim(write) -> None:
    path = write("s.yaml", TINY.replace("n_heads: 2", "n_heads: 3"))
    assert str(error_of(path)) == (
        f"{path}:12 blocks.A.n_heads: n_heads 3 does not divide d_model 64 (head_dim defaults to d_model // n_heads), "
        "set head_dim or choose n_heads dividing d_model"
    )
    fixed = write("t.yaml", TINY.replace("n_heads: 2", "n_heads: 3\n    head_dim: 32"))
    assert load_spec(fixed).blocks["A"].head_dim == 32


def test_kv_heads_not_dividing_heads(write) -> None:
    path = write("s.yaml", TINY.replace("n_heads: 2", "n_heads: 2\n    n_kv_heads: 3"))
    assert str(error_of(path)) == f"{path}:13 blocks.A.n_kv_heads: n_kv_heads 3 does not divide n_heads 2"


def test_attention_conv_width_is_zero_or_two_to_eight(write) -> None:
    path = write("s.yaml", TINY.replace("n_heads: 2", "n_heads: 2\n    d_conv: 1"))
    assert str(error_of(path)) == f"{path}:13 blocks.A.d_conv: must be 0 (no conv) or from 2 to 8, got 1"
    path = write("t.yaml", TINY.replace("n_heads: 2", "n_heads: 2\n    d_conv: 9"))
    assert str(error_of(path)) == f"{path}:13 blocks.A.d_conv: must be at most 8, got 9"
    path = write("u.yaml", TINY.replace("n_heads: 2", "n_heads: 2\n    d_conv: -1"))
    assert str(error_of(path)) == f"{path}:13 blocks.A.d_conv: must be at least 0, got -1"
    for width in (0, 2, 8):
        path = write(f"ok{width}.yaml", TINY.replace("n_heads: 2", f"n_heads: 2\n    d_conv: {width}"))
        assert load_spec(path).blocks["A"].d_conv == width


def test_chunk_size_must_be_a_power_of_two(write) -> None:
    path = write("s.yaml", TINY.replace("chunk_size: 16", "chunk_size: 24"))
    assert str(error_of(path)) == f"{path}:9 blocks.M.chunk_size: must be a power of two, got 24"


def test_block_symbol_must_be_an_identifier(write) -> None:
    path = write("s.yaml", TINY.replace("  F:\n", "  my-mlp:\n"))
    assert str(error_of(path)) == (
        f"{path}:13 blocks.my-mlp: block symbol 'my-mlp' is not an identifier, "
        "use letters, digits and '_', starting with a letter"
    )


def test_vocab_must_cover_the_data_task(write) -> None:
    data = "data:\n  task: mqar\n  vocab_size: 256\n  seq_len: 64\n  num_kv_pairs: 8\n"
    path = write("s.yaml", TINY + data)
    assert str(error_of(path)) == (
        f"{path}:3 vocab_size: 128 does not cover the mqar task's vocabulary of 256 tokens, "
        "set vocab_size to at least 256"
    )


def test_vocab_rule_holds_for_specs_built_in_python() -> None:
    from pydantic import ValidationError

    from archspec.spec import ModelSpec

    with pytest.raises(ValidationError, match="128 does not cover the mqar task's vocabulary of 256 tokens"):
        ModelSpec(name="tiny", d_model=64, vocab_size=128, blocks={"F": {"type": "mlp"}}, layout="F",
                  data={"task": "mqar", "vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8})


def test_yaml_syntax_error_names_line_and_column(write) -> None:
    path = write("s.yaml", TINY.replace("    n_heads: 2", "    n_heads: [2"))
    assert str(error_of(path)) == f"{path}:13: YAML syntax error at column 4: expected ',' or ']', but got ':'"


def test_duplicate_key_is_an_error(write) -> None:
    path = write("s.yaml", TINY + "d_model: 32\n")
    assert str(error_of(path)) == f"{path}:16 d_model: duplicate key 'd_model' (first at line 2)"


def test_top_level_must_be_a_mapping(write) -> None:
    path = write("s.yaml", "- M\n- A\n")
    assert str(error_of(path)) == f"{path}:1: the top level must be a mapping of fields, got a list"


def test_missing_spec_file(tmp_path) -> None:
    path = str(tmp_path / "nope.yaml")
    assert str(error_of(path)) == f"{path}: file not found"


def test_a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(TINY.encode() + "# written by caf\xe9 editor\n".encode("latin-1"))
    assert str(error_of(str(path))) == f"{path}:16: not UTF-8 text (byte 0xe9), save the file as UTF-8"


def test_several_problems_are_all_reported_in_file_order(write) -> None:
    text = TINY.replace("d_model: 64", "d_model: x").replace("d_state: 16", "d_state: 0")
    err = error_of(write("s.yaml", text))
    assert [(e.line, e.field) for e in [err, *err.also]] == [(2, "d_model"), (7, "blocks.M.d_state")]
    assert str(err).splitlines()[1].endswith("blocks.M.d_state: must be at least 1, got 0")


def test_spec_from_dict_names_the_source_without_lines() -> None:
    blocks = {"M": {"type": "ssd", "head_dim": 300}}
    data = {"name": "x", "d_model": 64, "vocab_size": 10, "blocks": blocks, "layout": "M"}
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, "trial 3")
    assert str(info.value) == "trial 3 blocks.M.head_dim: must be at most 256, got 300"


def test_validate_model_works_for_other_schemas_with_a_plain_linemap() -> None:
    from pydantic import BaseModel, Field, model_validator

    class Inner(BaseModel):
        lo: int = 0
        hi: int = Field(10, le=100)

        @model_validator(mode="after")
        def _order(self) -> Inner:
            if self.lo > self.hi:
                raise FieldError(("lo",), f"must not exceed hi ({self.hi})")
            return self

    class Search(BaseModel):
        trials: int = Field(ge=1)
        space: dict[str, Inner]

    linemap = {(): 1, ("trials",): 1, ("space",): 2, ("space", "x"): 3, ("space", "x", "lo"): 4}
    data = {"trials": 0, "space": {"x": {"lo": 50, "hi": 200}}}
    with pytest.raises(SpecError) as info:
        validate_model(Search, data, source="search.yaml", linemap=linemap)
    assert str(info.value).splitlines() == [
        "search.yaml:1 trials: must be at least 1, got 0",
        "search.yaml:3 space.x.hi: must be at most 100, got 200",
    ]
    data["trials"] = 5
    data["space"]["x"]["hi"] = 20
    with pytest.raises(SpecError) as info:
        validate_model(Search, data, source="search.yaml", linemap=linemap)
    assert str(info.value) == "search.yaml:4 space.x.lo: must not exceed hi (20)"
    assert validate_model(Search, {"trials": 1, "space": {}}, source="s").trials == 1


def test_spec_error_formats_without_line_or_field() -> None:
    assert str(SpecError("boom", source="a.yaml")) == "a.yaml: boom"
    assert str(SpecError("boom", source="a.yaml", field="x.y")) == "a.yaml x.y: boom"
    assert str(SpecError("boom", source="a.yaml", line=3, field="x", hint="try y")) == "a.yaml:3 x: boom, try y"
    assert str(SpecError("boom")) == "boom"
