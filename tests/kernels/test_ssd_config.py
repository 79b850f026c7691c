"""kernels/ssd/config.py picks each SSD kernel's tiles, warps and register cap from the problem's sizes, and the
ARCHSPEC_SSD_<KERNEL> variables override any field (a tuning hook for benchmarks/ssd_tune.py)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from archspec.kernels.ssd import forward
from archspec.kernels.ssd.config import (ONE_PER_SM_FILL, SEGMENT_CHUNKS, KernelConfig, auto_segment, bwd_dbc_config,
                                         bwd_dcb_config, bwd_dx_config, dc_beside_state_pass, dt_head_block, fill_sms,
                                         overlap, scan_config, scan_one_per_sm_config, state_bwd_config, state_config,
                                         walk_reads_cb, walk_span, whole_walks)
from archspec.kernels.ssd.layout import build_chunk_table
from archspec.kernels.ssd.wgmma import wgmma_supported, wgmma_tiles


def test_output_kernel_walks_the_chunk_up_to_d_state_128_and_tiles_it_beyond() -> None:
    assert scan_config(64, 128, 256).walk == 1
    assert scan_config(128, 128, 256).walk == 1
    assert scan_config(64, 256, 256).walk == 0


def test_row_tile_kernels_take_the_state_term_from_the_matmul_from_d_state_256_up_to_head_dim_64() -> None:
    for headdim, gemm in ((32, 1), (64, 1), (128, 0)):
        assert scan_config(headdim, 256, 256).gemm == gemm
        assert bwd_dx_config(headdim, 256, 256, wgmma=True).gemm == gemm
    assert bwd_dx_config(64, 256, 256).num_stages == 3 and bwd_dx_config(128, 256, 256).num_stages == 2
    assert bwd_dx_config(64, 128, 256).gemm == 0 and bwd_dx_config(64, 128, 256).num_stages == 2
    assert scan_config(64, 128, 256).gemm == 0


def test_register_caps_apply_to_the_per_row_tile_kernels_not_to_the_walks() -> None:
    assert bwd_dx_config(64, 64, 256).walk == 1 and bwd_dx_config(64, 64, 256).maxnreg == 0
    four_warps, eight_warps = bwd_dx_config(64, 128, 256), bwd_dx_config(128, 128, 256)
    assert (four_warps.walk, four_warps.num_warps, four_warps.maxnreg) == (0, 4, 168)
    assert (eight_warps.walk, eight_warps.num_warps, eight_warps.maxnreg) == (0, 8, 128)
    assert scan_config(64, 256, 256).block_n == 64 and scan_config(128, 256, 256).block_n == 128
    assert scan_config(64, 128, 256).maxnreg == 0
    assert state_config(64, 128, 256).maxnreg == 128
    assert state_config(64, 256, 256).maxnreg == 128


def test_forward_state_pass_runs_tiles_of_4096_elements_in_capped_8_warp_programs_the_backward_in_4_warps() -> None:
    forward, backward = state_config(64, 64, 256), state_bwd_config(64, 64, 256)
    assert (forward.num_warps, forward.maxnreg) == (8, 128)
    assert (backward.num_warps, backward.maxnreg) == (4, 0)


def test_state_passes_keep_the_whole_state_up_to_d_state_128_and_split_it_beyond() -> None:
    """One program per (sequence, head) holds a 64 x 128 state; at head_dim 64, d_state 256 is split over
    programs, the forward pass into 64 x 128 tiles, the backward pass into 64 x 64 tiles of 4-warp programs."""
    for config in (state_config, state_bwd_config):
        cfg = config(64, 128, 256)
        assert (cfg.block_p, cfg.block_n, cfg.num_warps) == (64, 128, 8)
    forward, backward = state_config(64, 256, 256), state_bwd_config(64, 256, 256)
    assert (forward.block_p, forward.block_n, forward.num_warps) == (64, 128, 8)
    assert (backward.block_p, backward.block_n, backward.num_warps) == (64, 64, 4)


def test_state_passes_take_128_x_128_tiles_in_8_uncapped_warps_from_head_dim_128_at_d_state_128() -> None:
    for config in (state_config, state_bwd_config):
        for dstate in (128, 256):
            cfg = config(128, dstate, 256)
            assert (cfg.block_p, cfg.block_n, cfg.num_warps, cfg.maxnreg) == (128, 128, 8, 0)
        assert config(128, 64, 256).block_p * config(128, 64, 256).block_n == 8192


def test_state_passes_take_two_heads_per_tile_at_head_dim_64_and_d_state_tiles_of_128() -> None:
    """With pairs of heads in a group, head_dim 64 and d_state 128 or 256 take 128 x 128 tiles of two heads' whole
    head_dim in 8 uncapped warps, 128-token steps; not with an odd number of heads per group, nor at d_state 64
    or another head_dim."""
    for config in (state_config, state_bwd_config):
        for dstate in (128, 256):
            cfg = config(64, dstate, 256, heads_per_group=64)
            assert (cfg.heads, cfg.block_p, cfg.block_n, cfg.num_warps, cfg.maxnreg, cfg.block_m) == (
                2, 128, 128, 8, 0, 128)
            assert config(64, dstate, 256, heads_per_group=3).heads == 1
        assert config(64, 64, 256, heads_per_group=64).heads == 1
        assert config(32, 256, 256, heads_per_group=64).heads == 1
        assert config(128, 256, 256, heads_per_group=64).heads == 1


def test_tiles_of_two_heads_halve_to_one_head_for_few_programs_or_a_block_p_of_one_head_and_bad_overrides_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = state_config(64, 256, 256, heads_per_group=2)
    split = fill_sms("state", pairs, programs=16, sm_count=132)
    assert (split.heads, split.block_p, split.block_n, split.num_warps) == (1, 16, 128, 4), "down to 2,048 elements"
    assert fill_sms("state", pairs, programs=66, sm_count=132).heads == 1
    assert fill_sms("state", pairs, programs=100, sm_count=132) == pairs, "one program per SM: 100 fill most SMs"
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "block_p=32")
    assert (state_config(64, 256, 256, heads_per_group=2).heads, state_config(64, 256, 256).block_p) == (1, 32)
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "heads=2")
    with pytest.raises(ValueError, match="ARCHSPEC_SSD_STATE: heads=2 with block_p=64 .*head_dim 64"):
        state_config(64, 64, 256, heads_per_group=2)
    with pytest.raises(ValueError, match="ARCHSPEC_SSD_STATE: heads=2 .* 1 heads per group"):
        state_config(64, 128, 256, heads_per_group=1)
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "heads=2,block_p=160")
    with pytest.raises(ValueError, match="head_dim 80"):
        state_config(80, 128, 256, heads_per_group=2)
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "scale_b=0")
    assert state_config(128, 64, 256).scale_b == 0
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "scale_b=1")
    assert state_config(64, 64, 256).scale_b == 1
    with pytest.raises(ValueError, match="ARCHSPEC_SSD_STATE: scale_b=1 needs tiles of one head"):
        state_config(64, 128, 256, heads_per_group=2)


def test_forward_state_pass_weights_b_where_its_tile_has_fewer_d_state_columns_than_head_dim_rows() -> None:
    shapes = [(128, 64), (64, 32), (64, 64), (64, 128), (128, 128), (128, 256)]
    assert [state_config(p, n, 256).scale_b for p, n in shapes] == [1, 1, 0, 0, 0, 0]
    assert state_bwd_config(128, 64, 256).scale_b == 0


def test_forward_state_pass_prefetches_two_steps_ahead_in_tiles_of_4096_elements_or_weighting_b() -> None:
    shapes = [(64, 64), (32, 128), (64, 128), (128, 64), (64, 32)]
    assert [state_config(p, n, 256).num_stages for p, n in shapes] == [3, 3, 2, 3, 3]


def test_state_passes_prefetch_two_steps_ahead_in_one_heads_128_x_128_tiles_not_in_two_heads() -> None:
    for config in (state_config, state_bwd_config):
        assert [config(p, n, 256).num_stages for p, n in [(128, 128), (128, 256)]] == [3, 3]
        assert config(64, 128, 256, heads_per_group=2).num_stages == 2


def test_forward_state_pass_steps_64_tokens_in_tiles_of_8192_elements_else_128() -> None:
    assert [state_config(p, n, 256).block_m for p, n in [(64, 64), (64, 128), (128, 64), (64, 256), (128, 128)]] == [
        128, 64, 64, 64, 128]
    assert state_config(128, 64, 32).block_m == 32


def test_backward_row_tile_kernels_slice_d_state() -> None:
    """dB/dC takes d_state in 4-warp slices: below d_state 128 one slice of 64 for both gradients in one program,
    from 128 on slices of 128 in separate dC and dB programs; the per-row-tile dx kernel in slices of 64 up to
    d_state 128 and of 128 beyond."""
    shapes = {dstate: bwd_dbc_config(128, dstate, 256) for dstate in (16, 64, 96, 128, 256)}
    assert {d: (c.block_n, c.num_warps, c.split) for d, c in shapes.items()} == {
        16: (16, 4, 0), 64: (64, 4, 0), 96: (128, 4, 1), 128: (128, 4, 1), 256: (128, 4, 1)}
    assert bwd_dx_config(128, 128, 256).block_n == 64
    assert bwd_dx_config(64, 256, 256, wgmma=True).block_n == 128
    assert bwd_dx_config(64, 256, 256).block_n == 128


def test_db_dc_prefetches_two_heads_ahead_up_to_head_dim_64_and_one_beyond() -> None:
    """num_stages of dB/dC is the depth of its head loop's copies: 3 while a head's tiles are 64 wide, else 2
    (the shared memory of two 128-wide heads in flight)."""
    assert [bwd_dbc_config(p, 128, 256).num_stages for p in (32, 64, 128, 256)] == [3, 3, 2, 2]


def test_dt_kernels_take_rows_of_up_to_16_heads_as_a_power_of_two() -> None:
    assert [dt_head_block(n) for n in (1, 3, 4, 12, 16, 24, 64)] == [1, 4, 4, 16, 16, 16, 16]


def test_launch_options_name_the_register_cap_only_when_one_is_set() -> None:
    assert KernelConfig(64, 64, 64, 64).launch_options() == {"num_warps": 4, "num_stages": 2}
    assert KernelConfig(64, 64, 64, 64, 8, 3, maxnreg=128).launch_options() == {
        "num_warps": 8, "num_stages": 3, "maxnreg": 128}


def test_environment_overrides_replace_the_named_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHSPEC_SSD_DX", "walk=0, maxnreg=96")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "block_m=64")
    dx = bwd_dx_config(64, 64, 256)
    assert (dx.walk, dx.maxnreg, dx.block_p) == (0, 96, 64)
    assert state_config(64, 64, 256).block_m == 64
    assert state_bwd_config(64, 64, 256).block_m == 128, "ARCHSPEC_SSD_STATE must not reach the backward pass"
    scan = scan_config(64, 64, 256)
    assert (scan.walk, scan.maxnreg) == (1, 0), "ARCHSPEC_SSD_DX must not reach the output kernel"


def test_passes_run_independent_launches_on_two_streams_unless_switched_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert overlap("forward") and overlap("backward")
    monkeypatch.setenv("ARCHSPEC_SSD_OVERLAP", "backward=0")
    assert overlap("forward") and not overlap("backward")


def test_dc_runs_beside_the_state_gradient_pass_from_d_state_256_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dc_beside_state_pass(256) and dc_beside_state_pass(200)
    assert not dc_beside_state_pass(128) and not dc_beside_state_pass(64)
    monkeypatch.setenv("ARCHSPEC_SSD_OVERLAP", "early_dc=0")
    assert not dc_beside_state_pass(256)
    monkeypatch.setenv("ARCHSPEC_SSD_OVERLAP", "early_dc=1")
    assert dc_beside_state_pass(128)


def test_output_walk_runs_as_the_gluon_kernel_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scan_config(64, 64, 256).wgmma == 1 and scan_config(128, 128, 256).wgmma == 1
    assert bwd_dx_config(64, 64, 256).wgmma == 0
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "wgmma=0")
    assert scan_config(64, 64, 256).wgmma == 0


def test_dx_kernel_walks_as_the_gluon_kernel_where_it_can_run_unless_switched_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Gluon walk the dx kernel walks 64-token steps in head_dim blocks of at most 64 up to d_state 128
    (and a 256 x 128 state); without it (or with ARCHSPEC_SSD_DX=wgmma=0) the Triton walk only up to 64 x 64, and
    the row-tile kernel beyond."""
    for headdim, dstate in [(64, 64), (64, 128), (128, 64), (32, 128), (128, 128), (256, 128)]:
        cfg = bwd_dx_config(headdim, dstate, 256, wgmma=True)
        assert (cfg.walk, cfg.wgmma, cfg.block_m, cfg.block_n) == (1, 1, 64, dstate)
        assert cfg.block_p == min(headdim, 64)
    assert bwd_dx_config(128, 128, 256).walk == 0
    assert bwd_dx_config(64, 256, 256, wgmma=True).walk == 0
    assert bwd_dx_config(128, 128, 256, wgmma=True).aligned == 0
    assert bwd_dx_config(64, 256, 256, wgmma=True).aligned == 1
    assert bwd_dx_config(64, 128, 256).walk == 0
    monkeypatch.setenv("ARCHSPEC_SSD_DX", "wgmma=0")
    cfg = bwd_dx_config(64, 128, 256, wgmma=True)
    assert (cfg.walk, cfg.wgmma) == (0, 0)
    assert bwd_dx_config(64, 64, 256, wgmma=True).wgmma == 0


