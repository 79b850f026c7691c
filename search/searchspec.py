"""The YAML schema of a search: base model, search space, FLOP budget, task, objectives, sampler, storage.

A search file names a base model spec (``base:``, a path relative to the search file or an inline spec),
the parameters to search (``space:``), the training FLOPs every trial spends (``budget_flops``), the data
task (``task:``, an archspec data config; default the base spec's ``data``), what to optimise
(``objectives:``) and the study settings. Mistakes are reported as :class:`archspec.errors.SpecError`
naming ``file:line field``.

Space entries either set spec fields (``path: blocks.M.d_state``) or are one of the named hybrid knobs
(``attention_ratio``, ``mlp_share``, ``placement``, ``n_layers``) that rewrite the base layout into a
:class:`archspec.spec.RatioLayout` over the base's SSD block.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from archspec.data.config import DataConfig
from archspec.errors import FieldError, SpecError, did_you_mean
from archspec.layout import expand_layout
from archspec.loader import load_spec, read_yaml, validate_model
from archspec.spec import ModelSpec, RatioLayout

KNOBS = ("attention_ratio", "mlp_share", "placement", "n_layers")
"""Space names that rewrite the layout instead of setting a spec field."""

TRAINED_METRICS = ("val_loss", "best_val_loss", "val_accuracy", "tokens_per_second", "peak_memory_bytes")
"""Objective metrics known only after training."""

STATIC_METRICS = (
    "params",
    "non_embedding_params",
    "fwd_flops_per_token",
    "train_flops_per_token",
    "decode_state_bytes",
    "train_memory_bytes",
    "n_layers",
    "attention_layers",
    "attention_share",
    "mlp_share",
    "steps",
)
"""Metrics known from the spec and the accounting before training (objectives and constraints)."""

RESULT_ATTRS = (
    "steps",
    "tokens",
    "train_flops",
    "val_loss",
    "val_accuracy",
    "best_val_loss",
    "tokens_per_second",
    "peak_memory_bytes",
    "wall_seconds",
)
"""TrainResult fields copied into the trial's user attrs."""

DEFAULT_DIRECTIONS = {"val_accuracy": "maximize", "tokens_per_second": "maximize"}

