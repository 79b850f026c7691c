"""Small specs shared by the model tests (built from dicts, independent of the shipped YAML files)."""

from __future__ import annotations

from typing import Any

from archspec.spec import ModelSpec


def make_spec(**overrides: Any) -> ModelSpec:
    """A tiny float32-friendly hybrid: SSD (chunk 8, 2 groups), GQA attention with partial RoPE, a windowed
    attention, SwiGLU MLP; vocab 50 padded to 64."""
    data: dict[str, Any] = {
        "name": "tiny-hybrid",
        "d_model": 32,
        "vocab_size": 50,
        "pad_vocab_size_multiple": 16,
        "blocks": {
            "M": {"type": "ssd", "d_state": 16, "head_dim": 32, "expand": 2, "ngroups": 2, "chunk_size": 8,
                  "backend": "torch"},
            "A": {"type": "attention", "n_heads": 4, "n_kv_heads": 2, "rope_fraction": 0.5, "backend": "sdpa"},
            "W": {"type": "attention", "n_heads": 2, "sliding_window": 5, "qk_norm": True, "backend": "sdpa"},
            "F": {"type": "mlp", "kind": "swiglu"},
        },
        "layout": ["M", "F", "A", "M", "W", "F"],
    }
    data.update(overrides)
    return ModelSpec.model_validate(data)