def test_gluon_walk_needs_a_hopper_gpu_and_16_bit_inputs() -> None:
    """Under the interpreter or on the CPU the Triton walk runs (the Gluon kernel cannot)."""
    x = torch.zeros(64, 2, 64, dtype=torch.bfloat16)
    assert not wgmma_supported(x, 64, 64)


def test_output_walk_spans_up_to_1024_tokens_while_its_programs_fill_the_sms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walks of 4 chunks of 256 (16 of 64) unless fewer programs than two per SM would run; one chunk when the
    walk's steps do not divide it; ARCHSPEC_SSD_SCAN=span=N sets it."""
    cfg = scan_config(64, 64, 256)

    def programs(chunks: int) -> Callable[[int], int]:
        return lambda span: 64 * -(-chunks // span)

    assert walk_span(cfg, 256, programs(256), sm_count=132) == 4
    assert walk_span(cfg, 256, programs(32), sm_count=132) == 4, "8 x 64 programs: two per SM"
    assert walk_span(cfg, 256, programs(16), sm_count=132) == 2
    assert walk_span(cfg, 256, programs(8), sm_count=132) == 1
    assert walk_span(cfg, 256, programs(8), sm_count=0) == 4, "unknown GPU (the interpreter)"
    assert walk_span(scan_config(64, 64, 64), 64, programs(256), sm_count=132) == 16
    assert walk_span(scan_config(64, 64, 2048), 2048, programs(256), sm_count=132) == 1
    assert walk_span(scan_config(64, 64, 96), 96, programs(256), sm_count=132) == 1, "64-token steps and 32 left"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "span=3")
    assert walk_span(scan_config(64, 64, 96), 96, programs(8), sm_count=132) == 3


