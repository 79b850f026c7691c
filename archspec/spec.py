"""The YAML schema of a model spec: pydantic models only (plain data, no torch).

A spec names its block kinds once (``blocks``: symbol -> block spec, discriminated on ``type``)
and says how they stack (``layout``), plus the model-wide settings, an optional training section
and an optional data task. ``archspec.layout`` expands the layout into the concrete layer list;
``archspec.builder`` turns a spec into modules; ``archspec.loader`` reads YAML into a ModelSpec with
file/line in every error.

Rules that span fields raise ``archspec.errors.FieldError`` carrying the path of the offending value,
so the loader can point at its line. ModelSpec checks: every layout symbol is defined in ``blocks``
(with a did-you-mean hint) and the layout parses; each block's ``check_model(d_model)`` (SSD: head_dim
divides expand * d_model and ngroups divides the head count; attention: n_heads divides d_model when
head_dim is not given). The check that ``vocab_size`` covers the data task's vocabulary needs
``archspec.data`` (torch), so it runs in the loader. User block types join the ``blocks`` union
through ``register_block_spec``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from archspec.data.config import DataConfig, task_vocab_size
from archspec.errors import FieldError

__all__ = [
    "AttentionSpec",
    "BlockSpec",
    "Layout",
    "LayoutItem",
    "MLPSpec",
    "ModelSpec",
    "RatioLayout",
    "RepeatGroup",
    "SSDSpec",
    "TrainingSpec",
    "block_spec_types",
    "register_block_spec",
    "unregister_block_spec",
]

SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""Block symbols are identifiers, so that the layout pattern grammar can name them."""


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
    dt_limit: tuple[float, float] = Field(
        (0.0, math.inf), description="clamp of dt after softplus; default [0, .inf] (no clamp)"
    )
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
            raise FieldError(("dt_min",), f"dt_min ({self.dt_min}) must not exceed dt_max ({self.dt_max})")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise FieldError(("A_init_range",), f"must satisfy 0 < low <= high, got {list(self.A_init_range)}")
        lo, hi = self.dt_limit
        if not 0 <= lo < hi:
            raise FieldError(("dt_limit",), f"must satisfy 0 <= low < high, got {list(self.dt_limit)}")
        return self

    def d_inner(self, d_model: int) -> int:
        """Inner width expand * d_model."""
        return self.expand * d_model

    def nheads(self, d_model: int) -> int:
        """SSD heads d_inner // head_dim."""
        return self.d_inner(d_model) // self.head_dim

    def check_model(self, d_model: int) -> None:
        """Rules that need d_model: head_dim divides d_inner; ngroups divides nheads. Raises FieldError."""
        d_inner = self.d_inner(d_model)
        if d_inner % self.head_dim:
            fits = [p for p in range(32, 257) if d_inner % p == 0]
            hint = (
                f"use a head_dim that divides {d_inner}, e.g. {min(fits, key=lambda p: (abs(p - self.head_dim), p))}"
                if fits
                else "change d_model or expand"
            )
            raise FieldError(
                ("head_dim",),
                f"head_dim {self.head_dim} does not divide d_inner = expand * d_model = "
                f"{self.expand} * {d_model} = {d_inner}",
                hint,
            )
        nheads = self.nheads(d_model)
        if nheads % self.ngroups:
            raise FieldError(
                ("ngroups",),
                f"ngroups {self.ngroups} does not divide nheads = d_inner / head_dim = "
                f"{d_inner} / {self.head_dim} = {nheads}",
            )


