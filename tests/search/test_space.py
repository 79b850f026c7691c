"""From searched values to a concrete spec: paths, hybrid knobs, infeasible values, constraints, grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from archspec.layout import expand_layout
from archspec.search.searchspec import load_search
from archspec.search.space import Infeasible, concrete_spec, grid, static_metrics, violations

from search_helpers import TINY_BASE, tiny_search, write_yaml


def _search(tmp_path, **fields):
    return load_search(write_yaml(tmp_path / "s.yaml", tiny_search(**fields)))


def test_paths_write_the_value_and_the_data_is_the_task(tmp_path):
    search = _search(tmp_path, sampler={"type": "random"},
                     space={"d_state": {"choices": [8, 16], "path": ["blocks.M.d_state"]},
                            "lr": {"low": 1e-3, "high": 1e-2, "path": "training.lr"}})
    spec = concrete_spec(search, {"d_state": 16, "lr": 0.005}, name="x")
    assert spec.blocks["M"].d_state == 16 and spec.training.lr == 0.005 and spec.name == "x"
    assert spec.data == search.data
    assert search.base.blocks["M"].d_state == 8  # the base is not modified


def test_hybrid_knobs_build_a_ratio_layout_and_drop_unused_blocks(tmp_path):
    base = {**TINY_BASE, "blocks": {**TINY_BASE["blocks"], "F": {"type": "mlp"}}, "layout": "(M A M F)*2"}
    search = _search(tmp_path, base=base, space={
        "attention_ratio": {"choices": [0.0, 0.25]},
        "placement": {"choices": ["even", "start", "end"]},
        "n_layers": {"low": 4, "high": 16, "step": 4},
    })
    assert search.base_shares() == {"A": 0.25, "F": 0.25}
    spec = concrete_spec(search, {"attention_ratio": 0.25, "placement": "start", "n_layers": 8})
    assert expand_layout(spec)[:2] == ["A", "A"] and sorted(expand_layout(spec)).count("F") == 2
    spec = concrete_spec(search, {"attention_ratio": 0.0, "placement": "end", "n_layers": 4})
    assert expand_layout(spec) == ["M", "M", "M", "F"] and "A" not in spec.blocks


def test_values_that_make_no_valid_spec_are_infeasible(tmp_path):
    search = _search(tmp_path, space={"heads": {"choices": [1, 3], "path": "blocks.A.n_heads"}})
    with pytest.raises(Infeasible, match="blocks.A"):
        concrete_spec(search, {"heads": 3})  # 3 heads do not divide d_model 32
    base = {**TINY_BASE, "blocks": {**TINY_BASE["blocks"], "F": {"type": "mlp"}}, "layout": "M A M F"}
    search = _search(tmp_path, base=base, space={"attention_ratio": {"choices": [0.75]},
                                                 "mlp_share": {"choices": [0.5]}})
    with pytest.raises(Infeasible, match="layout"):
        concrete_spec(search, {"attention_ratio": 0.75, "mlp_share": 0.5})


def test_static_metrics_and_constraint_violations(tmp_path):
    search = _search(tmp_path, constraints={"params": {"min": 100, "max": 9000}, "decode_state_bytes": {"max": 1}})
    metrics = static_metrics(search, concrete_spec(search, {"attention_ratio": 0.5, "d_state": 8}))
    assert (metrics["layout"], metrics["attention_layers"], metrics["attention_share"]) == ("M A", 1, 0.5)
    assert metrics["steps"] == int(search.budget_flops // metrics["flops_per_step"])
    assert metrics["train_memory_bytes"] == 16 * metrics["params"]
    broken = violations(search, metrics)
    assert len(broken) == 1 and broken[0].startswith("decode_state_bytes")
    metrics["params"] = 9500
    assert len(violations(search, metrics)) == 2
    metrics["flops_per_step"] = search.budget_flops * 1.5  # one step would outspend the budget
    assert violations(search, metrics)[0].startswith("one optimizer step costs")
    assert len(violations(search, metrics)) == 3


def test_grid_lists_every_value(tmp_path):
    search = _search(tmp_path, sampler={"type": "grid"}, space={
        "attention_ratio": {"low": 0.0, "high": 0.5, "step": 0.25},
        "d_state": {"low": 8, "high": 32, "step": 8, "path": "blocks.M.d_state"},
    })
    assert grid(search) == {"attention_ratio": [0.0, 0.25, 0.5], "d_state": [8, 16, 24, 32]}


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].joinpath("specs", "search").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_search_files_load_and_give_valid_specs_at_the_ends_of_their_ranges(path):
    search = load_search(path)
    for pick in (0, -1):
        values = {n: p.choices[pick] if hasattr(p, "choices") else (p.low, p.high)[pick]
                  for n, p in search.space.items()}
        metrics = static_metrics(search, concrete_spec(search, values))
        assert metrics["steps"] >= 1 and metrics["n_layers"] >= 1