Scalar = Union[bool, int, float, str, None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Param(_Strict):
    path: str | list[str] | None = Field(
        None, description="dotted spec field(s) the value is written to, e.g. blocks.M.d_state; none for knobs"
    )

    def paths(self) -> list[str]:
        if self.path is None:
            return []
        return [self.path] if isinstance(self.path, str) else list(self.path)


class CategoricalParam(_Param):
    """One of a fixed list of values."""

    type: Literal["categorical"] = "categorical"
    choices: list[Scalar] = Field(min_length=1)


class IntParam(_Param):
    """An integer in [low, high] (step apart, or log-uniform)."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: needs low >= 1 and step 1")
        return self


class FloatParam(_Param):
    """A float in [low, high] (uniform, step apart, or log-uniform)."""

    type: Literal["float"] = "float"
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: needs low > 0 and no step")
        return self


def _infer_param_type(data: Any) -> Any:
    if isinstance(data, dict) and "type" not in data:
        data = dict(data)
        if "choices" in data:
            data["type"] = "categorical"
        elif all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) for k in ("low", "high")):
            data["type"] = "int"
        else:
            data["type"] = "float"
    return data


Param = Annotated[
    Annotated[Union[CategoricalParam, IntParam, FloatParam], Field(discriminator="type")],
    BeforeValidator(_infer_param_type),
]
"""A space entry; without ``type`` it is categorical when it has ``choices``, int when low/high are ints."""


class HybridSpec(_Strict):
    """Which base blocks the hybrid knobs use; each defaults to the base's only block of that type."""

    ssd: str | None = Field(None, description="symbol of the SSD block the layout is built on")
    attention: str | None = Field(None, description="symbol of the attention block attention_ratio places")
    mlp: str | None = Field(None, description="symbol of the MLP block mlp_share places")
    n_layers: int | None = Field(None, ge=1, description="layers when n_layers is not searched; default the base's")


class Objective(_Strict):
    """A value to minimise or maximise; the direction defaults to the metric's natural one."""

    metric: Literal[TRAINED_METRICS + STATIC_METRICS]  # type: ignore[valid-type]
    direction: Literal["minimize", "maximize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"metric": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_direction(self) -> Objective:
        if self.direction is None:
            self.direction = DEFAULT_DIRECTIONS.get(self.metric, "minimize")
        return self


class Bounds(_Strict):
    """An allowed range of a static metric: min <= value <= max (either may be left out)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class SamplerSpec(_Strict):
    """The Optuna sampler, seeded from (seed, worker, trials already in the study): workers and resumed runs
    draw different values."""

    type: Literal["tpe", "random", "nsga2", "grid", "cmaes"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(None, ge=0, description="tpe/cmaes: random trials before modelling")
    population_size: int | None = Field(None, ge=2, description="nsga2: trials per generation")


class PrunerSpec(_Strict):
    """The Optuna pruner; intermediate values are reported at `val_checks` equal fractions of the budget."""

    type: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0, description="median: trials finished before any is pruned")
    n_warmup_steps: int = Field(2, ge=0, description="median: a trial is pruned from this validation on")
    min_resource: int = Field(1, ge=1, description="hyperband: validations every trial gets")
    reduction_factor: int = Field(3, ge=2, description="hyperband: 1/reduction_factor survive each rung")


class SearchSpec(_Strict):
    """A whole search (see the module docstring). ``base`` is resolved to a ModelSpec on loading."""

    name: str
    description: str = ""
    base: ModelSpec
    budget_flops: float = Field(gt=0, description="training FLOPs of every trial (sets its steps)")
    task: DataConfig | None = Field(None, description="the data task; default the base spec's data")
    space: dict[str, Param] = Field(min_length=1)
    hybrid: HybridSpec = Field(default_factory=HybridSpec)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="val_loss")], min_length=1)
    constraints: dict[Literal[STATIC_METRICS], Bounds] = Field(default_factory=dict)  # type: ignore[valid-type]
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec | None = Field(None, description="default median for one objective, none for several")
    val_checks: int = Field(4, ge=1, description="validations per trial, at equal fractions of the budget")
    seed: int = Field(0, ge=0, description="training seed (model init and data) shared by all trials")
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///<out>/study.db")
    study_name: str | None = Field(None, description="default: name")
    n_trials: int = Field(8, ge=1, description="finished trials (complete, pruned or failed) the study ends with")
    timeout_s: float | None = Field(None, gt=0)
    workers: int = Field(1, ge=1, description="worker processes on this machine (one torch thread per core each)")

    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The search file this spec was read from (None when built in Python)."""
        return self._source

    @property
    def data(self) -> Any:
        """The data task every trial trains on (``task``, else the base spec's ``data``)."""
        return self.task if self.task is not None else self.base.data

    @property
    def pruning(self) -> bool:
        return self.pruner is not None and self.pruner.type != "none"

    @property
    def monitor(self) -> str:
        """The logged metric the pruner watches: val_accuracy for an accuracy objective, else val_loss."""
        return "val_accuracy" if self.objectives[0].metric == "val_accuracy" else "val_loss"

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.data is None:
            raise FieldError(("task",), "required: the base spec has no data section", "add task: {task: mqar, ...}")
        if self.data.vocab_size > self.base.vocab_size:
            raise FieldError(
                ("task", "vocab_size"),
                f"{self.data.vocab_size} is larger than the base model's vocab_size {self.base.vocab_size}",
            )
        self._check_objectives()
        self._resolve_hybrid()
        self._check_space()
        return self

    def _check_objectives(self) -> None:
        metrics = [o.metric for o in self.objectives]
        for i, metric in enumerate(metrics):
            if metric in metrics[:i]:
                raise FieldError(("objectives", i), f"{metric!r} is listed twice")
        trained = metrics[0] in ("val_loss", "best_val_loss", "val_accuracy")
        if self.pruner is None:
            self.pruner = PrunerSpec(type="median" if len(metrics) == 1 and trained else "none")
        elif self.pruner.type != "none":
            if len(metrics) > 1:
                raise FieldError(("pruner", "type"), "pruning needs a single objective", "use type: none")
            if not trained:
                raise FieldError(("pruner", "type"), f"cannot prune on {metrics[0]!r}, which is known before training")
        if self.sampler.type == "cmaes" and len(metrics) > 1:
            raise FieldError(("sampler", "type"), "cmaes optimises a single objective", "use nsga2 or tpe")

    def _resolve_hybrid(self) -> None:
        knobs = [k for k in KNOBS if k in self.space]
        for field, kind in (("ssd", "ssd"), ("attention", "attention"), ("mlp", "mlp")):
            symbol = getattr(self.hybrid, field)
            candidates = sorted(s for s, b in self.base.blocks.items() if b.type == kind)
            if symbol is not None:
                if symbol not in candidates:
                    raise FieldError(
                        ("hybrid", field),
                        f"{symbol!r} is not a {kind} block of the base (its {kind} blocks: {candidates})",
                    )
            elif len(candidates) == 1:
                setattr(self.hybrid, field, candidates[0])
            elif len(candidates) > 1 and knobs:
                raise FieldError(
                    ("hybrid", field),
                    f"the base has {len(candidates)} {kind} blocks ({candidates}); name the one the hybrid knobs use",
                )
        if not knobs:
            return
        if self.hybrid.ssd is None:
            raise FieldError(("space", knobs[0]), "the hybrid knobs need an ssd block in the base")
        if "attention_ratio" in self.space and self.hybrid.attention is None:
            raise FieldError(("space", "attention_ratio"), "the base has no attention block to place")
        if "mlp_share" in self.space and self.hybrid.mlp is None:
            raise FieldError(("space", "mlp_share"), "the base has no mlp block to place")
        if self.hybrid.n_layers is None:
            self.hybrid.n_layers = len(expand_layout(self.base))

    def _check_space(self) -> None:
        fields = self.base.model_dump(mode="python")
        fields["data"] = self.data.model_dump(mode="python")
        for name, param in self.space.items():
            if name in KNOBS:
                _check_knob(name, param)
                continue
            if not param.paths():
                raise FieldError(
                    ("space", name),
                    "needs a path (the spec field it sets)",
                    f"e.g. path: blocks.M.d_state; the layout knobs are {', '.join(KNOBS)}",
                )
            for path in param.paths():
                _check_path(fields, path, ("space", name, "path"))
        if self.sampler.type == "grid":
            for name, param in self.space.items():
                if isinstance(param, FloatParam) and param.step is None:
                    raise FieldError(("space", name), "the grid sampler needs choices or a step for every parameter")

    def base_shares(self) -> dict[str, float]:
        """Each non-SSD symbol's share of the base's layers (the hybrid knobs' defaults)."""
        layers = expand_layout(self.base)
        counts = Counter(layers)
        return {s: n / len(layers) for s, n in counts.items() if s != self.hybrid.ssd}

    def base_placement(self) -> str:
        layout = self.base.layout
        return layout.placement if isinstance(layout, RatioLayout) else "even"


def _check_knob(name: str, param: Any) -> None:
    where = ("space", name)
    if param.paths():
        raise FieldError(where + ("path",), f"{name} is a layout knob and sets no spec field; remove path")
    values = _values(param)
    if name == "placement":
        if not isinstance(param, CategoricalParam) or not set(param.choices) <= {"even", "start", "end"}:
            raise FieldError(where, "placement takes choices from even, start, end")
        return
    if name == "n_layers":
        if not isinstance(param, (IntParam, CategoricalParam)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
        ):
            raise FieldError(where, "n_layers takes integers >= 1")
        return
    if isinstance(param, CategoricalParam) and not all(isinstance(v, (int, float)) for v in values):
        raise FieldError(where, f"{name} takes numbers between 0 and 1")
    if not all(0 <= v <= 1 for v in values):
        raise FieldError(where, f"{name} is a share of the layers: values must lie between 0 and 1")


def _values(param: Any) -> list[Any]:
    """The choices of a categorical, the two ends of a numeric range."""
    return list(param.choices) if isinstance(param, CategoricalParam) else [param.low, param.high]


def _check_path(fields: dict[str, Any], path: str, where: tuple[str, ...]) -> None:
    node: Any = fields
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = sorted(node) if isinstance(node, dict) else []
            prefix = ".".join(parts[:i]) or "the spec"
            raise FieldError(where, f"{path!r}: {prefix} has no field {part!r}", did_you_mean(part, known))
        node = node[part]


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search YAML; ``base:`` paths are relative to the search file. Raises SpecError."""
    path = Path(path)
    source = str(path)
    data, linemap = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError("a search file must be a mapping of fields", source=source, line=1)
    data = dict(data)
    data.setdefault("name", path.stem)
    base = data.get("base")
    if isinstance(base, str):
        base_path = path.parent / base
        if not base_path.is_file():
            raise SpecError(
                f"base spec {base!r} not found (looked for {base_path})",
                source=source,
                line=linemap.get(("base",)),
                field="base",
            )
        data["base"] = load_spec(base_path)
    search = validate_model(SearchSpec, data, source=source, linemap=linemap)
    search._source = source
    return search
