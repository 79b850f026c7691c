"""Layout expansion (lists, nested repeats, patterns, ratios with each placement) and describe_layout."""

from __future__ import annotations

import random

import pytest

from archspec.errors import FieldError
from archspec.layout import describe_layout, expand, expand_layout, parse_pattern, place_ratios, ratio_counts
from archspec.spec import ModelSpec, RatioLayout

SYMBOLS = {"M", "A", "F"}


def spec_with(layout, blocks=None) -> ModelSpec:
    blocks = blocks or {
        "M": {"type": "ssd", "head_dim": 32},
        "A": {"type": "attention", "n_heads": 2},
        "F": {"type": "mlp"},
    }
    return ModelSpec(name="t", d_model=64, vocab_size=64, blocks=blocks, layout=layout)


def test_explicit_list_with_nested_repeat_groups() -> None:
    layout = ["M", {"repeat": 2, "layers": ["A", {"repeat": 3, "layers": ["M"]}, "F"]}, "A"]
    assert expand_layout(spec_with(layout)) == ["M"] + ["A", "M", "M", "M", "F"] * 2 + ["A"]


@pytest.mark.parametrize(
    ("pattern", "layers"),
    [
        ("M*3 A", ["M", "M", "M", "A"]),
        ("(M*7 A)*2", (["M"] * 7 + ["A"]) * 2),
        ("((M F)*2 (A F))*2", ["M", "F", "M", "F", "A", "F"] * 2),
        ("MMA", ["M", "M", "A"]),
        ("MMA F*2", ["M", "M", "A", "F", "F"]),
        ("(MF)*2", ["M", "F", "M", "F"]),
        ("  M  *  2(A)F  ", ["M", "M", "A", "F"]),
        ("M\nA", ["M", "A"]),
    ],
)
def test_pattern_strings_expand(pattern: str, layers: list[str]) -> None:
    assert parse_pattern(pattern, SYMBOLS) == layers


def test_a_run_of_letters_is_one_symbol_when_defined_as_such() -> None:
    assert parse_pattern("MA MA*2 M A", {"M", "A", "MA"}) == ["MA", "MA", "MA", "M", "A"]
    assert parse_pattern("mamba2 attn*2", {"mamba2", "attn"}) == ["mamba2", "attn", "attn"]


def test_expansion_is_capped() -> None:
    with pytest.raises(FieldError, match="expands to more than 10000 layers"):
        parse_pattern("(M*1000)*11", SYMBOLS)


def test_ratio_counts_round_half_up_and_give_at_least_one() -> None:
    layout = RatioLayout(n_layers=10, base="M", ratios={"A": 0.01, "F": 0.25, "G": 0.0})
    assert ratio_counts(layout) == {"A": 1, "F": 3, "G": 0}


def test_ratio_placement_start_and_end_group_the_inserted_kinds() -> None:
    start = RatioLayout(n_layers=8, base="M", ratios={"A": 0.25, "F": 0.125}, placement="start")
    assert place_ratios(start, SYMBOLS) == ["A", "A", "F", "M", "M", "M", "M", "M"]
    end = start.model_copy(update={"placement": "end"})
    assert place_ratios(end, SYMBOLS) == ["M", "M", "M", "M", "M", "A", "A", "F"]


def test_even_placement_of_one_kind_is_evenly_spaced() -> None:
    one_in_eight = RatioLayout(n_layers=8, base="M", ratios={"A": 0.125})
    assert place_ratios(one_in_eight, SYMBOLS) == ["M", "M", "M", "M", "A", "M", "M", "M"]
    quarter = RatioLayout(n_layers=24, base="M", ratios={"A": 0.25})
    positions = [i for i, s in enumerate(place_ratios(quarter, SYMBOLS)) if s == "A"]
    assert {b - a for a, b in zip(positions, positions[1:])} == {4}
    half = RatioLayout(n_layers=10, base="M", ratios={"F": 0.5})
    assert place_ratios(half, SYMBOLS) == ["M", "F"] * 5


def test_even_placement_is_deterministic_and_keeps_counts() -> None:
    layout = RatioLayout(n_layers=50, base="M", ratios={"A": 0.08, "F": 0.5})
    first = place_ratios(layout, SYMBOLS)
    assert first == place_ratios(layout, SYMBOLS)
    assert (first.count("A"), first.count("F"), first.count("M")) == (4, 25, 21)


def test_even_placement_never_puts_one_inserted_kind_next_to_itself_when_avoidable() -> None:
    rng = random.Random()
    for _ in range(300):
        n = rng.randint(1, 80)
        a, f = rng.choice([0, 0.02, 0.08, 0.1, 0.2, 0.3]), rng.choice([0, 0.1, 0.25, 0.4, 0.5])
        ratios = {k: v for k, v in {"A": a, "F": f}.items() if v}
        layout = RatioLayout(n_layers=n, base="M", ratios=ratios)
        counts = ratio_counts(layout)
        if sum(counts.values()) > n:
            continue
        layers = place_ratios(layout, SYMBOLS)
        assert len(layers) == n and all(layers.count(s) == c for s, c in counts.items())
        for symbol, count in counts.items():
            if count <= (n + 1) // 2:
                assert all(not (x == y == symbol) for x, y in zip(layers, layers[1:])), (n, ratios, layers)


def test_expand_rejects_a_base_symbol_with_a_share() -> None:
    with pytest.raises(FieldError) as info:
        expand(RatioLayout(n_layers=4, base="M", ratios={"M": 0.5}), SYMBOLS)
    assert info.value.path == ("layout", "ratios", "M")


@pytest.mark.parametrize(
    ("layers", "text"),
    [
        (["M"] * 24, "M*24"),
        ((["M"] * 7 + ["A"]) * 6, "(M*7 A)*6"),
        (["A", "F"] * 12, "(A F)*12"),
        (["M", "A"], "M A"),
        (["M"], "M"),
        ([], ""),
        ((["M", "F"] * 4 + ["A", "F"] + ["M", "F"] * 3) * 3, "((M F)*4 A F (M F)*3)*3"),
    ],
)
def test_describe_layout_gives_the_compact_form(layers: list[str], text: str) -> None:
    assert describe_layout(layers) == text


def test_describe_layout_round_trips_random_layer_lists() -> None:
    rng = random.Random()
    symbols = ["M", "A", "F", "MA", "ssd2"]
    for _ in range(30):
        block = [rng.choice(symbols) for _ in range(rng.randint(1, 6))]
        layers = block * rng.randint(1, 4) + [rng.choice(symbols) for _ in range(rng.randint(0, 5))]
        text = describe_layout(layers)
        assert parse_pattern(text, set(symbols)) == layers, text
        assert len(text) <= len(" ".join(layers))


def test_describe_layout_handles_a_deep_stack_quickly_enough() -> None:
    layers = (["M"] * 7 + ["A"]) * 20
    assert describe_layout(layers) == "(M*7 A)*20"
