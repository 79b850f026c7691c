"""Metrics over masked targets."""

from __future__ import annotations

import torch

from archspec.data.sampling import IGNORE_INDEX


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Share of positions with targets != ignore_index where argmax(logits) equals the target.

    logits (..., vocab) any float dtype; targets (...) int. Returns a 0-dim float32 tensor on logits' device,
    NaN when no position is scored.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape[:-1])} (logits without the vocab dim), "
            f"got {tuple(targets.shape)}"
        )
    scored = targets != ignore_index
    correct = (logits.argmax(dim=-1) == targets) & scored
    return correct.sum().float() / scored.sum().float()