def test_output_walk_runs_whole_sequences_in_place_of_the_state_pass_once_its_programs_fill_the_sms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One walk per sequence, head and head_dim block once those programs are at least the SMs; not on an unknown
    GPU (the interpreter), nor when a span is set or the walk's steps do not divide the chunk; ARCHSPEC_SSD_SCAN
    whole=0 / whole=1 decide, and whole=1 where the steps cannot divide the chunk is an error that names both."""
    cfg = scan_config(128, 128, 256)
    assert whole_walks(cfg, 256, programs=1024, sm_count=132)
    assert whole_walks(cfg, 256, programs=132, sm_count=132)
    assert not whole_walks(cfg, 256, programs=128, sm_count=132), "4 SMs would idle"
    assert not whole_walks(cfg, 256, programs=1024, sm_count=0), "unknown GPU (the interpreter)"
    assert not whole_walks(cfg, 96, programs=1024, sm_count=132), "64-token steps and 32 left"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "span=4")
    assert not whole_walks(scan_config(128, 128, 256), 256, programs=1024, sm_count=132)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "whole=0")
    assert not whole_walks(scan_config(128, 128, 256), 256, programs=1024, sm_count=132)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "whole=1")
    assert whole_walks(scan_config(128, 128, 256), 256, programs=1, sm_count=0)
    with pytest.raises(ValueError, match="whole=1 needs block_m=64 to divide chunk_size=96"):
        whole_walks(scan_config(128, 128, 96), 96, programs=1024, sm_count=132)


def test_state_passes_walk_segments_of_64_chunks_only_when_programs_leave_most_sms_idle() -> None:
    assert auto_segment(programs=64, longest=4096, sm_count=132) == SEGMENT_CHUNKS == 64
    assert auto_segment(programs=66, longest=65, sm_count=132) == 64
    assert auto_segment(programs=67, longest=4096, sm_count=132) == 0, "more than half the SMs busy"
    assert auto_segment(programs=8, longest=64, sm_count=132) == 0, "one segment would be the whole sequence"
    assert auto_segment(programs=8, longest=4096, sm_count=0) == 0, "unknown GPU (the interpreter)"


def test_a_forward_storing_only_the_walks_first_chunk_states_segments_until_the_programs_fill_the_sms() -> None:
    assert auto_segment(programs=128, longest=128, sm_count=132, every=4) == 64
    assert auto_segment(programs=128, longest=128, sm_count=132) == 0
    assert auto_segment(programs=133, longest=128, sm_count=132, every=4) == 0


def test_state_tiles_halve_head_dim_while_the_programs_would_not_fill_the_sms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Down to tiles of 2,048 (forward) or 4,096 elements (backward), in 4 uncapped warps; tiles of more than 8,192
    elements (one program per SM) only while half of the SMs would be idle, prefetching one step ahead once
    halved; not when the hook sets block_p or the GPU is unknown."""
    wide = state_config(128, 64, 256)
    assert (wide.block_p, wide.block_n, wide.num_warps, wide.maxnreg) == (128, 64, 8, 128)
    split = fill_sms("state", wide, programs=128, sm_count=132)
    assert (split.block_p, split.block_n, split.num_warps, split.maxnreg) == (64, 64, 4, 0)
    assert fill_sms("state", wide, programs=8, sm_count=132).block_p == 32, "never below 2,048 elements"
    assert fill_sms("state_bwd", state_bwd_config(128, 64, 256), programs=8, sm_count=132).block_p == 64
    assert fill_sms("state", wide, programs=132, sm_count=132) == wide
    assert fill_sms("state", wide, programs=8, sm_count=0) == wide
    assert fill_sms("state", state_config(64, 64, 256), programs=8, sm_count=132).block_p == 32
    assert fill_sms("state_bwd", state_bwd_config(64, 64, 256), programs=8, sm_count=132).block_p == 64
    for name, large in (("state", state_config(128, 128, 256)), ("state_bwd", state_bwd_config(128, 128, 256))):
        assert (large.block_p, large.num_stages) == (128, 3)
        assert fill_sms(name, large, programs=128, sm_count=132) == large, "one program per SM: 128 fill 132 SMs"
        split = fill_sms(name, large, programs=66, sm_count=132)
        assert (split.block_p, split.num_warps, split.num_stages) == (64, 4, 2), "half of the SMs idle"
    assert fill_sms("state", wide, programs=128, sm_count=132).num_stages == wide.num_stages == 3
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "block_p=128")
    assert fill_sms("state", state_config(128, 64, 256), programs=8, sm_count=132).block_p == 128
    assert fill_sms("state_bwd", state_bwd_config(128, 64, 256), programs=8, sm_count=132).block_p == 64, \
        "ARCHSPEC_SSD_STATE does not reach the backward pass"


