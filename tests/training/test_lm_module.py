"""LMModule: the LR schedule, AdamW parameter groups, the masked loss, the step-wise scheduler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archspec.lightning_module import LMModule, lr_multiplier, parameter_groups


def test_lr_multiplier_warms_up_linearly_then_decays_by_cosine_to_min_ratio():
    f = lambda s: lr_multiplier(s, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # peak reached on the last warmup step
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    decay = [f(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_lr_multiplier_without_warmup_starts_at_peak():
    assert lr_multiplier(0, warmup_steps=0, max_steps=20, min_lr_ratio=0.0) == pytest.approx(1.0)
    assert lr_multiplier(20, warmup_steps=0, max_steps=20, min_lr_ratio=0.0) == pytest.approx(0.0)


def test_scheduler_sets_the_lr_of_each_optimizer_step(tiny_spec):
    module = LMModule(tiny_spec)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    cfg = tiny_spec.training
    seen = []
    for _ in range(cfg.max_steps + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [cfg.lr * lr_multiplier(s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                       min_lr_ratio=cfg.min_lr_ratio) for s in range(cfg.max_steps + 1)]
    assert seen == pytest.approx(expected)
    assert max(seen) == pytest.approx(cfg.lr)
    assert seen[-1] == pytest.approx(cfg.lr * cfg.min_lr_ratio)


def test_weight_decay_only_on_matrices_and_never_on_no_decay_params(tiny_spec):
    module = LMModule(tiny_spec)
    groups = module.configure_optimizers()["optimizer"].param_groups
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay and no_decay and not decay & no_decay
    assert all(g["weight_decay"] == tiny_spec.training.weight_decay for g in groups if id(g["params"][0]) in decay)
    flagged = 0
    for name, param in module.model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("dt_bias", "A_log", "D"):
            assert getattr(param, "_no_weight_decay", False), name
        if getattr(param, "_no_weight_decay", False) or param.ndim < 2:
            flagged += getattr(param, "_no_weight_decay", False)
            assert id(param) in no_decay, name
        else:
            assert id(param) in decay, name
    assert flagged >= 3  # the SSD layer's dt_bias, A_log and D
    unique = {id(p) for p in module.model.parameters()}
    assert decay | no_decay == unique  # the tied LM head is the embedding: listed once


def test_parameter_groups_honour_the_no_decay_flag_on_a_matrix():
    layer = nn.Linear(4, 3)
    layer.weight._no_weight_decay = True
    groups = parameter_groups(layer, weight_decay=0.5)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(layer.weight), id(layer.bias)}


def test_loss_is_cross_entropy_over_unmasked_targets_only(tiny_spec):
    torch.manual_seed(1)
    module = LMModule(tiny_spec)
    input_ids = torch.randint(0, tiny_spec.vocab_size, (3, 32))
    targets = torch.full_like(input_ids, -100)
    keep = torch.rand(3, 32) < 0.2
    keep[0, 0] = True
    targets[keep] = torch.randint(0, tiny_spec.vocab_size, (int(keep.sum()),))
    loss, logits = module.compute_loss({"input_ids": input_ids, "targets": targets})
    assert logits.shape == (3, 32, tiny_spec.padded_vocab_size)
    expected = F.cross_entropy(logits[keep].float(), targets[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.isfinite(loss.item())


def test_module_needs_a_seq_len_without_data(tiny_spec):
    with pytest.raises(ValueError, match="seq_len"):
        LMModule(tiny_spec.model_copy(update={"data": None}))
    assert LMModule(tiny_spec.model_copy(update={"data": None}), seq_len=16).seq_len == 16
