"""Host-side TMA descriptors (triton.tools.tensor_descriptor) of the Triton kernels' tiles.

A kernel that reads a tile through a descriptor gets a TMA copy (Hopper) in place of masked loads: the box's rows
past a chunk's or a sequence's end are the next one's (zero only past the array's end), so each kernel says what
reaches its outputs from them. The arrays are addressed as 2-D row views: (tokens, heads, width) as (tokens,
heads * width), (chunks, heads, rows, width) as (chunks * heads * rows, width).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

__all__ = ["descriptor", "descriptors", "rows_view"]

_MAX_ROWS = 2**31  # TMA coordinates are 32-bit


def rows_view(t: Tensor) -> Optional[Tensor]:
    """t (..., rows, heads, width) as a 2-D (all rows, heads * width) view that a TMA descriptor can address (unit
    last stride, heads adjacent, leading dimensions dense, 16-byte row stride and base, fewer than 2^31 rows and
    columns), else None."""
    *lead, rows, heads, width = t.shape
    row = t.stride(-3)
    dense = t.stride(-1) == 1 and t.stride(-2) == width and all(
        t.stride(i) == row * math.prod(t.shape[i + 1:-2]) for i in range(len(lead)))
    nrows = math.prod(lead) * rows
    if (not dense or (row * t.element_size()) % 16 or t.data_ptr() % 16 or nrows >= _MAX_ROWS
            or heads * width >= _MAX_ROWS):
        return None
    return torch.as_strided(t, (nrows, heads * width), (row, 1))


def descriptor(view: Tensor, box: list[int]) -> TensorDescriptor:
    """The descriptor of a `rows_view` in boxes of `box` (rows x columns)."""
    return TensorDescriptor.from_tensor(view, box)


def descriptors(*tiles: tuple[Tensor, list[int]]) -> Optional[tuple[TensorDescriptor, ...]]:
    """The descriptors of each (array, box) pair's `rows_view`, or None where TMA cannot address one of them."""
    views = [rows_view(t) for t, _ in tiles]
    if any(view is None for view in views):
        return None
    return tuple(descriptor(view, box) for view, (_, box) in zip(views, tiles))
