"""Block sizes and launch settings of the SSD kernels, chosen from the problem's sizes.

All tile edges are powers of two of at least 16 (tl.dot's minimum); head_dim and d_state that are not powers of
two are padded up to the next one inside a tile and masked. `KernelConfig` holds one kernel's choice; the
`*_config` functions are the heuristics (tuned on an H100 and an H200, see benchmarks/NOTES-ssd.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import triton

from ..overrides import env_overrides

__all__ = ["KernelConfig", "pow2", "dt_head_block", "state_config", "state_bwd_config", "scan_config", "cb_config",
           "bwd_dx_config", "bwd_dcb_config", "bwd_dbc_config", "MIN_CHUNK", "SEGMENT_CHUNKS", "auto_segment",
           "fill_sms", "scan_one_per_sm_config", "walk_reads_cb", "walk_span", "whole_walks", "ONE_PER_SM_FILL"]

MIN_CHUNK = 16


def pow2(n: int) -> int:
    """The next power of two >= max(n, 16)."""
    return max(MIN_CHUNK, triton.next_power_of_2(n))


def dt_head_block(nheads: int) -> int:
    """Heads per program of the per-chunk kernels that read or write the token-major dt (forward.py's
    `_decay_fwd_kernel`, backward_states.py's `dt_bwd_kernel`): rows of up to 16 heads, not one 2-byte element per
    32-byte sector (H200, 8 x 8192 tokens, 64 heads: dt backward 0.107 -> 0.033 ms against one head per program)."""
    return min(16, triton.next_power_of_2(nheads))


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of one kernel. block_m/block_k: token tiles; block_p: head_dim tile; block_n: d_state tile.

    walk (output and dx kernels only): 1 for the kernel that walks a chunk carrying a block_n x block_p state
    tile, 0 for the kernel per (row tile, chunk) of tiles.py.
    maxnreg: registers per thread ptxas may use (0: as many as it likes, up to 255); a lower cap lets more
    programs share an SM at the price of spills.
    wgmma (walks): 1 runs the Gluon kernel (forward_wgmma.py, backward_wgmma.py) where it can run (bf16 /
    fp16 on sm_90).
    segment (state passes): walk sequences in segments of this many chunks in parallel (segments.py); 0 walks
    each whole sequence in one program; -1 lets `auto_segment` choose per call.
    aligned: 1 passes ChunkTable.aligned on to the kernel (common.known_multiple: vectorised per-token loads), 0
    hides it.
    scale_b (state passes, one head per tile): 1 multiplies each step's B (backward: C) tile by the per-token
    weights instead of its x (dy) tile, the smaller of the two when d_state < head_dim (state_config).
    span (output and dx walks): chunks per walk program (layout.WalkTable); 0 lets `walk_span` choose per call.
    whole (output walk): 1 walks each whole sequence in one program, which stores the chunk states and the final
    state itself, so that the forward runs no state pass (calls without initial states only: the Gluon walk
    loading them gave wrong outputs at 128 x 128 on the H200, not understood); 0 never; -1 lets `whole_walks`
    choose per call.
    table (output walk): 1 takes the within-chunk term from the per-chunk C B^T table (tiles.chunk_cb); 0 has the
    walk form its own C B^T; -1 lets `walk_reads_cb` choose per call.
    heads (state passes): 2 makes a tile the whole head_dim of two heads of one group (block_p = 2 x head_dim, a
    power of two), so that one program's B (C) tile serves both; 1 a block of one head's head_dim.
    split (dB/dC kernel): 1 computes dC and dB in separate programs (two launches), each of which reads one of
    dy / x and one of the states / state gradients; 0 both in one program.
    gemm (output and dx kernels per row tile): 1 takes their state term (C h^T, B dh^T) from one batched matmul
    per call (state_products.py) instead of forming it per row tile (16-bit inputs, and float32 off the GPU:
    state_products.matmul_matches_kernels); 0 forms it.
    tma (Gluon output and dx walks, dB/dC kernel, state-gradient pass, dx row tiles): 1 reads the walks' step tiles
    (x or dy, B, C; dB/dC: the head loop's x or dy and state tiles; the state-gradient pass: dy and C; dx row
    tiles: B, the state gradients, the C B^T table and dy) by TMA where the descriptors allow, 0 by cp.async or
    pointers; -1 lets forward_wgmma.tma_arguments choose per output walk (dB/dC: 1 in the split programs; the
    state-gradient pass: 0; the others: 1).
    """

    block_m: int
    block_k: int
    block_p: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    walk: int = 0
    maxnreg: int = 0
    wgmma: int = 0
    segment: int = -1
    aligned: int = 1
    heads: int = 1
    span: int = 0
    scale_b: int = 0
    whole: int = -1
    split: int = 0
    gemm: int = 0
    table: int = -1
    tma: int = -1

    def alignment(self, table_aligned: bool) -> bool:
        """The ALIGNED constexpr of a launch over a chunk table whose `aligned` is table_aligned."""
        return table_aligned and bool(self.aligned)

    def register_cap(self) -> dict[str, int]:
        """{"maxnreg": maxnreg} when a cap is set, else {}: with num_warps, the launch options of the Gluon
        walks."""
        return {"maxnreg": self.maxnreg} if self.maxnreg else {}

    def launch_options(self) -> dict[str, int]:
        """num_warps, num_stages (and maxnreg when set) for a Triton launch."""
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, **self.register_cap())


