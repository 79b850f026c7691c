"""From an Optuna trial to a concrete model spec, and the static checks made before any training.

``suggest`` draws one value per space entry; ``concrete_spec`` writes the values into a copy of the base
spec (spec-field paths, then the hybrid knobs as a RatioLayout); ``static_metrics`` measures the result with
``archspec.accounting`` (parameters, FLOPs, decode state, the steps the budget buys) and ``violations``
compares those with the search's constraints. A value set that makes no valid spec or breaks a constraint is
*infeasible*: the trial is recorded with the reason and never trained.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna

from archspec.accounting import account, steps_for_budget
from archspec.errors import SpecError
from archspec.layout import describe_layout, expand_layout
from archspec.loader import spec_from_dict
from archspec.search.searchspec import KNOBS, CategoricalParam, FloatParam, IntParam, SearchSpec
from archspec.spec import ModelSpec

TRAIN_MEMORY_BYTES_PER_PARAM = 16
"""fp32 weights, gradients and AdamW's two moments: 4 x 4 bytes per parameter (activations not included)."""


class Infeasible(Exception):
    """The trial's values give no valid spec or break a constraint; ``reason`` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def suggest(trial: optuna.Trial, search: SearchSpec) -> dict[str, Any]:
    """One value per space entry, drawn through ``trial`` (so the sampler sees the distributions)."""
    values: dict[str, Any] = {}
    for name, param in search.space.items():
        if isinstance(param, CategoricalParam):
            values[name] = trial.suggest_categorical(name, param.choices)
        elif isinstance(param, IntParam):
            values[name] = trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
        elif isinstance(param, FloatParam):
            values[name] = trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
        else:  # pragma: no cover - the schema admits only the three kinds
            raise TypeError(f"unknown space entry {name!r}: {param!r}")
    return values


def grid(search: SearchSpec) -> dict[str, list[Any]]:
    """Every value of every space entry, for the grid sampler (floats need a step; the schema checks it)."""
    out: dict[str, list[Any]] = {}
    for name, param in search.space.items():
        if isinstance(param, CategoricalParam):
            out[name] = list(param.choices)
        elif isinstance(param, IntParam):
            out[name] = list(range(param.low, param.high + 1, param.step))
        else:
            n = int((param.high - param.low) / param.step + 1e-9) + 1
            out[name] = [param.low + i * param.step for i in range(n)]
    return out


def concrete_spec(search: SearchSpec, values: dict[str, Any], name: str | None = None) -> ModelSpec:
    """The base spec with ``values`` applied, data set to the search's task; raises Infeasible if invalid.

    Spec-field entries write their value at each of their paths. The hybrid knobs replace the layout by a
    RatioLayout of ``n_layers`` over the SSD block with the attention and MLP shares (unsearched knobs keep
    the base's values); blocks the new layout no longer uses are dropped.
    """
    fields = search.base.model_dump(mode="python")
    fields["data"] = search.data.model_dump(mode="python")
    if name is not None:
        fields["name"] = name
    for key, value in values.items():
        for path in search.space[key].paths():
            _set_path(fields, path, value)
    knobs = {k: values[k] for k in KNOBS if k in values}
    if knobs:
        fields["layout"] = _ratio_layout(search, knobs)
        used = {fields["layout"]["base"], *fields["layout"]["ratios"]}
        fields["blocks"] = {s: b for s, b in fields["blocks"].items() if s in used}
    try:
        return spec_from_dict(fields, source=f"search {search.name!r} values {values}")
    except SpecError as err:
        raise Infeasible(f"invalid spec: {err.field + ': ' if err.field else ''}{err.message}") from None


def _ratio_layout(search: SearchSpec, knobs: dict[str, Any]) -> dict[str, Any]:
    shares = search.base_shares()
    if "attention_ratio" in knobs:
        shares[search.hybrid.attention] = float(knobs["attention_ratio"])
    if "mlp_share" in knobs:
        shares[search.hybrid.mlp] = float(knobs["mlp_share"])
    return {
        "n_layers": int(knobs.get("n_layers", search.hybrid.n_layers)),
        "base": search.hybrid.ssd,
        "ratios": {s: v for s, v in shares.items() if v > 0},
        "placement": knobs.get("placement", search.base_placement()),
    }


def _set_path(fields: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = fields
    for part in parents:
        node = node[part]
    node[last] = value


def static_metrics(search: SearchSpec, spec: ModelSpec) -> dict[str, Any]:
    """What the spec costs before training, at the task's sequence length.

    Keys: params, non_embedding_params, fwd_flops_per_token, train_flops_per_token, decode_state_bytes (one
    sequence of seq_len tokens, bf16 activations), train_memory_bytes (16 bytes per parameter), n_layers,
    attention_layers, mlp_layers, ssd_layers, attention_share, mlp_share, steps (what the budget buys),
    flops_per_step, layout (the shortest pattern string of the layer list).
    """
    seq_len = search.data.seq_len
    acc = account(spec, seq_len)
    layers = expand_layout(spec)
    kinds = Counter(spec.blocks[s].type for s in layers)
    batch = spec.training.batch_size * spec.training.accumulate_grad_batches
    return {
        "params": acc.params,
        "non_embedding_params": acc.non_embedding_params,
        "fwd_flops_per_token": acc.fwd_flops_per_token,
        "train_flops_per_token": acc.train_flops_per_token,
        "decode_state_bytes": acc.decode_state_bytes(batch=1, dtype_bytes=2, seq_len=seq_len),
        "train_memory_bytes": TRAIN_MEMORY_BYTES_PER_PARAM * acc.params,
        "n_layers": len(layers),
        "attention_layers": kinds["attention"],
        "mlp_layers": kinds["mlp"],
        "ssd_layers": kinds["ssd"],
        "attention_share": kinds["attention"] / len(layers),
        "mlp_share": kinds["mlp"] / len(layers),
        "steps": steps_for_budget(spec, search.budget_flops, batch, seq_len),
        "flops_per_step": acc.train_flops_per_token * batch * seq_len,
        "layout": describe_layout(layers),
    }


def violations(search: SearchSpec, metrics: dict[str, Any]) -> list[str]:
    """One sentence per broken constraint (empty when the spec is feasible). The budget is one too: a spec whose
    single optimizer step costs more than ``budget_flops`` would train one step anyway and outspend the others."""
    out = []
    if metrics["flops_per_step"] > search.budget_flops:
        out.append(f"one optimizer step costs {metrics['flops_per_step']:,.6g} FLOPs, more than the budget "
                   f"{search.budget_flops:,.6g}")
    for metric, bounds in search.constraints.items():
        value = metrics[metric]
        if bounds.min is not None and value < bounds.min:
            out.append(f"{metric} = {value:,.6g} is below the minimum {bounds.min:,.6g}")
        if bounds.max is not None and value > bounds.max:
            out.append(f"{metric} = {value:,.6g} is above the maximum {bounds.max:,.6g}")
    return out
