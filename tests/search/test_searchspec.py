"""Search files: what they may say, the defaults they get, and mistakes reported as file:line field."""

from __future__ import annotations

import pytest

from archspec.errors import SpecError
from archspec.search.searchspec import CategoricalParam, FloatParam, IntParam, load_search

from search_helpers import TINY_BASE, tiny_search, write_yaml


def _error(tmp_path, text: str) -> SpecError:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_search(path)
    return info.value


def test_entries_without_type_are_inferred_and_defaults_filled(tmp_path):
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        space={
            "placement": {"choices": ["even", "end"]},
            "n_kv": {"low": 1, "high": 1, "path": "blocks.A.n_kv_heads"},
            "lr": {"low": 1e-4, "high": 1e-2, "log": True, "path": "training.lr"},
        },
        objectives=["val_accuracy"],
        pruner=None,
        sampler={"type": "tpe"},
    )))
    assert isinstance(search.space["placement"], CategoricalParam)
    assert isinstance(search.space["n_kv"], IntParam)
    assert isinstance(search.space["lr"], FloatParam) and search.space["lr"].log
    assert search.objectives[0].direction == "maximize"
    assert search.pruner.type == "median" and search.monitor == "val_accuracy"
    assert (search.hybrid.ssd, search.hybrid.attention, search.hybrid.n_layers) == ("M", "A", 2)
    assert search.data.task == "mqar"


def test_base_path_is_relative_to_the_search_file(tmp_path):
    write_yaml(tmp_path / "models" / "tiny.yaml", {**TINY_BASE, "data": tiny_search()["task"]})
    search_file = tmp_path / "searches" / "s.yaml"
    data = tiny_search(base="../models/tiny.yaml")
    del data["task"]
    search = load_search(write_yaml(search_file, data))
    assert search.base.name == "tiny-base" and search.data.seq_len == 16


def test_unknown_field_names_file_line_and_field(tmp_path):
    text = write_yaml(tmp_path / "ok.yaml", tiny_search()).read_text() + "sampelr: {type: tpe}\n"
    err = _error(tmp_path, text)
    line = len(text.splitlines())
    assert err.line == line and err.field == "sampelr"
    assert str(err).startswith(f"{tmp_path / 'search.yaml'}:{line} sampelr: unknown field")
    assert "did you mean 'sampler'" in str(err)


def test_space_path_that_is_no_spec_field_is_located(tmp_path):
    text = write_yaml(tmp_path / "ok.yaml", tiny_search()).read_text()
    text = text.replace("path: blocks.M.d_state", "path: blocks.M.d_stat")
    err = _error(tmp_path, text)
    assert err.field == "space.d_state.path"
    assert err.line == next(i for i, line in enumerate(text.splitlines(), 1) if "d_stat\n" in line + "\n")
    assert "has no field 'd_stat'" in err.message and "did you mean 'd_state'" in str(err)


def test_knob_without_an_attention_block_in_the_base(tmp_path):
    base = {**TINY_BASE, "blocks": {"M": TINY_BASE["blocks"]["M"]}, "layout": "M M"}
    text = write_yaml(tmp_path / "ok.yaml", tiny_search(base=base)).read_text()
    err = _error(tmp_path, text)
    assert err.field == "space.attention_ratio" and "no attention block" in err.message
    assert err.line is not None


def test_inline_base_mistakes_point_into_the_base(tmp_path):
    base = {**TINY_BASE, "blocks": {**TINY_BASE["blocks"], "M": {**TINY_BASE["blocks"]["M"], "d_state": 512}}}
    err = _error(tmp_path, write_yaml(tmp_path / "ok.yaml", tiny_search(base=base)).read_text())
    assert err.field == "base.blocks.M.d_state" and "256" in err.message and err.line is not None


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"objectives": ["val_loss", "params"], "pruner": {"type": "median"}}, "pruner.type", "single objective"),
        ({"objectives": ["params"], "pruner": {"type": "median"}}, "pruner.type", "before training"),
        ({"objectives": ["val_loss", "val_loss"]}, "objectives[1]", "listed twice"),
        ({"space": {"attention_ratio": {"low": 0.0, "high": 1.5}}}, "space.attention_ratio", "between 0 and 1"),
        ({"space": {"placement": {"choices": ["middle"]}}}, "space.placement", "even, start, end"),
        ({"space": {"lr": {"low": 0.001, "high": 0.01}}}, "space.lr", "needs a path"),
        ({"space": {"lr": {"low": 0.001, "high": 0.01, "path": "training.lr"}}, "sampler": {"type": "grid"}},
         "space.lr", "grid sampler"),
        ({"budget_flops": -1}, "budget_flops", "greater than 0"),
        ({"task": {"task": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2}}, "task.vocab_size",
         "larger than the base"),
        ({"constraints": {"params": {}}}, "constraints.params", "min, max or both"),
    ],
)
def test_search_mistakes_name_the_field(tmp_path, fields, field, words):
    err = _error(tmp_path, write_yaml(tmp_path / "ok.yaml", tiny_search(**fields)).read_text())
    assert err.field == field, str(err)
    assert words in str(err)
    assert err.source == str(tmp_path / "search.yaml") and err.line is not None


def test_missing_base_file(tmp_path):
    err = _error(tmp_path, "name: x\nbase: nowhere.yaml\nbudget_flops: 1e9\nspace: {}\n")
    assert (err.line, err.field) == (2, "base") and "not found" in err.message