def _overrides(name: str) -> dict[str, int]:
    return env_overrides(f"ARCHSPEC_SSD_{name.upper()}")


def _override(name: str, cfg: KernelConfig) -> KernelConfig:
    """Applies ARCHSPEC_SSD_<NAME>="block_m=..,num_warps=.." (a tuning hook for benchmarks/ssd_kernels.py)."""
    return replace(cfg, **_overrides(name))


def _token_tile(chunk_size: int) -> int:
    return min(chunk_size, 64)


def _state_tiles(headdim: int, dstate: int, chunk_size: int, heads_per_group: int) -> tuple[int, int, int, int]:
    """block_m (= block_k), block_p, block_n and heads of a state pass: 128-token steps (H100 sweep: fewer dependent
    steps per sequence beat 64) over a head_dim x d_state tile of at most 8,192 elements, d_state in tiles of <=
    128; except 128 x 128 tiles (16,384 elements) with d_state tiles of 128 and head_dim >= 128, so that half as
    many programs read each B (C) tile (the passes run them in 8 uncapped warps), and for the same reason, with
    d_state tiles of 128 and head_dim 64, 128 x 128 tiles of two heads' whole head_dim where a group holds pairs
    of heads (H200, 8 x 8192 tokens, 64 heads in one group, kernel ms forward / backward pass: 64 x 256 0.845 /
    1.095 -> 0.768 / 0.840; 64 x 128 0.422 / 0.509 -> 0.383 / 0.419; at 64 x 64, 128 x 64 tiles of two heads
    lose: 0.234 / 0.275 -> 0.308 / 0.334)."""
    steps = min(chunk_size, 128)
    bn = min(pow2(dstate), 128)
    if bn == 128 and pow2(headdim) >= 128:
        return steps, 128, bn, 1
    if bn == 128 and headdim == 64 and heads_per_group % 2 == 0:
        return steps, 128, bn, 2
    return steps, min(pow2(headdim), max(16, 8192 // bn)), bn, 1


def _state_override(name: str, cfg: KernelConfig, headdim: int, heads_per_group: int) -> KernelConfig:
    """cfg with ARCHSPEC_SSD_<NAME>'s fields: a block_p of one head's rows (not 2 x head_dim) without heads sets
    heads to 1; then a check that heads is one the state passes can run."""
    fields = _overrides(name)
    if "block_p" in fields and "heads" not in fields and fields["block_p"] != 2 * headdim:
        fields["heads"] = 1
    cfg = replace(cfg, **fields)
    if cfg.scale_b and cfg.heads != 1:
        raise ValueError(f"ARCHSPEC_SSD_{name.upper()}: scale_b=1 needs tiles of one head (heads=1), not {cfg.heads}")
    if cfg.heads == 1:
        return cfg
    if cfg.heads != 2 or headdim != pow2(headdim) or heads_per_group % 2 or cfg.block_p != 2 * headdim:
        raise ValueError(
            f"ARCHSPEC_SSD_{name.upper()}: heads={cfg.heads} with block_p={cfg.block_p} cannot run at head_dim "
            f"{headdim} with {heads_per_group} heads per group; expected heads 1, or heads 2 with block_p = "
            f"2 x head_dim, a power of two, and an even number of heads per group")
    return cfg


_LARGE_STATE_TILE = 8192  # elements: state-pass tiles above it run in 8 uncapped warps, one program per SM


def _large_tile_stages(heads: int) -> int:
    """num_stages of the state passes' 128 x 128 tiles (8 uncapped warps, one program per SM): one head's tiles
    prefetch two steps ahead, two heads' one (H200, 8 x 8192 tokens, pass ms 2 -> 3 stages: forward 128 x 128
    0.674 -> 0.577 without a backward to come and 0.736 -> 0.648 with one, 128 x 256 1.441 -> 1.325; backward
    128 x 128 0.904 -> 0.873 and 0.941 -> 0.880 in two runs; two heads' tiles lose, forward 64 x 128 0.348 ->
    0.380, 64 x 256 0.741 -> 0.866, backward 64 x 128 0.447 -> 0.512; 4 stages need 256 KB of shared memory)."""
    return 3 if heads == 1 else 2


def state_config(headdim: int, dstate: int, chunk_size: int, heads_per_group: int = 1) -> KernelConfig:
    """Forward state pass: one program walks one sequence for a block_p x block_n tile of a head's state (kept in
    registers), or of two heads' (`_state_tiles`), block_m tokens per step (divides chunk_size). d_state 256 splits
    into two tiles of 128 (H200, 8 x 8192 tokens, head_dim 64: 1.52 -> 1.27 ms; head_dim 128: 3.04 -> 2.56). Tiles
    of 4,096 elements or more run in 8 warps capped at 128 registers, two programs per SM (H200 as above: 64 x 64
    0.338 -> 0.316 ms against 4 uncapped warps; 64 x 256 1.28 -> 1.12; 128 x 256 2.58 -> 2.24; no change at
    64 x 128, 128 x 64, 128 x 128). With d_state tiles of 128 and head_dim >= 128 the tile takes 128 rows of
    head_dim (16,384 elements) in 8 uncapped warps, so half as many programs read each B tile (H200 as above,
    state pass ms: 128 x 256 1.769 -> 1.494, in 16 warps 1.803; whole forward at 128 x 128 2.594 -> 2.463). Tiles
    of 4,096 elements prefetch two steps ahead (num_stages 3; 64 x 64: 0.269 -> 0.235 ms), larger ones one (3
    stages at 64 x 128: 0.439 -> 0.575; at 128 x 64 the forward 1.62 -> 1.89). Tiles of 8,192 elements take
    64-token steps (whole forward: 128 x 64 1.620 -> 1.569 ms, 64 x 128 1.329 -> 1.313, 64 x 256 2.409 -> 2.406;
    at 64 x 64 the pass 0.269 -> 0.360, at 128 x 128 in 128 x 128 tiles the forward 2.469 -> 2.652). Tiles of
    fewer d_state columns than head_dim rows weight B instead of x (scale_b; H200 as above, 128 x 64: pass 0.515
    -> 0.443 ms, forward 1.444 -> 1.375; triton 3.6 sm_90 step loop 485 -> 387 instructions per thread, spills
    8 -> 0 bytes; the backward pass's twin, 961 -> 758 instructions, timed 0.632 -> 0.593 and 0.687 -> 0.617 in
    two runs whose forward+backward moved by less than their noise, stays off), and without the spills they too
    prefetch two steps ahead (128 x 64: pass 0.405 -> 0.351 ms, 2 x 32768 0.398 -> 0.342; 128-token steps
    instead 0.380; d_state 16 and 32 at head_dim 64, which take both rules, untimed).
    segment: chosen per call by `auto_segment`; ARCHSPEC_SSD_STATE=segment=N (ARCHSPEC_SSD_STATE_BWD for the
    backward pass) fixes it (0: whole sequences). Per call, `fill_sms` may halve block_p for few programs."""
    steps, bp, bn, heads = _state_tiles(headdim, dstate, chunk_size, heads_per_group)
    if bp * bn > _LARGE_STATE_TILE:
        cfg = KernelConfig(steps, steps, bp, bn, 8, _large_tile_stages(heads), heads=heads)
    else:
        wide = bp * bn >= 4096
        scale_b = bn < bp
        stages = 3 if bp * bn == 4096 or scale_b else 2
        if bp * bn == 8192:
            steps = min(steps, 64)
        cfg = KernelConfig(steps, steps, bp, bn, 8 if wide else 4, stages, maxnreg=128 if wide else 0,
                           scale_b=int(scale_b))
    return _state_override("state", cfg, headdim, heads_per_group)


def state_bwd_config(headdim: int, dstate: int, chunk_size: int, heads_per_group: int = 1) -> KernelConfig:
    """Backward state-gradient pass, as `state_config`, but 4,096-element tiles stay in 4 uncapped warps (64 x 64:
    0.350 ms against 0.364 at 8 warps capped at 128) and d_state 256 runs in 4-warp programs of 64 x 64 tiles
    (H200, as above, head_dim 64: 1.65 -> 1.37 ms; head_dim 128: 3.29 -> 2.75; 64 x 128 tiles 1.58 and 3.13).
    Larger tiles: 8 warps capped at 128 registers (3-5% faster than uncapped at d_state <= 128). From head_dim 128
    with d_state tiles of 128, 128 x 128 tiles in 8 uncapped warps, as in the forward pass (H200, kernel ms:
    128 x 128 1.019 -> 0.850, 128 x 256 2.194 -> 1.704), and so the tiles of two heads."""
    steps, bp, bn, heads = _state_tiles(headdim, dstate, chunk_size, heads_per_group)
    if bp * bn > _LARGE_STATE_TILE:
        cfg = KernelConfig(steps, steps, bp, bn, 8, _large_tile_stages(heads), heads=heads)
    else:
        if pow2(dstate) > 128:
            bp, bn = min(pow2(headdim), 64), 64
        wide = bp * bn > 4096
        cfg = KernelConfig(steps, steps, bp, bn, 8 if wide else 4, 2, maxnreg=128 if wide else 0)
    return _state_override("state_bwd", cfg, headdim, heads_per_group)


SEGMENT_CHUNKS = 64


def auto_segment(programs: int, longest: int, sm_count: int, every: int = 1) -> int:
    """Segment length in chunks for a state pass of `programs` programs (sequences x heads x state tiles) whose
    longest sequence has `longest` chunks, on a GPU of sm_count SMs (0: unknown): segments of 64 chunks when the
    programs would leave more than half the SMs idle (a forward pass that stores every `every`-th chunk state,
    every > 1: when they would not fill the SMs twice) and a sequence has more than one segment, else 0 (whole
    sequences). H200, 64 heads, head_dim 64, one sequence (64 programs), forward+backward ms whole / segments of
    16 / of 64: 65,536 tokens, d_state 64 6.57 / 6.48 / -, d_state 128 9.98 / 8.74 / -; 262,144 tokens 26.2 / 23.4
    / 23.1 and 39.5 / 34.5 / 33.5; 1,048,576 tokens 104.1 / 90.8 / 88.2 and 157.6 / 134.6 / 132.9. At 128
    programs segments lose (head_dim 128, d_state 128, whole tiles split in two: 1 x 65,536 13.65 / 13.83;
    1 x 1,048,576 216.8 / 222.5 / 221.0; 2 x 32,768 at head_dim 64: 5.57 / 6.28): the fix of the chunk states
    costs more than the walk gains. A forward without a backward to come fixes only the walks' first chunk
    states (every 4th at chunk 256): 2 x 32,768 tokens, 128 programs, forward ms whole / segments of 64 / of 32:
    64 x 64 0.940 / 0.820 / 0.881, 64 x 128 1.234 / 1.159 / 1.145, 128 x 64 1.580 / 1.367 / 1.394, 128 x 128 (in
    128 x 128 tiles of 8 uncapped warps) 2.188 / 2.201 / 2.216."""
    if sm_count and (programs if every > 1 else 2 * programs) <= sm_count and longest > SEGMENT_CHUNKS:
        return SEGMENT_CHUNKS
    return 0


_FILL_MIN_TILE = {"state": 2048, "state_bwd": 4096}


def fill_sms(name: str, cfg: KernelConfig, programs: int, sm_count: int) -> KernelConfig:
    """A state pass's tiles (name: "state" or "state_bwd") when its `programs` programs (walked sequences or segments x
    heads x tiles of cfg) would not fill the sm_count SMs once (tiles of one program per SM: would leave half of them
    idle): block_p halved (4 uncapped warps; a tile of two heads first becomes one head's) while that holds and the tile
    keeps at least 2,048 elements (forward) or 4,096 (backward); unchanged when ARCHSPEC_SSD_<NAME> sets block_p or the
    SM count is unknown (0). H200, 2 x 32,768 tokens, 64 heads (128 programs), fwd / fwd+bwd ms: 64 x 128 2.050 / 8.091
    -> 1.733 / 7.585 (32 x 128 tiles), 128 x 64 2.414 / 9.447 -> 2.103 / 8.642 (64 x 64); 64 x 64 in 32 x 64 tiles:
    forward pass 0.583 -> 0.513 ms, backward pass 0.574 -> 0.602 (in 16 x 64: 0.530 and 1.067). More programs than SMs
    lose: 128 x 64 in 32 x 64 tiles 2.544 / 9.482; 64 x 128 in 32 x 128 tiles at 8 x 8192 (512 programs) 7.423 -> 7.696.
    Tiles of more than _LARGE_STATE_TILE elements (8 uncapped warps, one program per SM) halve only while their programs
    would leave at least half of the SMs idle, and then prefetch one step ahead: at 2 x 32,768, 128 x 128 (128 programs)
    in whole tiles, state pass ms forward 0.841 -> 0.672, backward 1.008 -> 0.876-0.896, forward+backward 8.000 ->
    7.903; split into 64 x 128 tiles with the 128 x 128 tiles' 3 stages it took 9.724."""
    if "block_p" in _overrides(name):
        return cfg
    smallest = _FILL_MIN_TILE[name]
    while sm_count and cfg.block_p > 16 and cfg.block_p * cfg.block_n >= 2 * smallest:
        one_per_sm = cfg.block_p * cfg.block_n > _LARGE_STATE_TILE
        if (2 * programs > sm_count) if one_per_sm else (programs >= sm_count):
            break
        cfg = replace(cfg, block_p=cfg.block_p // 2, num_warps=4, maxnreg=0, heads=max(1, cfg.heads // 2),
                      num_stages=2 if one_per_sm else cfg.num_stages)
        programs *= 2
    return cfg


def cb_config(dstate: int, chunk_size: int) -> KernelConfig:
    """C B^T per chunk and group: block_m x block_k output tile, block_n the reduction step over d_state."""
    t = _token_tile(chunk_size)
    return _override("cb", KernelConfig(t, t, 16, min(pow2(dstate), 64), 4, 2))


def cb_table_fp32() -> bool:
    """Whether the per-chunk C B^T table (tiles.chunk_cb, read by the row-tile kernels and dCB) is float32 rather
    than in the inputs' dtype, the dtype the kernels round its weighted entries to for their products anyway:
    ARCHSPEC_SSD_CB_TABLE=fp32=1. A 16-bit table halves the row-tile kernels' largest reads (H200, 8 x 8192, bf16,
    kernel ms float32 -> bf16: 64 x 256 output 1.462 -> 1.321, dx 1.853 -> 1.726, forward+backward 6.99 -> 6.70;
    128 x 256 unchanged, 11.82 -> 11.79) at one more rounding of C B^T (largest difference from mamba_ssm at
    64 x 256, 1.3e-3 in dC -> 3.1e-3 in ddt_bias)."""
    return bool(_overrides("cb_table").get("fp32", 0))


def _chunk_kernel_config(name: str, headdim: int, dstate: int, chunk_size: int, walk_max_state: int,
                         walk_block_m: int, tiles_maxnreg: dict[int, int], walk_wgmma: int = 0,
                         walk_max_p: int = 256, tiles_block_n: int = 64, tiles_stages: int = 2) -> KernelConfig:
    """Output or dx kernel: the chunk walk while d_state <= 128 and the whole state (pow2(d_state) x
    pow2(head_dim)) has at most walk_max_state elements, else the kernel per row tile, which steps through d_state
    in block_n slices; tiles_maxnreg maps the latter's num_warps to its register cap; walk_wgmma is the walk's
    wgmma field, walk_max_p its largest head_dim block, tiles_block_n the row-tile kernel's d_state slice and
    tiles_stages its num_stages. The row-tile kernel takes its state term from one batched matmul (gemm) from
    d_state 256 up to head_dim 64 (H200, 8 x 8192 tokens, kernel ms output / dx: 64 x 256 1.313 / 1.728 ->
    1.004 / 1.416 plus 0.27 each for the matmul, forward+backward 6.665 -> 6.549); at head_dim 128 the matmul
    takes what the kernels save (128 x 256: 2.465 / 3.080 -> 1.909 / 2.527 plus 0.55, 11.756 -> 11.717) and
    its product, as large as y, would only add memory. ARCHSPEC_SSD_<NAME>'s fields override the result."""
    t = _token_tile(chunk_size)
    bn = pow2(dstate)
    fields = _overrides(name)
    if fields.get("walk", int(bn <= 128 and bn * pow2(headdim) <= walk_max_state)):
        cfg = KernelConfig(min(walk_block_m, t), t, min(pow2(headdim), max(16, 8192 // bn), walk_max_p), bn, 4, 2,
                           1, wgmma=walk_wgmma)
    else:
        bp = min(pow2(headdim), 128)
        warps = 4 if bp <= 64 else 8
        cfg = KernelConfig(t, t, bp, min(bn, tiles_block_n), warps, tiles_stages, 0, tiles_maxnreg.get(warps, 0),
                           gemm=int(bn > 128 and bp <= 64))
    return _whole_state_walk(name, replace(cfg, **fields), dstate)


def _whole_state_walk(name: str, cfg: KernelConfig, dstate: int) -> KernelConfig:
    """cfg, checked that a walk (cfg.walk) holds the whole d_state in its state tile: the output and dx walks carry
    h (dh) across the chunks, which a narrower block_n (from ARCHSPEC_SSD_<NAME>) would leave part of."""
    if cfg.walk and cfg.block_n < pow2(dstate):
        raise ValueError(f"ARCHSPEC_SSD_{name.upper()}: block_n={cfg.block_n} is narrower than d_state {dstate}, which "
                         "the walk (walk=1) holds whole; set walk=0 for the kernel per row tile, which steps through "
                         "d_state in block_n slices")
    return cfg


def scan_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """Forward output kernel. H200, 65,536 tokens, 64 heads: the walk wins up to d_state 128 (head_dim 64, d_state
    128: 2.0 vs 3.1 ms for the whole forward; head_dim 128: 3.9 vs 4.7) and loses at 256 (5.1 vs 4.2). There the
    per-row-tile kernel's 4-warp programs run best capped at 128 registers (head_dim 64: 4.20 -> 3.96 ms; the
    8-warp ones of head_dim 128 gain nothing from it), the 8-warp ones step through d_state in slices of 128
    (128 x 256: 2.668 -> 2.406 ms for the kernel). The walk runs as the Gluon kernel where it can (whole
    forward at 8K tokens per sequence: 64 x 64 1.43 -> 1.17 ms, 64 x 128 1.92 -> 1.69, 128 x 64 2.61 -> 2.13,
    128 x 128 3.75 -> 3.31); on Hopper, d_state 256 walks whole sequences in two warpgroups instead of the row tiles
    (scan_one_per_sm_config). ARCHSPEC_SSD_SCAN=wgmma=0 keeps the Triton kernels' rule."""
    return _chunk_kernel_config("scan", headdim, dstate, chunk_size, 128 * 128, 64, tiles_maxnreg={4: 128},
                                walk_wgmma=1, tiles_block_n=128 if pow2(headdim) > 64 else 64)


def scan_one_per_sm_config(headdim: int, dstate: int, chunk_size: int) -> Optional[KernelConfig]:
    """The Gluon output walk's config for whole-sequence walks fewer than the SMs (at least ONE_PER_SM_FILL of them:
    forward._output_config), and at d_state 256 for all whole-sequence walks, one program per SM; None where the
    Gluon walk's tiles do not apply. Two warpgroups (8 warps, each taking half of every product's columns) where that
    leaves each 64 head_dim columns, and at d_state 256 over the whole d_state in 64-column head_dim blocks (64
    registers per thread for its half of the state; 219-255 registers, no spills, 196 KB of shared memory: triton
    3.6, sm_90); else one warpgroup. H200, 2 x 32768 tokens (128 programs for 132 SMs), forward ms, against the state
    pass and walks of 4 chunks (64 x 256: the row tiles): 64 x 64 0.822-0.882 -> 0.755 (8 warps: 0.830), 64 x 128
    1.121-1.128 -> 0.918-0.923 (8 warps: 1.092-1.096), 128 x 64 in 8 warps 1.306-1.318 -> 1.151-1.161,
    forward+backward 5.30-5.36 -> 5.01-5.03 (4 warps: 1.286-1.299 and 5.67-5.70), 64 x 256 2.047 -> 1.446 (in d_state
    slices of 128: 1.99). With two programs per SM one warpgroup wins (8 x 8192: 64 x 64 0.556 against 0.829 in 8
    warps, 128 x 64 0.898 against 1.160; 64 x 256 in slices 1.398 against 1.452), and so do the row tiles after a
    state pass (64 x 256: 2.047 against 2.236). Since the walk's x, B and C come in by TMA, d_state 256 is the
    exception: the whole d_state in two warpgroups beats one-warpgroup walks in d_state slices of 128 (since
    removed: slower at every d_state 256 row timed again in the twenty-sixth session, benchmarks/RESULTS.md) at every
    length (H200, forward ms at 8 x 8192 / 32 x 2048 / 2 x 32768: 128 x 256 2.55-3.06 / 2.58-2.99 / 2.56-2.71 ->
    2.26-2.29 / 2.37 / 2.24; 64 x 256 1.26-1.29 / 1.25-1.33 -> 1.15-1.20 / 1.19-1.21); 128 x 64 in 8 warps still
    loses at 8 x 8192 (0.799 -> 1.106)."""
    if pow2(dstate) > 256:
        return None
    cfg = scan_config(headdim, min(dstate, 128), chunk_size)  # d_state 256 widens the tiles of 128
    if not (cfg.walk and cfg.wgmma) or cfg.block_m != 64:
        return None
    if cfg.block_n < pow2(dstate):
        if cfg.block_p != 64:
            return None
        fields = {"block_n": 256, "num_warps": 8}
    else:
        fields = {"num_warps": 8 if cfg.block_p >= 128 else 4}
    cfg = replace(cfg, **{**fields, **_overrides("scan")})
    return cfg if cfg.block_n >= pow2(dstate) else None


def walk_reads_cb(cfg: KernelConfig, chunk_size: int) -> bool:
    """Whether the output walk (cfg) takes its within-chunk term from the per-chunk C B^T table: cfg.table when 0
    or 1; else where steps of cfg.block_m divide the chunk (the Gluon walk copies one step's tile of the table at a
    time) and the walk's d_state tile is wider than 128 (the two-warpgroup walk, scan_one_per_sm_config: 64 x 256 at
    2 x 32768 1.550 -> 1.446 ms; H200, forward)."""
    if cfg.table == 1 and chunk_size % cfg.block_m:
        raise ValueError(f"ARCHSPEC_SSD_SCAN: table=1 needs block_m={cfg.block_m} to divide chunk_size={chunk_size}")
    if cfg.table >= 0:
        return bool(cfg.table)
    return chunk_size % cfg.block_m == 0 and cfg.block_n > 128


WALK_TOKENS = 1024


def walk_span(cfg: KernelConfig, chunk_size: int, programs: Callable[[int], int], sm_count: int) -> int:
    """Chunks per program of the output or dx walk (cfg.span when set): the most, up to WALK_TOKENS tokens, whose
    programs(span) still fill the sm_count SMs with two each (all of them when the SM count is unknown, 0), when
    steps of cfg.block_m tokens divide the chunk; else 1. A walk carries its float32 state (or state gradient)
    from one chunk into the next, so a program's start (loads of the chunk state, x, B, C before the first product)
    and end are paid once per walk. H200, 64 heads, chunk 256, output walk kernel ms for walks of 1 / 2 / 4 chunks:
    8 x 8192 tokens 64 x 64 0.641 / 0.582 / 0.558, 64 x 128 0.842 / 0.757 / 0.723, 128 x 64 1.014 / 0.941 / 0.913,
    128 x 128 1.666 / 1.490 / 1.437 (the same at 2 x 32768 and 32 x 2048); 1 x 8192 (512 programs of 4 chunks)
    64 x 64 0.086 / 0.078 / 0.074, 128 x 128 0.221 / 0.201 / 0.192; the dx walk, 1 / 4 chunks at 8 x 8192: 64 x 64
    0.883 / 0.748, 128 x 128 2.546 / 2.222; walks of 8 chunks gain 1-2.5% (forward) and nothing (dx)."""
    if cfg.span:
        return cfg.span
    if chunk_size % cfg.block_m:
        return 1
    span = max(1, WALK_TOKENS // chunk_size)
    while span > 1 and sm_count and programs(span) < 2 * sm_count:
        span //= 2
    return span


ONE_PER_SM_FILL = 0.75


def whole_walks(cfg: KernelConfig, chunk_size: int, programs: int, sm_count: int, fill: float = 1.0) -> bool:
    """Whether the output walk (cfg) runs each whole sequence in one program and stores the chunk states itself,
    in place of the forward's state pass: cfg.whole when it is 0 or 1; else when no span is set, steps of
    cfg.block_m tokens divide the chunk, and the walk's `programs` (sequences x heads x head_dim blocks) are at
    least `fill` times the sm_count SMs (never when the SM count is unknown, 0). A walk computes every chunk's state
    on its way anyway; the state pass only let shorter walks start mid-sequence. H200, 64 heads, chunk 256, forward-only
    kernel ms, walks of 4 chunks / whole sequences, and the state pass they need: 128 x 128 at 8 x 8192 (1,024
    programs) 1.413 / 1.399 + 0.586; at 2 x 32768 (256) 1.412 / 1.399 + 0.587; at 32 x 2048 1.411 / 1.391 +
    0.624; 64 x 64 at 8 x 8192 0.554 / 0.532 + 0.227; at 2 x 32768 (128 programs, fewer than the 132 SMs)
    0.556 / 0.732 + 0.225. ONE_PER_SM_FILL is the fill of the walks of scan_one_per_sm_config: at 128 programs on
    132 SMs the 64 x 256 forward ran in 1.446 ms against 2.047 for the state pass and row tiles, so with fewer
    programs, each as much longer, it would still win down to ~90 (not measured below 128)."""
    if cfg.whole == 1 and chunk_size % cfg.block_m:
        raise ValueError(f"ARCHSPEC_SSD_SCAN: whole=1 needs block_m={cfg.block_m} to divide chunk_size={chunk_size}")
    if cfg.whole >= 0:
        return bool(cfg.whole)
    return not cfg.span and chunk_size % cfg.block_m == 0 and sm_count > 0 and programs >= fill * sm_count


def bwd_dx_config(headdim: int, dstate: int, chunk_size: int, wgmma: bool = False) -> KernelConfig:
    """Backward dx kernel; wgmma: whether backward_wgmma.py's Gluon walk can run (bf16 / fp16 on sm_90).

    The Triton walk (H200, as above, forward+backward) wins with a 64 x 64 state (6.3 vs 7.7 ms) and loses from
    64 x 128 on (head_dim 64, d_state 128: 10.1 vs 9.4 ms; head_dim 128, d_state 64: 13.8 vs 12.5), where it
    carries more than the registers hold. The per-row-tile kernel runs best with a register cap that fits three
    4-warp or two 8-warp programs per SM (head_dim 64, d_state 128: 9.45 -> 8.80 ms; head_dim 128, d_state 128:
    16.20 -> 14.27; 96-168 swept); the walk is best uncapped. The Gluon walk (64-token steps) beats the Triton
    kernels up to d_state 128 (whole forward+backward, H200, 8 x 8192 tokens: 64 x 64 5.73 -> 5.59 ms, 64 x 128
    8.32 -> 7.98, 128 x 64 10.00 -> 9.53; 128 x 128 11.59 -> 11.20 since its loads are issued a step ahead, when
    it had lost 12.27 -> 13.25 before); ARCHSPEC_SSD_DX=wgmma=0 keeps the Triton kernels' rule. Its head_dim
    blocks stop at 64: blocks of 128 spill 408 bytes (triton 3.6), and at 128 x 64 blocks of 64 cut
    forward+backward 8.90 -> 8.77-8.83 ms."""
    tiles_maxnreg = {4: 168, 8: 128}
    # d_state 256 in two slices of 128 (H200, 8 x 8192: dx kernel 2.73 -> 2.37 ms at 64 x 256; at 128 x 128 slices
    # of 128 lose, 3.27 -> 3.37)
    tiles_block_n = 128 if pow2(dstate) > 128 else 64
    # with the state term from the matmul, 4-warp programs prefetch two source tiles ahead (H200, 8 x 8192, 64 x 256:
    # dx kernel 1.416 -> 1.375 ms; the 8-warp ones of 128 x 256 gain nothing)
    tiles_stages = 3 if pow2(dstate) > 128 and pow2(headdim) <= 64 else 2
    if wgmma and _overrides("dx").get("wgmma", 1):
        cfg = _chunk_kernel_config("dx", headdim, dstate, chunk_size, 256 * 128, 64, tiles_maxnreg, walk_wgmma=1,
                                   walk_max_p=64, tiles_block_n=tiles_block_n, tiles_stages=tiles_stages)
        # the Gluon walk runs faster without ChunkTable.aligned (H200, 8 x 8192, 128 x 128: 3.07 -> 2.92 ms; no
        # change at 64 x 64), the row-tile kernel with it (64 x 256: 2.37 -> 1.98)
        return cfg if not cfg.walk or "aligned" in _overrides("dx") else replace(cfg, aligned=0)
    return _chunk_kernel_config("dx", headdim, dstate, chunk_size, 64 * 64, 32 if dstate > 64 else 64,
                                tiles_maxnreg, tiles_block_n=tiles_block_n, tiles_stages=tiles_stages)


def bwd_dcb_config(headdim: int, chunk_size: int) -> KernelConfig:
    """Backward dL/d(C B^T) kernel: block_m x block_k tile, block_p the reduction step over head_dim, num_stages
    the depth of the head loop's prefetched copies. H200, 8 x 8192 tokens, kernel ms, against the kernel that
    loaded each head's tiles and vectors where it used them: 64 x 64 1.52 -> 1.29 (2 stages 1.48; 3 stages
    without the alignment of ChunkTable.aligned 1.54), 128 x 128 2.08 -> 1.47 (2 stages 1.65)."""
    t = _token_tile(chunk_size)
    return _override("dcb", KernelConfig(t, t, min(pow2(headdim), 64), 16, 4, 3))


def bwd_dbc_config(headdim: int, dstate: int, chunk_size: int) -> KernelConfig:
    """Backward dB/dC kernel: block_m rows, block_k partner rows, block_p head_dim step, block_n d_state tile. With
    both gradients in one program, tiles of 64 in 4-warp programs beat 128 in 8-warp ones (H200, 8 x 8192, kernel
    ms: 64 x 128 1.43 -> 1.27, 128 x 128 2.20 -> 2.08, 64 x 256 2.77 -> 2.48, 128 x 256 4.37 -> 4.03). num_stages
    is the depth of the copies the head loop prefetches: 3 up to head_dim 64 (H200 as above, against the kernel
    before it prefetched: 64 x 64 0.68 -> 0.46 ms, 64 x 128 1.27 -> 0.86, 64 x 256 2.48 -> 1.71), 2 above (128 x
    128 2.08 -> 1.76; 3 stages: 2.03).
    From d_state 128, dC and dB in separate programs (split) with d_state tiles of 128: each program keeps one
    accumulator and reads one of dy / x and one of the states / state gradients, and a d_state tile of 128 halves
    the re-reads of dy and x (H200, 8 x 8192, kernel ms both in one program with tiles of 64 -> split with tiles
    of 64 / of 128: 64 x 128 0.809 -> 0.903 / 0.680, 128 x 128 1.581 -> 2.031 / 1.282, 64 x 256 1.545 -> 1.553 /
    1.157, 128 x 256 2.968 -> 3.739 / 2.362; tiles of 128 with 3 stages or in 128-row 8-warp programs: 1.456 and
    1.488 at 128 x 128)."""
    t = _token_tile(chunk_size)
    split = pow2(dstate) >= 128
    bn = min(pow2(dstate), 128 if split else 64)
    stages = 3 if pow2(headdim) <= 64 else 2
    # H200: uncapped since it also takes the log-decay terms of C h and x dh (a 128-register cap, which had cut
    # fwd+bwd by 1-4% before, now spills 500-650 bytes: 64 x 64 5.59 -> 5.13 ms without it, 128 x 128 13.74 -> 13.19)
    return _override("dbc", KernelConfig(t, t, min(pow2(headdim), 64), bn, 4, stages, split=int(split)))


def overlap(pass_name: str) -> bool:
    """Whether the "forward" or "backward" pass runs launches that do not depend on each other on two streams
    (streams.Fork): the backward its state-gradient pass alongside dCB (and dC: `dc_beside_state_pass`), then dB/dC
    alongside the dx kernel; the forward (d_state 256, the output kernel per row tile) the chunks' C B^T alongside the
    state pass. ARCHSPEC_SSD_OVERLAP=backward=0 (or forward=0) keeps a pass on one stream. H200, 8 x 8192 tokens,
    fwd+bwd ms one stream -> state-gradient pass and dx kernel alongside dCB: 64 x 64 3.357 -> 3.362, 64 x 128 4.667 ->
    4.599, 64 x 256 7.624 -> 7.417, 128 x 64 5.868 -> 5.710, 128 x 128 8.586 -> 8.522, 128 x 256 13.118 -> 12.881; that
    -> the schedule above (another run): 3.360 -> 3.352, 4.610 -> 4.609, 7.444 -> 7.399, 5.727 -> 5.704, 8.396 -> 8.377,
    12.826 -> 12.702. Forward ms (two runs each): 64 x 256 2.302 / 2.299 -> 2.278 / 2.275, 128 x 256 3.942 / 3.946 ->
    3.884 / 3.910."""
    return bool(_overrides("overlap").get(pass_name, 1))


def dc_beside_state_pass(dstate: int) -> bool:
    """Whether the backward runs dB/dC's dC programs (split, which need dCB but not the state gradients) after dCB,
    alongside the state-gradient pass, instead of alongside the dx kernel with dB: from d_state 256. H200, 65,536
    tokens, fwd+bwd ms, means of 5 paired runs (64 x 256: 3) beside dx -> beside the state pass: 128 x 256 at
    32 x 2048 10.328 -> 10.288, at 8 x 8192 10.134 -> 10.119; 64 x 256 5.715 -> 5.711 and 5.645 -> 5.603; at
    d_state 128 it loses (128 x 128: 6.596 -> 6.634 and 6.568 -> 6.617). ARCHSPEC_SSD_OVERLAP=early_dc=0|1 sets it."""
    return bool(_overrides("overlap").get("early_dc", int(pow2(dstate) > 128)))
