"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
from model_specs import make_spec

from archspec.spec import ModelSpec


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return make_spec()
