"""Packed-sequence offsets (cu_seqlens) read back to the host once per tensor, and what is derived from them.

Every layer of a model that packs sequences gets the same cu_seqlens tensor, and each would read its values back
to check them and to lay out its chunks: on a GPU each read waits for the stream to drain, a few times per layer.
`host_offsets` reads a tensor's values once and keeps them, with anything else `kept_for` derives from them (the
SSD kernels' chunk tables), for as long as the tensor lives and is not modified in place. In-place changes are
seen through the tensor's version counter (every in-place torch operation bumps it, with or without autograd);
writes that bypass it (through ``.data``, a NumPy view or DLPack) are not, so change offsets by making a new
tensor. Tensors made under torch.inference_mode have no version counter and are read every time.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable, TypeVar

import torch
from torch import Tensor

__all__ = ["OFFSET_DTYPES", "capturing", "host_offsets", "is_offsets_tensor", "kept_for", "non_decreasing_to",
           "read_back"]

T = TypeVar("T")

# id(tensor) -> (weak reference to it, its version when the values were derived, {key: value})
_KEPT: dict[int, tuple[weakref.ref, int, dict[Hashable, Any]]] = {}


def kept_for(tensor: Tensor, key: Hashable, build: Callable[[], T]) -> T:
    """build() (a value derived from tensor's contents, on its device), made once per key while tensor lives
    unchanged; made every time for an inference tensor (made under torch.inference_mode), which has no version
    counter, and while a CUDA graph is being captured on tensor's device (`capturing`)."""
    if tensor.is_inference() or capturing(tensor.device):
        return build()
    entry = _KEPT.get(id(tensor))
    if entry is None or entry[0]() is not tensor or entry[1] != tensor._version:
        entry = (weakref.ref(tensor, _forget(id(tensor))), tensor._version, {})
        _KEPT[id(tensor)] = entry
    values = entry[2]
    if key not in values:
        values[key] = build()
    return values[key]


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on device's current stream: tensors made now live in the graph's
    memory, so what is built now is not kept."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _forget(key: int) -> Callable[[weakref.ref], None]:
    """The callback that drops a dead tensor's entry (unless its id already belongs to a newer tensor's)."""
    def forget(ref: weakref.ref) -> None:
        entry = _KEPT.get(key)
        if entry is not None and entry[0] is ref:
            del _KEPT[key]
    return forget


def host_offsets(cu_seqlens: Tensor) -> tuple[int, ...]:
    """cu_seqlens' values on the host (one device-to-host read per tensor and version)."""
    return kept_for(cu_seqlens, "offsets", lambda: read_back(cu_seqlens))


OFFSET_DTYPES = (torch.int32, torch.int64)


def is_offsets_tensor(cu_seqlens: Tensor) -> bool:
    """Whether cu_seqlens has the form of packed-sequence offsets: 1-D, int32 or int64, at least two of them."""
    return cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 2 and cu_seqlens.dtype in OFFSET_DTYPES


def non_decreasing_to(offsets: tuple[int, ...], seqlen: int) -> bool:
    """Whether host offsets run from 0 to seqlen without decreasing (empty sequences allowed)."""
    return offsets[0] == 0 and offsets[-1] == seqlen and all(a <= b for a, b in zip(offsets[:-1], offsets[1:]))


def read_back(cu_seqlens: Tensor) -> tuple[int, ...]:
    """cu_seqlens' values on the host: a device-to-host copy that waits for the tensor's stream on a GPU."""
    return tuple(int(v) for v in cu_seqlens.tolist())
