"""The LightningModule around a built language model: loss, optimiser, LR schedule, token and FLOP counters.

Batches are ``dict(input_ids=LongTensor(batch, seq_len), targets=LongTensor(batch, seq_len))``; targets equal
to -100 carry no loss. All optimisation settings come from ``spec.training``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from archspec.accounting import account
from archspec.builder import build_model
from archspec.data.metrics import masked_accuracy, masked_cross_entropy
from archspec.data.sampling import IGNORE_INDEX
from archspec.spec import ModelSpec


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak learning rate for optimizer step ``step`` (0-based, the step about to be taken).

    Linear warmup ``(step + 1) / warmup_steps`` reaching 1 at ``step = warmup_steps - 1``, then a cosine from 1
    at ``step = warmup_steps`` down to ``min_lr_ratio`` at ``step = max_steps``; constant ``min_lr_ratio`` after.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max_steps - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with >= 2 dims, none on the rest or on ``_no_weight_decay`` ones.

    Tied parameters (the LM head sharing the embedding) appear once. Empty groups are left out.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.ndim >= 2 and not getattr(param, "_no_weight_decay", False):
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class LMModule(pl.LightningModule):
    """Trains ``build_model(spec)`` on next-token targets with AdamW and warmup + cosine decay.

    ``spec.training`` gives the optimiser and the schedule, whose horizon is ``training.max_steps`` (``train``
    passes the spec with the steps of a budget already resolved). ``seq_len`` (default ``spec.data.seq_len``)
    sets the training FLOPs per token from ``archspec.accounting``.
    Logs ``train_loss``, ``lr``, ``tokens``, ``flops`` per step and ``val_loss``, ``val_accuracy`` per validation
    (token-weighted means over the validation batches). ``tokens_seen`` / ``flops_seen`` count every input
    position of every training batch and are saved in checkpoints.

    Data-parallel (a Trainer with ``world_size`` N > 1, each rank holding a slice of the global batch): the loss a
    rank backpropagates is its summed cross-entropy divided by the scored tokens of the whole global batch, times
    N, so DDP's gradient average is the gradient of the global batch's mean loss, as on one device, however the
    scored tokens fall on the ranks. ``train_loss`` is that global mean, the counters count the global batch,
    and ``val_loss`` / ``val_accuracy`` are token-weighted over all ranks (``sync_dist``).
    """

    def __init__(self, spec: ModelSpec, *, seq_len: int | None = None) -> None:
        super().__init__()
        if seq_len is None:
            if spec.data is None:
                raise ValueError("seq_len: the spec has no data section to take it from; pass seq_len")
            seq_len = spec.data.seq_len
        if seq_len < 1:
            raise ValueError(f"seq_len: expected a positive int, got {seq_len}")
        self.spec = spec
        self.seq_len = seq_len
        self.model = build_model(spec)
        self.train_flops_per_token = int(account(spec, seq_len).train_flops_per_token)
        self.tokens_seen = 0
        self.flops_seen = 0
        self._train_loss_sum = torch.zeros(())
        self._train_loss_count = 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch, seq_len) long -> logits (batch, seq_len, padded_vocab) float."""
        return self.model(input_ids)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over the targets != -100 as a float32 0-dim tensor, the logits)."""
        logits = self(batch["input_ids"])
        targets = batch["targets"]
        return masked_cross_entropy(logits, targets), logits

    def _world_size(self) -> int:
        """Processes of the data-parallel run this module trains in (1 without a Trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def _global_batch_loss(self, batch: dict[str, torch.Tensor], world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's share of the global batch's mean loss times ``world_size``, to backpropagate; the global
        batch's mean loss, detached). Sums (scored tokens, summed loss) over the ranks (one all-reduce)."""
        logits = self(batch["input_ids"])
        targets = batch["targets"]
        summed = masked_cross_entropy(logits, targets, reduction="sum")
        scored = (targets != IGNORE_INDEX).sum().to(summed.dtype)
        totals = self.trainer.strategy.reduce(torch.stack([scored, summed.detach()]), reduce_op="sum")
        return summed * world_size / totals[0], totals[1] / totals[0]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        world_size = self._world_size()
        if world_size > 1:
            loss, shown = self._global_batch_loss(batch, world_size)
        else:
            loss, _ = self.compute_loss(batch)
            shown = loss
        tokens = batch["input_ids"].numel() * world_size
        self.tokens_seen += tokens
        self.flops_seen += tokens * self.train_flops_per_token
        self._train_loss_sum = self._train_loss_sum.to(loss.device) + shown.detach().float()
        self._train_loss_count += 1
        self.log("train_loss", shown, on_step=True, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        self.log("tokens", float(self.tokens_seen), on_step=True)
        self.log("flops", float(self.flops_seen), on_step=True)
        return loss

    def pop_mean_train_loss(self) -> float | None:
        """Mean training loss over the batches since the last call (None if there were none); resets it."""
        if self._train_loss_count == 0:
            return None
        mean = float(self._train_loss_sum) / self._train_loss_count
        self._train_loss_sum = torch.zeros((), device=self._train_loss_sum.device)
        self._train_loss_count = 0
        return mean

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self.compute_loss(batch)
        scored = int((batch["targets"] != IGNORE_INDEX).sum())
        distributed = self._world_size() > 1
        if scored == 0:
            if not distributed:
                return
            # every rank must log both metrics for their cross-rank reduction; these carry no weight
            loss = accuracy = torch.zeros((), device=loss.device)
        else:
            accuracy = masked_accuracy(logits, batch["targets"], IGNORE_INDEX)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=scored, sync_dist=distributed)
        self.log("val_accuracy", accuracy, on_epoch=True, batch_size=scored, sync_dist=distributed)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.spec.training
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
        )
        warmup, max_steps, min_ratio = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio

        def schedule(step: int) -> float:
            return lr_multiplier(step, warmup_steps=warmup, max_steps=max_steps, min_lr_ratio=min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["archspec"] = {"tokens_seen": self.tokens_seen, "flops_seen": self.flops_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("archspec", {})
        self.tokens_seen = int(counters.get("tokens_seen", 0))
        self.flops_seen = int(counters.get("flops_seen", 0))