def test_dcb_prefetches_two_heads_ahead_and_every_kernel_takes_the_tables_alignment_but_the_gluon_dx_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """dCB's head loop runs 3 stages deep at every head_dim; ChunkTable.aligned reaches every kernel but the Gluon
    dx walk (slower with it), unless ARCHSPEC_SSD_<NAME>=aligned=... says otherwise."""
    assert bwd_dcb_config(64, 256).num_stages == bwd_dcb_config(128, 256).num_stages == 3
    assert KernelConfig(64, 64, 64, 64).alignment(True)
    assert not KernelConfig(64, 64, 64, 64).alignment(False)
    assert not KernelConfig(64, 64, 64, 64, aligned=0).alignment(True)
    assert bwd_dcb_config(64, 256).aligned == bwd_dbc_config(64, 64, 256).aligned == 1
    monkeypatch.setenv("ARCHSPEC_SSD_DX", "aligned=1")
    assert bwd_dx_config(64, 64, 256, wgmma=True).aligned == 1


@pytest.mark.parametrize("batch,seqlen,headdim,from_zero,walk", [
    (8, 8192, 64, True, "two_warpgroups"), (32, 2048, 128, True, "two_warpgroups"),
    (2, 32768, 128, True, "two_warpgroups"), (2, 32768, 64, True, "two_warpgroups"),
    (1, 65536, 64, True, "tiles"), (8, 8192, 64, False, "tiles"), (2, 32768, 64, False, "tiles")])
