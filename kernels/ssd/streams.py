"""A second CUDA stream for launches that may run alongside the current stream's.

The SSD passes that walk sequences (the state passes) are chains of dependent steps in a few hundred programs:
they leave most of each SM's issue slots idle. Where a pass does not need another's output, running the two on two
streams lets the GPU schedule their programs side by side (benchmarks/NOTES-ssd.md, thirteenth session).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["Fork"]

_SIDE: dict[int, torch.cuda.Stream] = {}


class Fork:
    """Launches inside `with fork.side():` go to a second stream of `device` (CUDA only; elsewhere, and while
    `enabled` is False, they stay on the current stream) and start after everything launched on the current stream
    before the Fork was made (or before the last `follow()`); `join()` makes the current stream wait for them.
    Tensors the side launches use must be allocated before the fork and kept referenced until the join (the
    caching allocator reuses a block freed on one stream only in that stream's order)."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self._stream: Optional[torch.cuda.Stream] = None
        if enabled and device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index not in _SIDE:
                _SIDE[index] = torch.cuda.Stream(index)
            self._stream = _SIDE[index]
            self.follow()

    def follow(self) -> None:
        """Makes later side launches start after everything launched on the current stream so far."""
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))

    @contextlib.contextmanager
    def side(self) -> Iterator[None]:
        if self._stream is None:
            yield
        else:
            with torch.cuda.stream(self._stream):
                yield

    def join(self) -> None:
        if self._stream is not None:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)
