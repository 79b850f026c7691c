"""``extends`` (deep merge, child wins, errors in the file that wrote the value) and ``--set`` overrides."""

from __future__ import annotations

import pytest
from dsl_helpers import TINY

from archspec.errors import SpecError
from archspec.layout import expand_layout
from archspec.loader import apply_overrides, load_spec, load_yaml_tree
from archspec.spec import AttentionSpec, MLPSpec, RatioLayout


def error_of(path: str, overrides: tuple[str, ...] = ()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value


def test_child_values_win_and_mappings_merge_key_by_key(write) -> None:
    write("base/common.yaml", TINY)
    child = write("child.yaml", """\
        extends: base/common.yaml
        name: child
        blocks:
          M:
            d_state: 32
        training:
          lr: 1.0e-3
        """)
    spec = load_spec(child)
    assert spec.name == "child" and spec.d_model == 64
    m = spec.blocks["M"]
    assert (m.d_state, m.head_dim, m.chunk_size) == (32, 32, 16)  # merged, not replaced
    assert set(spec.blocks) == {"M", "A", "F"}
    assert spec.training.lr == 1e-3 and spec.training.batch_size == 32


def test_lists_and_the_layout_are_replaced_not_merged(write) -> None:
    base = TINY.replace('layout: "M F A F"', "layout: {n_layers: 8, base: M, ratios: {A: 0.25}, placement: end}")
    write("base.yaml", base + "training:\n  betas: [0.8, 0.9]\n")
    child = write("child.yaml", 'extends: base.yaml\nlayout: "M A"\ntraining:\n  betas: [0.9, 0.99]\n')
    spec = load_spec(child)
    assert spec.layout == "M A" and expand_layout(spec) == ["M", "A"]
    assert spec.training.betas == (0.9, 0.99)
    again = write("again.yaml", "extends: child.yaml\nlayout: {n_layers: 4, base: M}\n")
    assert load_spec(again).layout == RatioLayout(n_layers=4, base="M")


def test_a_block_redefined_as_another_type_keeps_none_of_the_old_fields(write) -> None:
    write("base.yaml", TINY)
    child = write("child.yaml", "extends: base.yaml\nblocks:\n  A:\n    type: mlp\n    kind: gelu\n")
    spec = load_spec(child)
    assert isinstance(spec.blocks["A"], MLPSpec) and spec.blocks["A"].kind == "gelu"


def test_extends_chains_resolve_relative_to_each_file(write) -> None:
    write("a/base.yaml", TINY)
    write("a/b/mid.yaml", "extends: ../base.yaml\nd_model: 128\n")
    leaf = write("c/leaf.yaml", "extends: ../a/b/mid.yaml\nname: leaf\n")
    spec = load_spec(leaf)
    assert (spec.name, spec.d_model, spec.vocab_size) == ("leaf", 128, 128)


def test_an_error_in_the_base_points_at_the_base_file(write) -> None:
    base = write("base.yaml", TINY.replace("d_state: 16", "d_state: 999"))
    child = write("child.yaml", "extends: base.yaml\nname: child\n")
    assert str(error_of(child)) == f"{base}:7 blocks.M.d_state: must be at most 256, got 999"


def test_an_error_written_in_the_child_points_at_the_child(write) -> None:
    write("base.yaml", TINY)
    child = write("child.yaml", "extends: base.yaml\nblocks:\n  M:\n    d_state: 999\n")
    assert str(error_of(child)) == f"{child}:4 blocks.M.d_state: must be at most 256, got 999"


def test_a_cross_field_error_points_at_the_value_that_breaks_it(write) -> None:
    write("base.yaml", TINY)
    child = write("child.yaml", "extends: base.yaml\nlayout: M A B\n")
    assert str(error_of(child)) == f"{child}:2 layout: unknown block symbol 'B' at column 5, defined symbols: A, F, M"


def test_extends_cycle_is_reported_at_the_file_that_closes_it(write) -> None:
    a = write("a.yaml", "extends: b.yaml\nname: a\n")
    b = write("b.yaml", "name: b\nextends: a.yaml\n")
    assert str(error_of(a)) == f"{b}:2 extends: cycle {a} -> {b} -> {a}"
    self_loop = write("self.yaml", "extends: self.yaml\n")
    assert str(error_of(self_loop)) == f"{self_loop}:1 extends: cycle {self_loop} -> {self_loop}"


def test_missing_extends_file(write, tmp_path) -> None:
    child = write("child.yaml", "name: x\nextends: nope/base.yaml\n")
    assert str(error_of(child)) == f"{child}:2 extends: file not found: {tmp_path}/nope/base.yaml"


def test_extends_must_be_a_path(write) -> None:
    child = write("child.yaml", "extends: [a.yaml]\n")
    assert str(error_of(child)) == f"{child}:1 extends: must be a file path, got a list"


def test_load_yaml_tree_records_the_source_of_every_value(write) -> None:
    base = write("base.yaml", TINY)
    child = write("child.yaml", "extends: base.yaml\nblocks:\n  M:\n    d_state: 32\n")
    data, locs = load_yaml_tree(child)
    assert "extends" not in data and ("extends",) not in locs
    assert locs[("blocks", "M", "d_state")] == (child, 4)
    assert locs[("blocks", "M", "head_dim")] == (base, 8)
    assert locs[("layout",)] == (base, 15)


def test_overrides_set_nested_values_parsed_as_yaml(write) -> None:
    path = write("s.yaml", TINY)
    spec = load_spec(path, [
        "d_model=128",
        "blocks.M.d_state=64",
        "training.lr=1e-3",
        "layout=(M F)*2 A F",
        "blocks.A.n_kv_heads=1",
        "blocks.G={type: attention, n_heads: 4}",
    ])
    assert spec.d_model == 128 and spec.blocks["M"].d_state == 64
    assert spec.training.lr == 1e-3
    assert expand_layout(spec) == ["M", "F", "M", "F", "A", "F"]
    assert spec.blocks["A"].n_kv_heads == 1
    assert isinstance(spec.blocks["G"], AttentionSpec) and spec.blocks["G"].n_heads == 4


def test_overrides_reach_list_items_by_index_and_later_ones_win(write) -> None:
    path = write("s.yaml", TINY.replace('layout: "M F A F"', "layout: [M, {repeat: 2, layers: [A, F]}]"))
    spec = load_spec(path, ["layout[1].repeat=3", "layout.0=F", "d_model=96", "d_model=128"])
    assert expand_layout(spec) == ["F"] + ["A", "F"] * 3
    assert spec.d_model == 128


def test_override_creates_a_missing_model_section(write) -> None:
    spec = load_spec(write("s.yaml", TINY), ["data={task: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 4}"])
    assert spec.data is not None and spec.data.seq_len == 32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("d_modle=3", "unknown field 'd_modle', did you mean 'd_model'?"),
        ("blocks.M.d_stat=4", "unknown field 'd_stat' in blocks.M, did you mean 'd_state'?"),
        ("blocks.Q.d_state=3", "blocks has no entry 'Q'"),
        ("training.lrr=1", "unknown field 'lrr' in training, did you mean 'lr'?"),
        ("layout.0=A", "layout is the value 'M F A F'; it has no entry '0'"),
        ("data.seq_len=3", "data is not set; set the whole mapping"),
        ("d_model", "expected PATH=VALUE, e.g. blocks.M.d_state=64"),
        ("blocks..M=1", "malformed path 'blocks..M'"),
        (
            "d_model=[1",
            "cannot parse the value: YAML syntax error at column 3: expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_bad_override_names_the_override(write, override: str, message: str) -> None:
    path = write("s.yaml", TINY)
    assert str(error_of(path, (override,))) == f"override {override!r}: {message}"


def test_an_invalid_override_value_names_the_override_and_field(write) -> None:
    path = write("s.yaml", TINY)
    assert str(error_of(path, ("blocks.M.d_state=512",))) == (
        "override 'blocks.M.d_state=512' blocks.M.d_state: must be at most 256, got 512"
    )
    label = "override 'blocks.G={type: attention, n_head: 4}'"
    assert str(error_of(path, ("blocks.G={type: attention, n_head: 4}",))).splitlines() == [
        f"{label} blocks.G.n_heads: missing required field",
        f"{label} blocks.G.n_head: unknown field 'n_head', did you mean 'n_heads'?",
    ]


def test_apply_overrides_leaves_unrelated_locations_alone() -> None:
    data = {"name": "x", "blocks": {"M": {"type": "ssd", "d_state": 16}}}
    locs = {("name",): ("f.yaml", 1), ("blocks", "M", "d_state"): ("f.yaml", 4)}
    apply_overrides(data, ["blocks.M.d_state=32"], locs)
    assert data["blocks"]["M"]["d_state"] == 32
    assert locs == {("name",): ("f.yaml", 1), ("blocks", "M", "d_state"): ("override 'blocks.M.d_state=32'", None)}
