"""Packed batches with empty sequences, for the SSD scan: the scans take only sequences of at least one token.

A sequence with no tokens adds nothing to y, and its final state is its initial state (zero without one). So the
scan runs on the other sequences, and the empty ones' final states are their initial states, put in their places
by a differentiable index_copy: dL/d(initial state) of an empty sequence is dL/d(its final state).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .offsets import capturing, host_offsets, is_offsets_tensor, kept_for, non_decreasing_to

__all__ = ["has_empty_sequences", "scan_skipping_empty"]


def has_empty_sequences(cu_seqlens: Optional[Tensor], seqlen: int) -> bool:
    """Whether cu_seqlens (None: one sequence per batch row) is a valid set of offsets (integer, from 0 to seqlen >
    0, never decreasing) with two equal consecutive ones. Invalid offsets, and calls without tokens, are left to
    the scans' checks, which say what is wrong; never while a CUDA graph is being captured on its device, where
    its values cannot be read."""
    if cu_seqlens is None or not is_offsets_tensor(cu_seqlens) or capturing(cu_seqlens.device):
        return False
    offsets = host_offsets(cu_seqlens)
    empty = any(b == a for a, b in zip(offsets[:-1], offsets[1:]))
    return seqlen > 0 and non_decreasing_to(offsets, seqlen) and empty


def _kept(cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    """(offsets of the non-empty sequences, (nonempty,) int64 indices of those sequences), on cu_seqlens' device,
    made once per cu_seqlens tensor (offsets.kept_for)."""
    def build() -> tuple[Tensor, Tensor]:
        offsets = host_offsets(cu_seqlens)
        keep = [i for i in range(len(offsets) - 1) if offsets[i + 1] > offsets[i]]
        values = (0,) + tuple(offsets[i + 1] for i in keep)
        kept_offsets = torch.tensor(values, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
        kept_for(kept_offsets, "offsets", lambda: values)  # known here: no scan reads them back
        return kept_offsets, torch.tensor(keep, dtype=torch.int64, device=cu_seqlens.device)
    return kept_for(cu_seqlens, "nonempty sequences", build)


def scan_skipping_empty(scan: Callable[..., object], x: Tensor, B: Tensor, cu_seqlens: Tensor,
                        initial_states: Optional[Tensor], return_final_states: bool, **kwargs: object) -> object:
    """scan(x=x, B=B, cu_seqlens=, initial_states=, return_final_states=True, **kwargs) over the non-empty
    sequences of cu_seqlens only; returns what scan would return for all of them: y, or (y, final states (nseqs,
    nheads, headdim, dstate)) with the empty sequences' final states their initial states (or zero)."""
    nseqs = cu_seqlens.numel() - 1
    if initial_states is not None and (initial_states.dim() != 4 or initial_states.shape[0] != nseqs):
        raise ValueError(f"initial_states must have shape (nseqs={nseqs}, nheads, headdim, dstate) with cu_seqlens, "
                         f"got {tuple(initial_states.shape)}")
    kept_offsets, keep = _kept(cu_seqlens)
    kept_initial = initial_states.index_select(0, keep) if initial_states is not None else None
    y, final = scan(x=x, B=B, cu_seqlens=kept_offsets, initial_states=kept_initial, return_final_states=True, **kwargs)
    if not return_final_states:
        return y
    if initial_states is not None:
        base = initial_states.to(final.dtype)
    else:
        base = final.new_zeros(nseqs, *final.shape[1:])
    return y, base.index_copy(0, keep, final)
