"""Shared text for the DSL tests."""

TINY = """\
name: tiny
d_model: 64
vocab_size: 128
blocks:
  M:
    type: ssd
    d_state: 16
    head_dim: 32
    chunk_size: 16
  A:
    type: attention
    n_heads: 2
  F:
    type: mlp
layout: "M F A F"
"""
"""A valid spec; tests rely on its line numbers: blocks 4, M 5, d_state 7, A 10, n_heads 12, F 13, layout 15."""
