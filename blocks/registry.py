"""Registry of block types: type name -> factory(d_model, **block_fields) -> nn.Module."""
from __future__ import annotations

from typing import Callable

from torch import nn

from archspec.blocks.attention import Attention
from archspec.blocks.mlp import MLP
from archspec.blocks.ssd import Mamba2Mixer

ModuleFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModuleFactory] = {}


def register_module(type_name: str, factory: ModuleFactory, *, replace: bool = False) -> None:
    """Register `factory(d_model, **block_fields) -> nn.Module` under `type_name`.

    Raises ValueError when type_name is empty, factory is not callable, or the name is taken and not replace.
    """
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"type_name: expected a non-empty string, got {type_name!r}")
    if not callable(factory):
        raise ValueError(f"factory: expected a callable factory(d_model, **fields), got {factory!r}")
    if type_name in _REGISTRY and not replace:
        raise ValueError(f"type_name: {type_name!r} is already registered; pass replace=True to override it")
    _REGISTRY[type_name] = factory


def get_module_factory(type_name: str) -> ModuleFactory:
    """The factory registered under type_name; ValueError listing the known names when there is none."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise ValueError(f"type_name: unknown block type {type_name!r}; registered: {registered_types()}") from None


def registered_types() -> list[str]:
    """Sorted names of all registered block types."""
    return sorted(_REGISTRY)


register_module("ssd", Mamba2Mixer)
register_module("attention", Attention)
register_module("mlp", MLP)
