"""The YAML schema of a model spec: pydantic models only (plain data, no torch).

A spec names its block kinds once (``blocks``: symbol -> block spec, discriminated on ``type``)
and says how they stack (``layout``), plus the model-wide settings, an optional training section
and an optional data task. ``archspec.layout`` expands the layout into the concrete layer list;
``archspec.builder`` turns a spec into modules.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from archspec.data.config import DataConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class SSDSpec(_Strict):
    """A Mamba-2 mixer (SSD). Names follow mamba_ssm's ``Mamba2`` arguments."""

    type: Literal["ssd"] = "ssd"
    d_state: int = Field(128, ge=1, le=256, description="SSM state size N per head")
    head_dim: int = Field(64, ge=32, le=256, description="P, channels per SSD head")
    expand: int = Field(2, ge=1, le=8, description="d_inner = expand * d_model")
    ngroups: int = Field(1, ge=1, description="groups of B/C shared by nheads/ngroups heads")
    d_conv: int = Field(4, ge=2, le=8, description="causal depthwise conv width")
    chunk_size: int = Field(256, ge=8, le=1024, description="SSD chunk length (a power of two)")
    dt_min: float = Field(0.001, gt=0, description="dt initialisation range, lower end")
    dt_max: float = Field(0.1, gt=0, description="dt initialisation range, upper end")
    dt_init_floor: float = Field(1e-4, gt=0)
    dt_limit: tuple[float, float] = Field((0.0, math.inf), description="clamp of dt after softplus")
    A_init_range: tuple[float, float] = Field((1.0, 16.0), description="-A drawn uniformly from this range")
    D_has_hdim: bool = Field(False, description="skip connection D per channel instead of per head")
    rmsnorm: bool = Field(True, description="gated RMSNorm before out_proj")
    norm_before_gate: bool = False
    bias: bool = False
    conv_bias: bool = True
    backend: Literal["auto", "triton", "torch"] = "auto"

    @field_validator("chunk_size")
    @classmethod
    def _chunk_power_of_two(cls, v: int) -> int:
        if not _is_power_of_two(v):
            raise ValueError(f"must be a power of two, got {v}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SSDSpec:
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min ({self.dt_min}) must not exceed dt_max ({self.dt_max})")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        lo, hi = self.dt_limit
        if not 0 <= lo < hi:
            raise ValueError(f"dt_limit must satisfy 0 <= low < high, got {self.dt_limit}")
        return self


class AttentionSpec(_Strict):
    """Causal multi-head attention with GQA, RoPE, optional sliding window and qk-norm."""

    type: Literal["attention"] = "attention"
    n_heads: int = Field(ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="GQA key/value heads; default n_heads")
    head_dim: int | None = Field(None, ge=8, le=256, description="default d_model // n_heads")
    rope: bool = True
    rope_theta: float = Field(10000.0, gt=0)
    rope_fraction: float = Field(1.0, gt=0, le=1, description="fraction of head_dim rotated")
    sliding_window: int | None = Field(None, ge=1, description="attend to at most this many past tokens")
    qk_norm: bool = False
    bias: bool = False
    backend: Literal["auto", "flash", "sdpa"] = "auto"

    @model_validator(mode="after")
    def _gqa(self) -> AttentionSpec:
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        return self


class MLPSpec(_Strict):
    """Position-wise MLP: SwiGLU (gated) or GELU. Width from ``hidden`` or ``hidden_mult`` x d_model."""

    type: Literal["mlp"] = "mlp"
    kind: Literal["swiglu", "gelu"] = "swiglu"
    hidden: int | None = Field(None, ge=1, description="hidden width; overrides hidden_mult")
    hidden_mult: float | None = Field(None, gt=0, description="hidden = hidden_mult * d_model")
    multiple_of: int = Field(64, ge=1, description="hidden rounded up to a multiple of this")
    bias: bool = False

    def hidden_size(self, d_model: int) -> int:
        """The hidden width for a given d_model: SwiGLU defaults to 8/3 x d_model, GELU to 4 x."""
        if self.hidden is not None:
            return self.hidden
        mult = self.hidden_mult if self.hidden_mult is not None else (8 / 3 if self.kind == "swiglu" else 4.0)
        raw = int(mult * d_model)
        return -(-raw // self.multiple_of) * self.multiple_of


BlockSpec = Annotated[Union[SSDSpec, AttentionSpec, MLPSpec], Field(discriminator="type")]


class RepeatGroup(_Strict):
    """``{repeat: N, layers: [...]}``: the layer list repeated N times."""

    repeat: int = Field(ge=1)
    layers: list[Union[str, RepeatGroup]] = Field(min_length=1)


class RatioLayout(_Strict):
    """``n_layers`` layers of ``base`` with a fraction of them replaced by other blocks.

    ``ratios`` maps a block symbol to its share of all layers (rounded to the nearest count, at least
    one when the share is positive); ``placement`` puts them evenly spaced, at the start or at the end.
    """

    n_layers: int = Field(ge=1)
    base: str
    ratios: dict[str, float] = Field(default_factory=dict)
    placement: Literal["even", "start", "end"] = "even"

    @field_validator("ratios")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            if not 0 <= share <= 1:
                raise ValueError(f"share of {name!r} must be between 0 and 1, got {share}")
        if sum(v.values()) > 1:
            raise ValueError(f"shares add up to {sum(v.values()):.3f}, more than 1")
        return v


Layout = Union[str, list[Union[str, RepeatGroup]], RatioLayout]


class TrainingSpec(_Strict):
    """Optimisation settings: AdamW with linear warmup then cosine decay to ``min_lr_ratio`` x lr."""

    batch_size: int = Field(32, ge=1, description="sequences per optimizer step (before accumulation)")
    accumulate_grad_batches: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1, description="optimizer steps; replaced by the budget when set")
    budget_flops: float | None = Field(None, gt=0, description="training FLOPs; sets max_steps from accounting")
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    val_every_steps: int = Field(100, ge=1)
    val_batches: int | None = Field(None, ge=1, description="validation batches per check; None = all")
    seed: int = 0


class ModelSpec(_Strict):
    """A whole language model: embeddings, a pre-norm residual stack of blocks, final norm, LM head."""

    name: str
    description: str = ""
    d_model: int = Field(ge=8)
    vocab_size: int = Field(ge=2)
    pad_vocab_size_multiple: int = Field(16, ge=1, description="embedding rows rounded up to this multiple")
    tie_embeddings: bool = True
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    residual_in_fp32: bool = True
    init_std: float = Field(0.02, gt=0)
    blocks: dict[str, BlockSpec] = Field(min_length=1)
    layout: Layout
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    data: DataConfig | None = None

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m
