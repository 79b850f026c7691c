"""Neural-network blocks: the Mamba-2 mixer, attention, MLP, norms, the residual wrapper and a block registry."""
from archspec.blocks.attention import Attention
from archspec.blocks.cache import KVCache, Mamba2Cache
from archspec.blocks.mlp import MLP
from archspec.blocks.norm import LayerNorm, RMSNorm, RMSNormGated, make_norm
from archspec.blocks.registry import get_module_factory, register_module, registered_types
from archspec.blocks.residual import ResidualBlock
from archspec.blocks.ssd import Mamba2Mixer

__all__ = [
    "Attention",
    "KVCache",
    "LayerNorm",
    "MLP",
    "Mamba2Cache",
    "Mamba2Mixer",
    "RMSNorm",
    "RMSNormGated",
    "ResidualBlock",
    "get_module_factory",
    "make_norm",
    "register_module",
    "registered_types",
]
