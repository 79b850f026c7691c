"""The block registry: built-in types, user types, duplicates and unknown names."""
import pytest
from torch import nn

from archspec.blocks import registry
from archspec.blocks.registry import get_module_factory, register_module, registered_types
from archspec.blocks import Attention, Mamba2Mixer, MLP


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtin_types_build_their_modules_from_d_model_and_fields():
    assert {"ssd", "attention", "mlp"} <= set(registered_types())
    ssd = get_module_factory("ssd")(32, d_state=8, head_dim=16)
    attn = get_module_factory("attention")(32, n_heads=4)
    mlp = get_module_factory("mlp")(32, hidden=48, kind="gelu")
    assert isinstance(ssd, Mamba2Mixer) and ssd.d_model == 32 and ssd.d_state == 8
    assert isinstance(attn, Attention) and attn.head_dim == 8
    assert isinstance(mlp, MLP) and mlp.fc1.out_features == 48


def test_user_type_can_be_registered_and_built():
    def make_linear(d_model: int, scale: int = 2) -> nn.Module:
        return nn.Linear(d_model, scale * d_model)

    register_module("my_linear", make_linear)
    module = get_module_factory("my_linear")(8, scale=3)
    assert isinstance(module, nn.Linear) and module.out_features == 24
    assert "my_linear" in registered_types()


def test_duplicate_registration_raises_unless_replacing():
    register_module("twice", lambda d_model: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_module("twice", lambda d_model: nn.Linear(d_model, d_model))
    with pytest.raises(ValueError, match="already registered"):
        register_module("ssd", lambda d_model: nn.Identity())
    register_module("twice", lambda d_model: nn.Linear(d_model, d_model), replace=True)
    assert isinstance(get_module_factory("twice")(4), nn.Linear)


def test_unknown_type_and_bad_registrations_raise_value_error():
    with pytest.raises(ValueError, match="unknown block type 'nope'.*attention"):
        get_module_factory("nope")
    with pytest.raises(ValueError, match="factory"):
        register_module("bad", "not callable")
    with pytest.raises(ValueError, match="type_name"):
        register_module("", lambda d_model: nn.Identity())
