"""Small vectorised sampling helpers shared by the synthetic tasks (all draws go through a torch.Generator)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Target value of positions that carry no loss (torch.nn.functional.cross_entropy's default ignore_index)."""


def distinct_randint(generator: torch.Generator, num_rows: int, low: int, high: int, k: int) -> torch.Tensor:
    """(num_rows, k) int64: per row, k distinct integers from [low, high) in random order."""
    if not 0 < k <= high - low:
        raise ValueError(f"k: expected 1 <= k <= high - low = {high - low}, got {k}")
    scores = torch.rand(num_rows, high - low, generator=generator)
    return scores.topk(k, dim=1).indices + low


def sorted_positions(generator: torch.Generator, num_rows: int, length: int, k: int) -> torch.Tensor:
    """(num_rows, k) int64: per row, k distinct positions in [0, length) in increasing order."""
    return distinct_randint(generator, num_rows, 0, length, k).sort(dim=1).values
