"""Block sizes and launch settings of the SSD kernels, chosen from the problem's sizes.

All tile edges are powers of two of at least 16 (tl.dot's minimum); head_dim and d_state that are not powers of
two are padded up to the next one inside a tile and masked. `KernelConfig` holds one kernel's choice; the
`*_config` functions are the heuristics (tuned on an H100, see benchmarks/NOTES-ssd.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import triton

__all__ = ["KernelConfig", "pow2", "state_config", "scan_config", "cb_config", "bwd_dx_config",
           "bwd_dcb_config", "bwd_dbc_config", "MIN_CHUNK"]

MIN_CHUNK = 16


def pow2(n: int) -> int:
    """The next power of two >= max(n, 16)."""
    return max(MIN_CHUNK, triton.next_power_of_2(n))


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of one kernel. block_m/block_k: token tiles; block_p: head_dim tile; block_n: d_state tile."""

    block_m: int
    block_k: int
    block_p: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def _override(name: str, cfg: KernelConfig) -> KernelConfig:
    """Applies ARCHSPEC_SSD_<NAME>="block_m=..,num_warps=.." (a tuning hook for benchmarks/ssd_kernels.py)."""
    spec = os.environ.get(f"ARCHSPEC_SSD_{name.upper()}")
    if not spec:
        return cfg
    fields = {k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(",") if item.strip())}
    return replace(cfg, **fields)


def _token_tile(chunk_size: int) -> int:
    return min(chunk_size, 64)


def state_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """State kernels (forward state pass and backward state-gradient pass): one program walks one sequence.

    block_m: tokens per step (divides chunk_size); block_p x block_n: the state tile kept in registers.
    """
    bn = pow2(dstate)
    bp = min(pow2(headdim), max(16, 8192 // bn))
    warps = 4 if bp * bn <= 4096 else 8
    steps = min(chunk_size, 128)  # H100 sweep: 128-token steps beat 64 (fewer dependent steps per sequence)
    return _override("state", KernelConfig(steps, steps, bp, bn, warps, 2))


def cb_config(dstate: int, chunk_size: int) -> KernelConfig:
    """C B^T per chunk and group: block_m x block_k output tile, block_n the reduction step over d_state."""
    t = _token_tile(chunk_size)
    return _override("cb", KernelConfig(t, t, 16, min(pow2(dstate), 64), 4, 2))


def scan_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """Forward output kernel: block_m output rows, block_k source rows, block_p head_dim, block_n d_state step."""
    t = _token_tile(chunk_size)
    bp = min(pow2(headdim), 128)
    return _override("scan", KernelConfig(t, t, bp, min(pow2(dstate), 64), 4 if bp <= 64 else 8, 2))


def bwd_dx_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """Backward dx kernel: block_m source rows, block_k target rows, block_p head_dim, block_n d_state step."""
    t = _token_tile(chunk_size)
    bp = min(pow2(headdim), 128)
    return _override("dx", KernelConfig(t, t, bp, min(pow2(dstate), 64), 4 if bp <= 64 else 8, 2))


def bwd_dcb_config(headdim: int, chunk_size: int) -> KernelConfig:
    """Backward dL/d(C B^T) kernel: block_m x block_k tile, block_p the reduction step over head_dim."""
    t = _token_tile(chunk_size)
    return _override("dcb", KernelConfig(t, t, min(pow2(headdim), 64), 16, 4, 2))


def bwd_dbc_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """Backward dB/dC kernel: block_m rows, block_k partner rows, block_p head_dim step, block_n d_state tile."""
    t = _token_tile(chunk_size)
    bn = min(pow2(dstate), 128)
    return _override("dbc", KernelConfig(t, t, min(pow2(headdim), 64), bn, 4 if bn <= 64 else 8, 2))