class AttentionSpec(_Strict):
    """Causal multi-head attention with GQA, RoPE, optional sliding window and qk-norm, and optionally (as in
    mamba_ssm's ``MHA`` with ``d_conv``) a causal depthwise conv over the fused q, k, v projection."""

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
    d_conv: int = Field(
        0, ge=0, le=8,
        description="causal depthwise conv width over the q, k, v channels (with bias, no activation), applied "
        "after in_proj and before the head split and RoPE, as mamba_ssm's MHA d_conv; 0 = no conv, else 2 to 8",
    )
    backend: Literal["auto", "flash", "sdpa"] = "auto"

    @field_validator("d_conv")
    @classmethod
    def _conv_width(cls, v: int) -> int:
        if v == 1:
            raise ValueError("must be 0 (no conv) or from 2 to 8, got 1")
        return v

    @model_validator(mode="after")
    def _gqa(self) -> AttentionSpec:
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise FieldError(("n_kv_heads",), f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        return self

    def head_size(self, d_model: int) -> int:
        """head_dim, defaulting to d_model // n_heads."""
        return self.head_dim if self.head_dim is not None else d_model // self.n_heads

    def check_model(self, d_model: int) -> None:
        """Without an explicit head_dim, n_heads must divide d_model. Raises FieldError."""
        if self.head_dim is None and d_model % self.n_heads:
            raise FieldError(
                ("n_heads",),
                f"n_heads {self.n_heads} does not divide d_model {d_model} (head_dim defaults to d_model // n_heads)",
                "set head_dim or choose n_heads dividing d_model",
            )


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


_BUILTIN_BLOCKS: dict[str, type[BaseModel]] = {"ssd": SSDSpec, "attention": AttentionSpec, "mlp": MLPSpec}
_BLOCK_SPECS: dict[str, type[BaseModel]] = dict(_BUILTIN_BLOCKS)


def _block_union(specs: dict[str, type[BaseModel]]) -> Any:
    return Annotated[Union[tuple(specs.values())], Field(discriminator="type")]


BlockSpec = _block_union(_BLOCK_SPECS)
"""Any block spec, chosen by its ``type`` field (the built-ins; ``block_spec_types()`` includes registered ones)."""


def _layout_item_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "symbol"
    if isinstance(value, (dict, RepeatGroup)):
        return "group"
    return None


class RepeatGroup(_Strict):
    """``{repeat: N, layers: [...]}``: the layer list repeated N times."""

    repeat: int = Field(ge=1)
    layers: list[LayoutItem] = Field(min_length=1)


LayoutItem = Annotated[
    Union[Annotated[str, Tag("symbol")], Annotated[RepeatGroup, Tag("group")]],
    Discriminator(
        _layout_item_kind,
        custom_error_type="layout_item",
        custom_error_message="must be a block symbol or a mapping {repeat: N, layers: [...]}",
    ),
]
"""One entry of an explicit layout list: a block symbol or a nested repeat group."""
RepeatGroup.model_rebuild()


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
                raise FieldError((name,), f"share must be between 0 and 1, got {share}")
        total = sum(v.values())
        if total > 1:
            shown = " + ".join(f"{share:g}" for share in v.values())
            raise FieldError((), f"shares add up to {shown} = {total:g}, more than 1")
        return v


def _layout_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "pattern"
    if isinstance(value, list):
        return "list"
    if isinstance(value, (dict, RatioLayout)):
        return "ratio"
    return None


Layout = Annotated[
    Union[
        Annotated[str, Tag("pattern")],
        Annotated[list[LayoutItem], Tag("list")],
        Annotated[RatioLayout, Tag("ratio")],
    ],
    Discriminator(
        _layout_kind,
        custom_error_type="layout_type",
        custom_error_message="must be a pattern string, a list of symbols / repeat groups, "
        "or a mapping {n_layers, base, ratios, placement}",
    ),
]
"""A pattern string, an explicit list, or a ratio layout; ``archspec.layout`` expands it."""


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
    activation_checkpointing: bool = Field(
        False,
        description="recompute each residual block's forward during backward (torch.utils.checkpoint, "
        "non-reentrant): backward keeps only each block's input plus one block's activations at a time, for one "
        "more forward of the layers in compute; gradients and losses are unchanged, and budgets still count "
        "3 x forward FLOPs (model FLOPs, not the recompute); inference, eval and decoding are unaffected",
    )
    val_every_steps: int = Field(100, ge=1)
    val_batches: int | None = Field(None, ge=1, description="validation batches per check; None = all")
    seed: int = 0


class ModelSpec(_Strict):
    """A whole language model: embeddings, a pre-norm residual stack of blocks, final norm, LM head.

    Block symbols are identifiers (``[A-Za-z_][A-Za-z0-9_]*``); cross-field rules: see the module docstring.
    """

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
    init: Literal["normal", "mamba_ssm"] = Field(
        "normal", description="normal: every linear weight ~ N(0, init_std); mamba_ssm: linears keep PyTorch's "
        "kaiming-uniform init, as mamba_ssm's _init_weights leaves them (init_std sets the embedding only)")
    blocks: dict[str, BlockSpec] = Field(min_length=1)
    layout: Layout
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    data: DataConfig | None = None

    @field_validator("blocks")
    @classmethod
    def _symbols(cls, v: dict[str, Any]) -> dict[str, Any]:
        for symbol in v:
            if not SYMBOL_RE.fullmatch(symbol):
                raise FieldError(
                    (symbol,),
                    f"block symbol {symbol!r} is not an identifier",
                    "use letters, digits and '_', starting with a letter",
                )
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> ModelSpec:
        from archspec.layout import expand  # layout imports this module

        for symbol, block in self.blocks.items():
            check = getattr(block, "check_model", None)
            if check is not None:
                try:
                    check(self.d_model)
                except FieldError as err:
                    raise FieldError(("blocks", symbol, *err.path), err.message, err.hint) from None
                except ValueError as err:
                    raise FieldError(("blocks", symbol), str(err)) from None
        expand(self.layout, self.blocks)
        if self.data is not None and self.vocab_size < task_vocab_size(self.data):
            need = task_vocab_size(self.data)
            raise FieldError(("vocab_size",), f"{self.vocab_size} does not cover the {self.data.task} task's "
                             f"vocabulary of {need} tokens", f"set vocab_size to at least {need}")
        return self

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m


def block_spec_types() -> dict[str, type[BaseModel]]:
    """The block spec classes by ``type`` name: the built-ins and every registered one."""
    return dict(_BLOCK_SPECS)


def register_block_spec(cls: type[BaseModel], *, replace: bool = False) -> type[BaseModel]:
    """Add a user block spec to the ``blocks`` union of ModelSpec; returns ``cls`` (usable as a decorator).

    ``cls`` is a pydantic model with a field ``type: Literal["name"] = "name"``. After registration YAML with
    ``type: name`` validates and the JSON Schema lists it. The class may define ``check_model(d_model)``,
    raising ``archspec.errors.FieldError`` for rules that need the model width. Register the module for
    the builder separately (``archspec.blocks.registry.register_module``).
    Raises ValueError when ``cls`` is not such a model, or the name is taken and ``replace`` is false.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ValueError(f"cls: expected a pydantic BaseModel subclass, got {cls!r}")
    field = cls.model_fields.get("type")
    args = get_args(field.annotation) if field is not None else ()
    if field is None or get_origin(field.annotation) is not Literal or len(args) != 1 or not isinstance(args[0], str):
        raise ValueError(f"cls: {cls.__name__} needs a field `type: Literal[\"name\"]` with a single string value")
    name = args[0]
    if name in _BLOCK_SPECS and _BLOCK_SPECS[name] is not cls and not replace:
        raise ValueError(f"cls: block type {name!r} is already registered; pass replace=True to override it")
    _BLOCK_SPECS[name] = cls
    _rebuild_blocks()
    return cls


def unregister_block_spec(name: str) -> None:
    """Remove a registered user block type (built-in types stay). Raises ValueError for an unknown name."""
    if name in _BUILTIN_BLOCKS:
        raise ValueError(f"name: {name!r} is a built-in block type and cannot be removed")
    if name not in _BLOCK_SPECS:
        raise ValueError(f"name: no registered block type {name!r}; registered: {', '.join(sorted(_BLOCK_SPECS))}")
    del _BLOCK_SPECS[name]
    _rebuild_blocks()


def _rebuild_blocks() -> None:
    ModelSpec.model_fields["blocks"].annotation = dict[str, _block_union(_BLOCK_SPECS)]
    ModelSpec.model_rebuild(force=True)
