"""Metrics over masked targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from archspec.data.sampling import IGNORE_INDEX


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats, in float32) over the positions with targets != IGNORE_INDEX: their mean, or their sum
    with ``reduction="sum"``. logits (..., vocab) any float dtype; targets (...) int. A 0-dim tensor."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


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
