"""Every shipped model spec validates, round-trips through dump_spec, and holds the published numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from archspec.layout import describe_layout, expand_layout, parse_pattern
from archspec.loader import dump_spec, load_spec
from archspec.spec import AttentionSpec, MLPSpec, SSDSpec

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
MODEL_SPECS = sorted(SPECS_DIR.glob("*.yaml"))  # specs/search/ and specs/base/ hold other kinds of file

MAMBA2 = {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48), "1.3b": (2048, 48), "2.7b": (2560, 64)}
TRANSFORMERPP = {"125m": (768, 12, 12), "350m": (1024, 24, 16), "760m": (1536, 24, 16), "1.3b": (2048, 24, 32)}


def test_the_expected_specs_are_shipped() -> None:
    names = {p.stem for p in MODEL_SPECS}
    expected = {f"mamba2-{s}" for s in MAMBA2} | {f"transformerpp-{s}" for s in TRANSFORMERPP}
    expected |= {"hybrid-jamba-like", "hybrid-mamba2-hybrid-like", "tiny-mamba2", "tiny-transformer", "tiny-hybrid"}
    assert expected <= names


def test_specs_readme_lists_every_spec() -> None:
    readme = (SPECS_DIR / "README.md").read_text()
    for path in MODEL_SPECS:
        assert path.name in readme


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_shipped_spec_validates_and_is_named_after_its_file(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.description
    assert len(expand_layout(spec)) >= 1


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_dump_then_load_gives_an_equal_spec(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    out = tmp_path / "dumped.yaml"
    text = dump_spec(spec, out)
    assert out.read_text() == text
    again = load_spec(out)
    assert again == spec
    assert dump_spec(again) == text


@pytest.mark.parametrize("size", MAMBA2)
def test_mamba2_sizes_match_the_published_configs(size: str) -> None:
    d_model, n_layer = MAMBA2[size]
    spec = load_spec(SPECS_DIR / f"mamba2-{size}.yaml")
    assert (spec.d_model, spec.vocab_size, spec.padded_vocab_size) == (d_model, 50277, 50288)
    assert spec.tie_embeddings and spec.residual_in_fp32 and spec.norm == "rmsnorm"
    assert expand_layout(spec) == ["M"] * n_layer
    block = spec.blocks["M"]
    assert isinstance(block, SSDSpec)
    assert (block.d_state, block.head_dim, block.expand, block.ngroups, block.d_conv, block.chunk_size) == (
        128, 64, 2, 1, 4, 256,
    )
    assert list(spec.blocks) == ["M"]  # no MLP


@pytest.mark.parametrize("size", TRANSFORMERPP)
def test_transformerpp_baselines_alternate_rope_attention_and_swiglu(size: str) -> None:
    d_model, n_layer, n_heads = TRANSFORMERPP[size]
    spec = load_spec(SPECS_DIR / f"transformerpp-{size}.yaml")
    attention, mlp = spec.blocks["A"], spec.blocks["F"]
    assert isinstance(attention, AttentionSpec) and isinstance(mlp, MLPSpec)
    assert (spec.d_model, attention.n_heads) == (d_model, n_heads)
    assert attention.rope and not attention.bias and mlp.kind == "swiglu" and not mlp.bias
    assert spec.tie_embeddings
    assert expand_layout(spec) == ["A", "F"] * n_layer


def test_jamba_like_has_one_attention_per_eight_mixers_each_followed_by_an_mlp() -> None:
    layers = expand_layout(load_spec(SPECS_DIR / "hybrid-jamba-like.yaml"))
    mixers, mlps = layers[0::2], layers[1::2]
    assert set(mlps) == {"F"}
    assert len(mixers) % 8 == 0
    for start in range(0, len(mixers), 8):
        assert mixers[start:start + 8] == ["M", "M", "M", "M", "A", "M", "M", "M"]


def test_mamba2_hybrid_like_spreads_8_percent_attention_among_half_mlp_layers() -> None:
    spec = load_spec(SPECS_DIR / "hybrid-mamba2-hybrid-like.yaml")
    layers = expand_layout(spec)
    assert len(layers) == 48
    assert layers.count("A") == 4 and layers.count("F") == 24 and layers.count("M") == 20
    assert layers[1::2] == ["F"] * 24  # every mixer is followed by an MLP
    attention = [i for i, s in enumerate(layers) if s == "A"]
    gaps = {b - a for a, b in zip(attention, attention[1:])}
    assert gaps == {12}


@pytest.mark.parametrize("kind", ["mamba2", "transformer", "hybrid"])
def test_tiny_specs_are_small_and_train_on_mqar(kind: str) -> None:
    spec = load_spec(SPECS_DIR / f"tiny-{kind}.yaml")
    assert 64 <= spec.d_model <= 128 and 2 <= len(expand_layout(spec)) <= 4
    assert spec.data is not None and spec.data.task == "mqar"
    assert spec.vocab_size >= spec.data.vocab_size
    for block in spec.blocks.values():
        if isinstance(block, SSDSpec):
            assert 16 <= block.d_state <= 32 and block.head_dim == 32 and block.chunk_size <= 32


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_describe_layout_of_shipped_specs_expands_back(path: Path) -> None:
    spec = load_spec(path)
    layers = expand_layout(spec)
    assert parse_pattern(describe_layout(layers), spec.blocks) == layers