def test_d_state_256_walks_whole_in_two_warpgroups_only_as_whole_sequence_walks(
        monkeypatch, batch: int, seqlen: int, headdim: int, from_zero: bool, walk: str) -> None:
    """Where the Gluon walk can run, d_state 256 walks over the whole d_state in one walk of two warpgroups if the
    walks cover whole sequences (at least ONE_PER_SM_FILL of the SMs' worth of them, none from initial states);
    otherwise (64 programs on 132 SMs; initial states) the row-tile kernel runs. The walks read the C B^T table."""
    cfg, whole = _gpu_output_config(monkeypatch, batch, seqlen, headdim, 256, from_zero)
    expected = {"two_warpgroups": (1, 256, 8, True),
                "tiles": (0, 64 if headdim == 64 else 128, 4 if headdim == 64 else 8, False)}[walk]
    assert (cfg.walk, cfg.block_n, cfg.num_warps, whole) == expected
    if cfg.walk:
        assert cfg.block_p == 64 and walk_reads_cb(cfg, 256)


def test_a_scan_override_narrower_than_d_state_is_for_the_row_tiles_and_an_error_for_the_walk(monkeypatch) -> None:
    """The output walk holds the whole d_state: ARCHSPEC_SSD_SCAN=block_n=128 at d_state 256 sets the row tiles'
    d_state slice (there is no two-warpgroup walk then), and a block_n below d_state where the walk runs is an
    error that names the override."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "block_n=128,num_warps=4")
    cfg, whole = _gpu_output_config(monkeypatch, 8, 8192, 128, 256, True)
    assert (cfg.walk, cfg.block_n, cfg.num_warps, whole) == (0, 128, 4, False)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "block_n=64")
    with pytest.raises(ValueError, match="ARCHSPEC_SSD_SCAN: block_n=64 is narrower than d_state 128, which the walk"):
        scan_config(64, 128, 256)
    monkeypatch.setenv("ARCHSPEC_SSD_DX", "walk=1,block_n=64")
    with pytest.raises(ValueError, match="ARCHSPEC_SSD_DX: block_n=64 is narrower than d_state 256"):
        bwd_dx_config(64, 256, 256)


def _gpu_output_config(monkeypatch: pytest.MonkeyPatch, batch: int, seqlen: int, headdim: int, dstate: int,
                       from_zero: bool) -> tuple[KernelConfig, bool]:
    """forward._output_config for 64 heads on a 132-SM GPU where the Gluon walk can run."""
    monkeypatch.setattr(forward, "wgmma_supported", lambda *args: True)
    monkeypatch.setattr(forward, "sm_count", lambda device: 132)
    x = torch.zeros(batch * seqlen, 64, headdim, dtype=torch.bfloat16)
    return forward._output_config(x, dstate, build_chunk_table(batch, seqlen, 256, None, x.device), from_zero)


@pytest.mark.parametrize("headdim,dstate,warps", [(64, 64, 4), (64, 128, 4), (128, 64, 8)])
def test_whole_walks_fewer_than_the_sms_run_one_per_sm_in_two_warpgroups_where_each_has_64_columns(
        monkeypatch, headdim: int, dstate: int, warps: int) -> None:
    """64 heads x 2 sequences (128 programs on 132 SMs): whole walks, in 8 warps where the head_dim block is 128
    wide; 64 heads x 1 sequence: the state pass and walks of several chunks; 8 sequences: 4 warps."""
    cfg, whole = _gpu_output_config(monkeypatch, 2, 32768, headdim, dstate, True)
    assert (cfg.walk, cfg.wgmma, cfg.num_warps, cfg.block_n, whole) == (1, 1, warps, dstate, True)
    cfg, whole = _gpu_output_config(monkeypatch, 1, 65536, headdim, dstate, True)
    assert (cfg.walk, cfg.num_warps, whole) == (1, 4, False)
    cfg, whole = _gpu_output_config(monkeypatch, 8, 8192, headdim, dstate, True)
    assert (cfg.walk, cfg.num_warps, whole) == (1, 4, True)
    assert not _gpu_output_config(monkeypatch, 2, 32768, headdim, dstate, False)[1], "initial states"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "whole=0")
    assert not _gpu_output_config(monkeypatch, 2, 32768, headdim, dstate, True)[1]


def test_one_per_sm_walk_config_is_the_gluon_walks_in_two_warpgroups_for_d_state_256_or_128_wide_head_dim_blocks(
        monkeypatch) -> None:
    wide = scan_one_per_sm_config(128, 256, 256)
    assert (wide.walk, wide.wgmma, wide.block_m, wide.block_p, wide.block_n, wide.num_warps) == (1, 1, 64, 64, 256, 8)
    assert scan_one_per_sm_config(64, 200, 256).block_n == 256
    assert scan_one_per_sm_config(128, 64, 256).num_warps == 8 and scan_one_per_sm_config(128, 64, 256).block_p == 128
    assert scan_one_per_sm_config(64, 128, 256).num_warps == 4
    assert scan_one_per_sm_config(32, 256, 256) is None, "head_dim blocks of 32"
    assert scan_one_per_sm_config(64, 256, 32) is None, "32-token steps"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "maxnreg=240")
    cfg = scan_one_per_sm_config(64, 256, 256)
    assert (cfg.maxnreg, cfg.block_n) == (240, 256)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "block_n=128")
    assert scan_one_per_sm_config(64, 256, 256) is None, "narrower than d_state"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "wgmma=0")
    assert scan_one_per_sm_config(128, 64, 256) is None, "the Triton kernels' rule"


def test_whole_walks_one_per_sm_need_only_a_fill_of_the_sms() -> None:
    cfg = scan_one_per_sm_config(64, 256, 256)
    assert whole_walks(cfg, 256, programs=128, sm_count=132, fill=ONE_PER_SM_FILL)
    assert whole_walks(cfg, 256, programs=99, sm_count=132, fill=ONE_PER_SM_FILL)
    assert not whole_walks(cfg, 256, programs=98, sm_count=132, fill=ONE_PER_SM_FILL)
    assert not whole_walks(cfg, 256, programs=128, sm_count=132)


def test_output_walk_reads_the_cb_table_in_state_tiles_over_128_where_its_steps_divide_the_chunk(monkeypatch) -> None:
    """ARCHSPEC_SSD_SCAN table=0 / table=1 decide; table=1 where the steps cannot divide the chunk is an error."""
    assert not walk_reads_cb(scan_config(64, 128, 256), 256), "a tile of 128 forms its own C B^T"
    assert walk_reads_cb(scan_one_per_sm_config(64, 256, 256), 256), "one tile of 256"
    assert not walk_reads_cb(scan_one_per_sm_config(64, 256, 256), 96), "64-token steps and 32 left"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "table=1")
    assert walk_reads_cb(scan_config(64, 128, 256), 256)
    with pytest.raises(ValueError, match="table=1 needs block_m=64 to divide chunk_size=96"):
        walk_reads_cb(scan_config(64, 128, 96), 96)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "table=0")
    assert not walk_reads_cb(scan_one_per_sm_config(64, 256, 256), 256)


def test_gluon_walk_tiles_are_64_or_128_d_state_rows_in_one_warpgroup_and_also_256_in_two() -> None:
    assert wgmma_tiles(64, 64) and wgmma_tiles(64, 128) and wgmma_tiles(64, 256, num_warps=8)
    assert wgmma_tiles(64, 64, num_warps=8) and wgmma_tiles(64, 128, num_warps=8)
    assert not wgmma_tiles(64, 256) and not wgmma_tiles(32, 256, 8) and not wgmma_tiles(64, 64, num_warps=2)
