"""The Triton SSD scan (archspec.kernels.ssd.ssd_scan_triton) computes the SSD scan and its gradients.

Every check compares with the quadratic float64 reference `ssd_naive` (gradients through autograd on it) by the
relative Frobenius error, on fresh random inputs, with every torch.empty allocation poisoned with NaN so that an
element a kernel forgot to write fails the check. Without CUDA the kernels run in the Triton interpreter on tiny
sizes; with CUDA the same tests run natively, and the `gpu` tests add real sizes.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from archspec.kernels.reference import ssd_naive  # noqa: E402
from archspec.kernels.ssd import ssd_scan_triton  # noqa: E402
from archspec.kernels.ssd.layout import build_chunk_table  # noqa: E402
from archspec.kernels.ssd import autograd, backward, forward, segments, tiles  # noqa: E402
from archspec.kernels.ssd.config import state_config  # noqa: E402
from archspec.kernels.ssd.segments import build_segment_table  # noqa: E402
from archspec.kernels.ssd.state_products import matmul_matches_kernels  # noqa: E402
from errors import float64_leaves, rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Relative Frobenius error allowed (output, per-token gradients, parameter gradients). float32: exact float32 dots
# ("ieee"), measured ~1e-7. bfloat16/float16: every matmul operand is rounded to 8 (11) mantissa bits, about 2e-3
# per element, and the chunk states and decay-weighted scores are rounded once more; y and the per-token gradients
# measured 3e-3..1e-2, the parameter gradients (dA, dD, dt_bias: sums over all tokens) up to ~1.5e-2.
TOL = {torch.float32: (1e-4, 1e-4, 1e-4), torch.bfloat16: (1.5e-2, 2.5e-2, 6e-2),
       torch.float16: (5e-3, 1e-2, 3e-2)}
REDUCED = {"A", "D", "dt_bias"}



def record_returns(monkeypatch, module, name: str) -> list:
    """Wraps module.name (for the test) so that each call's return value is appended to the returned list."""
    made = []
    real = getattr(module, name)

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, name, recording)
    return made


def check_scan(inputs: dict, chunk_size: int, dtype: torch.dtype, grads: bool, final_grad: bool = True) -> None:
    """Runs ours and the float64 reference on the same inputs; compares y, final states and all gradients (of a
    loss on y and, with final_grad, on the final states). The output gradients are drawn on the CPU from a printed
    seed ($ARCHSPEC_TEST_GRAD_SEED replays it, as $ARCHSPEC_TEST_SEED replays the inputs)."""
    tol_out, tol_grad, tol_reduced = TOL[dtype]
    ref_inputs = float64_leaves(inputs)
    y, final = ssd_scan_triton(chunk_size=chunk_size, return_final_states=True, **inputs)
    y_ref, final_ref = ssd_naive(chunk_size=chunk_size, return_final_states=True, **ref_inputs)
    assert y.dtype == inputs["x"].dtype and final.dtype == torch.float32
    assert y.shape == y_ref.shape and final.shape == final_ref.shape
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    assert rel_err(y, y_ref) < tol_out, f"y: {rel_err(y, y_ref):.2e}"
    assert rel_err(final, final_ref) < tol_out, f"final states: {rel_err(final, final_ref):.2e}"
    if not grads:
        return
    grad_seed = int(os.environ.get("ARCHSPEC_TEST_GRAD_SEED") or torch.randint(0, 2**31 - 1, ()).item())
    print(f"check_scan grad seed={grad_seed}")
    gen = torch.Generator().manual_seed(grad_seed)
    dy = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
    if final_grad:
        dfinal = torch.randn(final.shape, generator=gen).to(y.device)
        torch.autograd.backward([y, final], [dy, dfinal])
        torch.autograd.backward([y_ref, final_ref], [dy.double(), dfinal.double()])
    else:
        torch.autograd.backward(y, dy)
        torch.autograd.backward(y_ref, dy.double())
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(value.grad).all(), f"d{name} not finite"
            err = rel_err(value.grad, ref_inputs[name].grad)
            tol = tol_reduced if name in REDUCED else tol_grad
            assert err < tol, f"d{name}: {err:.2e} >= {tol:.0e}"


OPTIONS = {
    "plain": {},
    "all_options": dict(with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True, dt_limit=(0.002, 0.08),
                        with_initial_states=True),
    "D_per_channel_initial": dict(with_D=True, D_has_hdim=True, with_initial_states=True),
    "softplus_no_bias": dict(dt_softplus=True, with_z=True),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_forward_matches_naive_float32(make_ssd_inputs, name: str) -> None:
    inputs = make_ssd_inputs(2, 40, 4, 32, 2, 16, torch.float32, DEVICE, **OPTIONS[name])
    check_scan(inputs, 16, torch.float32, grads=False)


@pytest.mark.parametrize("ngroups", [1, 4])
def test_forward_handles_group_counts_and_odd_sizes(make_ssd_inputs, ngroups: int) -> None:
    """head_dim and d_state that are not powers of two, ngroups 1 and == nheads, a ragged last chunk."""
    inputs = make_ssd_inputs(1, 37, 4, 40, ngroups, 24, torch.float32, DEVICE, with_D=True)
    check_scan(inputs, 16, torch.float32, grads=False)


@pytest.mark.parametrize("name", ["plain", "all_options"])
def test_gradients_match_naive_float32(make_ssd_inputs, name: str) -> None:
    inputs = make_ssd_inputs(2, 40, 4, 32, 2, 16, torch.float32, DEVICE, requires_grad=True, **OPTIONS[name])
    check_scan(inputs, 16, torch.float32, grads=True)


def test_head_dim_not_a_power_of_two_matches_naive_with_gradients(make_ssd_inputs) -> None:
    """head_dim 80, not a power of two: tiles are padded to 128 and masked; the gradients of dt and D sum over
    the real 80 channels only."""
    inputs = make_ssd_inputs(1, 100, 2, 80, 1, 16, torch.float32, DEVICE, with_D=True, with_initial_states=True,
                             requires_grad=True)
    check_scan(inputs, 64, torch.float32, grads=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heads_of_a_group_share_tiles_across_row_tiles(make_ssd_inputs, dtype: torch.dtype) -> None:
    """Four heads share each group's B and C; chunk 128 spans two 64-token tiles, so the chunk walks carry the
    state (forward) and its gradient (backward) from one tile to the next, with per-head decays."""
    inputs = make_ssd_inputs(2, 200, 8, 32, 2, 16, dtype, DEVICE, requires_grad=True, with_D=True,
                             with_dt_bias=True, dt_softplus=True, with_initial_states=True)
    check_scan(inputs, 128, dtype, grads=True)


def test_packed_sequences_match_naive_with_gradients(make_ssd_inputs) -> None:
    """cu_seqlens: a sequence shorter than a chunk, one ending mid-chunk, per-sequence initial and final states."""
    inputs = make_ssd_inputs(1, 56, 4, 32, 2, 16, torch.float32, DEVICE, seqlens=[5, 19, 32],
                             with_initial_states=True, with_D=True, D_has_hdim=True, requires_grad=True)
    check_scan(inputs, 16, torch.float32, grads=True)


def test_empty_packed_sequences_through_ssd_scan_match_the_torch_backend(make_ssd_inputs) -> None:
    """archspec.kernels.ssd_scan skips empty packed sequences before the Triton kernels: outputs, final states
    (an empty sequence's is its initial state) and every gradient equal the PyTorch backend's."""
    from archspec.kernels import ssd_scan

    inputs = make_ssd_inputs(1, 40, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[0, 17, 0, 23, 0],
                             with_initial_states=True, with_D=True, requires_grad=True)
    results = {}
    for backend in ("triton", "torch"):
        leaves = {k: v.detach().clone().requires_grad_(True) if torch.is_tensor(v) and v.is_floating_point() else v
                  for k, v in inputs.items()}
        y, final = ssd_scan(**leaves, chunk_size=16, return_final_states=True, backend=backend)
        torch.autograd.backward([y, final], [torch.ones_like(y), torch.ones_like(final)])
        grads = {k: v.grad for k, v in leaves.items() if torch.is_tensor(v) and v.grad is not None}
        results[backend] = (y, final, grads)
    (y, final, grads), (y_ref, final_ref, grads_ref) = results["triton"], results["torch"]
    assert rel_err(y, y_ref) < 1e-4 and rel_err(final, final_ref) < 1e-4
    torch.testing.assert_close(final[[0, 2, 4]], inputs["initial_states"][[0, 2, 4]])
    assert grads.keys() == grads_ref.keys() and "initial_states" in grads
    for name in grads:
        assert rel_err(grads[name], grads_ref[name]) < 1e-3, name


@pytest.mark.parametrize("seqlen", [1, 7])
def test_sequences_shorter_than_a_chunk_match_naive_with_gradients(make_ssd_inputs, seqlen: int) -> None:
    inputs = make_ssd_inputs(2, seqlen, 2, 32, 1, 16, torch.float32, DEVICE, requires_grad=True, with_D=True,
                             with_z=True, with_initial_states=True)
    check_scan(inputs, 16, torch.float32, grads=True)


def test_in_proj_slices_and_strided_parameters_match_naive_with_gradients(make_ssd_inputs) -> None:
    """x, z, B, C, dt as views of one in_proj-like output (unit last stride, strided elsewhere); A and dt_bias
    columns of a wider parameter, D (nheads, headdim) column-major, initial_states with dstate not innermost."""
    batch, seqlen, nheads, headdim, ngroups, dstate = 2, 40, 2, 32, 1, 16
    inputs = make_ssd_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, torch.float32, DEVICE,
                             with_D=True, D_has_hdim=True, with_z=True, with_dt_bias=True, dt_softplus=True,
                             with_initial_states=True)
    widths = {"z": nheads * headdim, "x": nheads * headdim, "B": ngroups * dstate, "C": ngroups * dstate,
              "dt": nheads}
    pad = torch.zeros(batch, seqlen, 3, device=DEVICE)
    packed = torch.cat([inputs[k].reshape(batch, seqlen, -1) for k in widths] + [pad], -1)
    for k, view in zip(widths, packed.split(list(widths.values()) + [3], -1)):
        inputs[k] = view.reshape(inputs[k].shape)
        assert inputs[k].stride(-1) == 1 and not inputs[k].is_contiguous()
    inputs["A"] = torch.stack([inputs["A"], torch.zeros(nheads, device=DEVICE)], 1)[:, 0]
    inputs["dt_bias"] = torch.stack([inputs["dt_bias"], torch.zeros(nheads, device=DEVICE)], 1)[:, 0]
    inputs["D"] = inputs["D"].t().contiguous().t()
    inputs["initial_states"] = inputs["initial_states"].transpose(2, 3).contiguous().transpose(2, 3)
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            inputs[k] = v.detach().requires_grad_(True)  # leaves that keep their strides
    assert inputs["A"].stride() == (2,) and inputs["D"].stride() == (1, nheads)
    check_scan(inputs, 16, torch.float32, grads=True)


def test_head_major_views_match_naive_with_gradients(make_ssd_inputs) -> None:
    """x, z, dt, B, C as (batch 1) transposes of head-major storage: the kernels get them without a copy, with
    head and group strides of seqlen * headdim (a 32-bit overflow at 1M tokens before the int64 head index)."""
    inputs = make_ssd_inputs(1, 40, 2, 32, 2, 16, torch.float32, DEVICE, with_z=True, with_D=True)
    for k in ("x", "z", "dt", "B", "C"):
        head_major = inputs[k].transpose(1, 2).contiguous()
        inputs[k] = head_major.transpose(1, 2).detach().requires_grad_(True)
    for k in ("A", "D"):
        inputs[k].requires_grad_(True)
    assert inputs["x"].reshape(40, 2, 32).stride(1) == 40 * 32  # the flattened view keeps the head stride
    assert inputs["B"].reshape(40, 2, 16).stride(1) == 40 * 16
    check_scan(inputs, 16, torch.float32, grads=True)


def test_batch_above_one_with_cu_seqlens_is_rejected(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(1, 20, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[5, 15])
    for k in ("x", "dt", "B", "C"):
        inputs[k] = torch.cat([inputs[k], inputs[k]])
    with pytest.raises(ValueError, match="batch must be 1"):
        ssd_scan_triton(chunk_size=16, **inputs)


def test_more_chunks_than_one_launch_can_hold_is_rejected_clearly() -> None:
    """65536 chunks of 16 tokens exceed CUDA's 65535 grid limit on the chunk axis (broadcast inputs, no memory)."""
    seqlen = 65536 * 16
    zero = torch.zeros((), device=DEVICE)
    x, dt, B = zero.expand(1, seqlen, 1, 16), zero.expand(1, seqlen, 1), zero.expand(1, seqlen, 1, 16)
    with pytest.raises(ValueError, match="65536 chunks"):
        ssd_scan_triton(x, dt, -torch.ones(1, device=DEVICE), B, B, chunk_size=16)


def test_chunk_256_spanning_several_token_tiles_matches_naive_with_gradients(make_ssd_inputs) -> None:
    """chunk 256: the state kernels take two 128-token steps per chunk and the chunk kernels walk four 64-token
    tiles; packed sequences end mid-step, mid-tile and after one token. Four heads: with one, dA is a single sum
    whose terms can cancel to near zero (seen: |dA| 1e-2, relative error 2e-3 at an absolute 2e-5)."""
    inputs = make_ssd_inputs(1, 400, 4, 32, 1, 16, torch.float32, DEVICE, seqlens=[130, 1, 269],
                             with_initial_states=True, requires_grad=True)
    check_scan(inputs, 256, torch.float32, grads=True)


@pytest.mark.parametrize("walk", ["0", "1"])
def test_chunk_walking_and_row_tile_kernels_both_match_naive(make_ssd_inputs, monkeypatch, walk: str) -> None:
    """config.py picks by shape between output and dx kernels that walk a chunk and those per row tile
    (tiles.py); forced either way, the scan and its gradients are the same (two tiles per chunk, packed
    sequences, initial states, D and z)."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", f"walk={walk}")
    monkeypatch.setenv("ARCHSPEC_SSD_DX", f"walk={walk}")
    inputs = make_ssd_inputs(1, 300, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[70, 1, 229], requires_grad=True,
                             with_initial_states=True, with_D=True, with_z=True)
    check_scan(inputs, 128, torch.float32, grads=True)


@pytest.mark.parametrize("table,chunk_size,initial_states", [
    (1, 128, False), (1, 128, True), (0, 128, False), (0, 128, True), (-1, 32, True)],
    ids=["reading_the_cb_table-whole_walks", "reading_the_cb_table-walks_from_the_state_pass",
         "forming_its_own_cb-whole_walks", "forming_its_own_cb-walks_from_the_state_pass",
         "steps_not_dividing_the_chunk-walks_from_the_state_pass"])
@pytest.mark.parametrize("d_per_channel", [False, True], ids=["D_per_head", "D_per_channel"])
def test_output_walk_takes_the_within_chunk_term_from_the_cb_table_or_forms_it(
        make_ssd_inputs, monkeypatch, table: int, chunk_size: int, initial_states: bool, d_per_channel: bool) -> None:
    """table=1: the output walk adds the within-chunk term from the per-chunk C B^T table (as the two-warpgroup Gluon
    walk takes d_state 256); table=0: it forms C B^T from its C and B tiles; with 64-token steps in chunks of 32 it
    forms its own too (the Gluon walk copies the table's tiles a step at a time; whole-sequence walks need the steps
    to divide the chunk). Whole-sequence walks store the chunk states (read by the backward) and the final states,
    walks after the state pass read theirs. Here d_state 40 (a masked state tile), packed sequences, D and z."""
    whole = "" if initial_states else ",whole=1"
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", f"walk=1,table={table},block_m=64{whole}")
    inputs = make_ssd_inputs(1, 300, 2, 32, 1, 40, torch.float32, DEVICE, seqlens=[70, 1, 229], requires_grad=True,
                             with_initial_states=initial_states, with_D=True, D_has_hdim=d_per_channel, with_z=True)
    check_scan(inputs, chunk_size, torch.float32, grads=True)


@pytest.mark.parametrize("seqlens", [None, [70, 1, 229]], ids=["full_chunks", "packed"])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_row_tile_kernels_reading_the_state_products_match_naive(make_ssd_inputs, monkeypatch, seqlens,
                                                                  ngroups: int) -> None:
    """gemm=1: the output and dx kernels per row tile take C h^T and B dh^T from one batched matmul
    (state_products.py) instead of forming them; with every chunk full (the chunks' rows a view) and packed
    sequences with ragged chunks (the rows gathered per chunk, zero past its end), for one group and two. float32
    on the CPU, bfloat16 on a GPU (where float32 forms the term in the kernels)."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "walk=0,gemm=1")
    monkeypatch.setenv("ARCHSPEC_SSD_DX", "walk=0,gemm=1")
    dtype = torch.float32 if DEVICE == "cpu" else torch.bfloat16
    inputs = make_ssd_inputs(1 if seqlens else 2, 300 if seqlens else 128, 4, 32, ngroups, 16, dtype, DEVICE,
                             seqlens=seqlens, requires_grad=True, with_initial_states=True, with_D=True, with_z=True)
    assert matmul_matches_kernels(inputs["x"])
    check_scan(inputs, 64, dtype, grads=True)


def test_state_products_only_where_the_matmul_is_as_exact_as_the_kernels() -> None:
    """16-bit inputs anywhere, float32 on the CPU; not float32 on a GPU, whose matmul may run in TF32."""
    assert matmul_matches_kernels(torch.zeros(1, dtype=torch.bfloat16))
    assert matmul_matches_kernels(torch.zeros(1, dtype=torch.float32))
    if torch.cuda.is_available():
        assert not matmul_matches_kernels(torch.zeros(1, device="cuda"))
        assert matmul_matches_kernels(torch.zeros(1, device="cuda", dtype=torch.float16))


def test_state_passes_split_over_head_dim_and_state_blocks_match_naive(make_ssd_inputs, monkeypatch) -> None:
    """The forward state pass and the backward state-gradient pass may split each head's state into
    block_p x block_n tiles walked by separate programs (config.py: block_n below d_state): the chunk
    states, final states, dL/dh0 and the log-decay terms they add are the same as from one program per head."""
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "block_p=16,block_n=16")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", "block_p=16,block_n=16")
    inputs = make_ssd_inputs(1, 100, 2, 32, 1, 48, torch.float32, DEVICE, seqlens=[37, 63], requires_grad=True,
                             with_initial_states=True, with_D=True)
    check_scan(inputs, 32, torch.float32, grads=True)


@pytest.mark.parametrize("block_n,tma,early_dc", [(16, 0, 0), (16, 1, 1), (64, 0, 1), (64, 1, 0)])
def test_db_and_dc_in_separate_programs_match_naive(make_ssd_inputs, monkeypatch, block_n: int, tma: int,
                                                    early_dc: int) -> None:
    """split=1: the dB/dC kernel runs as two launches, one computing dC (and its log-decay terms) and one dB
    (and its terms), here with d_state in one tile and in three, on packed sequences with two groups, initial
    states and a final-state gradient: every gradient is the reference's, with the head loop's tiles read through
    pointers (tma=0) or TMA descriptors (tma=1, whose rows past a chunk's end are the next chunk's), and with dC
    launched before the state gradients exist (early_dc=1) or after them."""
    monkeypatch.setenv("ARCHSPEC_SSD_DBC", f"split=1,block_n={block_n},tma={tma}")
    monkeypatch.setenv("ARCHSPEC_SSD_OVERLAP", f"early_dc={early_dc}")
    inputs = make_ssd_inputs(1, 100, 4, 32, 2, 48, torch.float32, DEVICE, seqlens=[37, 63], requires_grad=True,
                             with_initial_states=True, with_D=True, with_dt_bias=True, dt_softplus=True)
    check_scan(inputs, 32, torch.float32, grads=True)


@pytest.mark.parametrize("tma", [0, 1])
def test_dx_row_tiles_through_tma_descriptors_or_pointers_match_naive(make_ssd_inputs, monkeypatch, tma: int) -> None:
    """tma=1: the dx kernel per row tile reads B, the state gradients, the C B^T table (transposed) and dy through
    TMA descriptors, whose rows past a chunk's end are the next chunk's (dy's zeroed); tma=0 through masked
    pointers. On packed sequences whose chunks end inside a tile, with D per channel, every gradient is the
    reference's."""
    made = record_returns(monkeypatch, tiles, "_dx_descriptors")
    monkeypatch.setenv("ARCHSPEC_SSD_DX", f"walk=0,gemm=0,block_m=16,block_k=16,block_p=32,block_n=16,tma={tma}")
    inputs = make_ssd_inputs(1, 100, 4, 32, 2, 32, torch.float32, DEVICE, seqlens=[37, 63], requires_grad=True,
                             with_initial_states=True, with_D=True, D_has_hdim=True)
    check_scan(inputs, 32, torch.float32, grads=True)
    assert made and all((descs is not None) == bool(tma) for descs in made)


@pytest.mark.parametrize("tma", [0, 1])
@pytest.mark.parametrize("segment", [0, 2])
def test_state_gradient_pass_through_tma_descriptors_or_pointers_matches_naive(make_ssd_inputs, monkeypatch,
                                                                                tma: int, segment: int) -> None:
    """tma=1: the state-gradient pass reads its dy and C tiles through TMA descriptors, whose rows past a
    sequence's end (the next sequence's) it zeroes; tma=0 through masked pointers. On packed sequences with
    initial states, in whole walks or segments of 2 chunks, every gradient is the reference's."""
    made = record_returns(monkeypatch, backward, "_state_bwd_descriptors")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", f"block_p=32,block_n=32,tma={tma},segment={segment}")
    inputs = make_ssd_inputs(1, 100, 4, 32, 2, 32, torch.float32, DEVICE, seqlens=[37, 63], requires_grad=True,
                             with_initial_states=True, with_D=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert made and all((descs is not None) == bool(tma) for descs in made)


@pytest.mark.parametrize("layout", ["contiguous", "head_major"])
@pytest.mark.parametrize("segment", [0, 2])
def test_state_tiles_of_two_heads_match_naive(make_ssd_inputs, monkeypatch, layout: str, segment: int) -> None:
    """heads=2: each program of the state passes walks the whole head_dim of two heads of a group (their own
    decays per tile row, one B / C tile for both), here 2 x 16 rows by d_state tiles of 16, on packed sequences
    with initial states, D and z; x and z as given or as views of head-major storage (head stride above
    head_dim); whole sequences, or segments of 2 chunks, whose carry and fix kernels work per head."""
    fields = f"heads=2,block_p=32,block_n=16,segment={segment}"
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", fields)
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", fields)
    inputs = make_ssd_inputs(1, 100, 4, 16, 2, 32, torch.float32, DEVICE, seqlens=[37, 63], requires_grad=True,
                             with_initial_states=True, with_D=True, with_z=True)
    if layout == "head_major":
        for k in ("x", "z"):
            inputs[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2).detach().requires_grad_(True)
        assert inputs["x"].reshape(100, 4, 16).stride(1) == 100 * 16
    check_scan(inputs, 16, torch.float32, grads=True)


@pytest.mark.parametrize("initial, final_grad, dtype",
                         [(False, False, torch.float32), (True, True, torch.float32), (True, True, torch.bfloat16)],
                         ids=["zero_start_and_end", "initial_states_final_grad", "bf16"])
def test_state_passes_walking_segments_in_parallel_match_naive(make_ssd_inputs, monkeypatch, initial: bool,
                                                               final_grad: bool, dtype: torch.dtype) -> None:
    """With segment=N the state passes walk every N chunks of a sequence from a zero state (gradient) and carry
    the true one across the cuts afterwards: chunk states, final states, dL/dh0 and the log-decay gradients come
    out as from whole-sequence walks. Packed sequences of 1 to 7 chunks of 16 cut into segments of 3 (whole,
    cut once, cut twice with a short last segment); without an initial state or a final-state gradient the first
    (last) segments are left alone. In bf16 the chunk states are rounded twice (before and after the fix), within
    the bf16 tolerance."""
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", "segment=3")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", "segment=3,block_p=16")
    inputs = make_ssd_inputs(1, 175, 2, 32, 1, 16, dtype, DEVICE, seqlens=[9, 100, 50, 16],
                             requires_grad=True, with_initial_states=initial, with_D=True)
    check_scan(inputs, 16, dtype, grads=True, final_grad=final_grad)


def record_state_walks(monkeypatch, sm_count: int) -> list[segments.StateWalk]:
    """Fakes a GPU of sm_count SMs for the state passes' choices and records each pass's walk (forward, then
    backward) as state_walk returns it."""
    walks = []
    state_walk = segments.state_walk

    def spy(*args):
        walks.append(state_walk(*args))
        return walks[-1]

    monkeypatch.setattr(segments, "sm_count", lambda device: sm_count)
    monkeypatch.setattr(forward, "state_walk", spy)
    monkeypatch.setattr(backward, "state_walk", spy)
    return walks


def test_one_long_sequence_on_a_gpu_with_idle_sms_walks_segments_of_64_chunks(make_ssd_inputs, monkeypatch) -> None:
    """Without an override, config.auto_segment decides: one sequence of 70 chunks, whose state passes would
    run 2 programs on a 132-SM GPU, is cut into segments of 64 chunks (64 + 6) in both passes, and stays exact."""
    walks = record_state_walks(monkeypatch, 132)
    inputs = make_ssd_inputs(1, 16 * 70, 2, 16, 1, 16, torch.float32, DEVICE, requires_grad=True,
                             with_initial_states=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert [(w.seg.seg_chunks, w.seg.nsegs) for w in walks] == [(64, 2), (64, 2)]


def test_a_forward_without_a_backward_cuts_segments_until_its_programs_fill_the_sms(make_ssd_inputs,
                                                                                  monkeypatch) -> None:
    """One sequence of 70 chunks, three heads, on a GPU of 4 SMs: with a backward to come the state passes' 3
    programs fill more than half the SMs and walk whole sequences; under no_grad the forward, which then fixes
    only the output walks' first chunk states (walks of 32 chunks: every 32nd), cuts segments of 64 chunks; both
    exact."""
    walks = record_state_walks(monkeypatch, 4)
    inputs = make_ssd_inputs(1, 16 * 70, 3, 16, 1, 16, torch.float32, DEVICE, with_initial_states=True)
    with torch.no_grad():
        check_scan(inputs, 16, torch.float32, grads=False)
    assert [(w.seg.seg_chunks, w.seg.nsegs, w.every) for w in walks] == [(64, 2, 32)]
    walks.clear()
    inputs = make_ssd_inputs(1, 16 * 70, 3, 16, 1, 16, torch.float32, DEVICE, with_initial_states=True,
                             requires_grad=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert [(w.seg, w.every) for w in walks] == [(None, 1), (None, 1)]


@pytest.mark.parametrize("sm_count, cut", [(3, False), (4, True)])
def test_segment_choice_counts_a_tile_of_two_heads_as_two_programs(monkeypatch, sm_count: int, cut: bool) -> None:
    """One sequence of 65 chunks, two heads at 64 x 128: their one program of a two-head tile is cut into
    segments exactly when two one-head programs would be (config.auto_segment: at most half the SMs busy)."""
    monkeypatch.setattr(segments, "sm_count", lambda device: sm_count)
    table = build_chunk_table(1, 16 * 65, 16, None, torch.device("cpu"))
    out = torch.empty(1, 2, 64, 128)
    pairs = segments.state_walk(table, state_config(64, 128, 16, heads_per_group=2), "state", None, out)
    single = segments.state_walk(table, state_config(64, 128, 16), "state", None, out)
    assert state_config(64, 128, 16, heads_per_group=2).heads == 2
    assert (pairs.seg is not None) == (single.seg is not None) == cut


def test_packed_sequences_of_mixed_lengths_with_segments_and_split_tiles_match_naive(make_ssd_inputs,
                                                                                     monkeypatch) -> None:
    """Both choices at once on a 132-SM GPU: of three packed sequences (69, 2 and 5 chunks of 16), only the long
    one is cut (segments of 64), and the forward pass's 32 x 128 tiles are halved to 16 x 128; with initial
    states, a final-state gradient, D and z, everything stays exact."""
    walks = record_state_walks(monkeypatch, 132)
    inputs = make_ssd_inputs(1, 1100 + 30 + 70, 2, 32, 1, 128, torch.float32, DEVICE, seqlens=[1100, 30, 70],
                             requires_grad=True, with_initial_states=True, with_D=True, with_z=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert [(w.seg.nsegs, w.cfg.block_p) for w in walks] == [(4, 16), (4, 32)]


def test_state_passes_that_would_leave_sms_idle_split_head_dim_and_stay_exact(make_ssd_inputs, monkeypatch) -> None:
    """One sequence of one head, 64 x 128 state, on a GPU of many SMs: the state passes halve their head_dim tile
    down to 2,048 elements (forward: 16 x 128) or 4,096 (backward: 32 x 128), config.fill_sms; the scan stays
    exact."""
    walks = record_state_walks(monkeypatch, 1000)
    inputs = make_ssd_inputs(1, 40, 1, 64, 1, 128, torch.float32, DEVICE, requires_grad=True,
                             with_initial_states=True, with_D=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert [(w.cfg.block_p, w.cfg.block_n) for w in walks] == [(16, 128), (32, 128)]


def test_chunk_table_is_aligned_only_when_every_chunk_starts_and_ends_at_a_multiple_of_16() -> None:
    """The kernels tell the compiler that chunk starts and lengths are multiples of 16 when the table says so (a
    wrong flag would shift them): batches of whole 16-token blocks and packed sequences with such boundaries."""
    cpu = torch.device("cpu")
    assert build_chunk_table(3, 96, 64, None, cpu).aligned
    assert not build_chunk_table(3, 100, 64, None, cpu).aligned
    assert not build_chunk_table(2, 96, 24, None, cpu).aligned
    assert build_chunk_table(1, 192, 64, torch.tensor([0, 32, 192]), cpu).aligned
    assert not build_chunk_table(1, 192, 64, torch.tensor([0, 40, 192]), cpu).aligned


def test_packed_chunk_table_comes_in_one_copy_with_each_array_16_byte_aligned() -> None:
    """cu_seqlens' table is built on the host and copied once (each copy waits for the stream); its arrays are views
    that start at 16-byte boundaries, as the kernels' pointer arguments were compiled for."""
    table = build_chunk_table(1, 175, 16, torch.tensor([0, 9, 109, 159, 175]), torch.device("cpu"))
    arrays = (table.seq_start, table.seq_chunk, table.chunk_start, table.chunk_len)
    assert len({a.untyped_storage().data_ptr() for a in arrays}) == 1
    assert all(a.data_ptr() % 16 == 0 for a in arrays)
    assert table.seq_start.tolist() == [0, 9, 109, 159, 175] and table.seq_chunk.tolist() == [0, 1, 8, 12, 13]
    assert table.chunk_len.tolist() == [9] + [16] * 6 + [4] + [16] * 3 + [2, 16]


def test_walk_table_covers_each_sequence_in_walks_of_whole_chunks() -> None:
    """Walks of up to `span` chunks start at a sequence's chunk and end at the span or at the sequence's end, for
    batch rows and for packed sequences (one shorter than a chunk, one empty)."""
    rows = build_chunk_table(3, 100, 16, None, torch.device("cpu"))
    walks = rows.walks(3)
    assert walks.count == rows.walk_count(3) == 3 * 3
    assert walks.chunk.tolist() == [0, 3, 6, 7, 10, 13, 14, 17, 20]
    assert walks.start.tolist() == [0, 48, 96, 100, 148, 196, 200, 248, 296]
    assert walks.length.tolist() == [48, 48, 4] * 3
    assert rows.walks(3) is walks
    packed = build_chunk_table(1, 175, 16, torch.tensor([0, 9, 109, 109, 175]), torch.device("cpu"))
    assert packed.seq_nchunks == (1, 7, 0, 5)
    walks = packed.walks(4)
    assert walks.chunk.tolist() == [0, 1, 5, 8, 12]
    assert walks.start.tolist() == [0, 9, 73, 109, 173]
    assert walks.length.tolist() == [9, 64, 36, 64, 2]
    one = packed.walks(1)
    assert one.chunk.tolist() == list(range(packed.nchunks))
    assert torch.equal(one.start, packed.chunk_start) and torch.equal(one.length, packed.chunk_len)


@pytest.mark.parametrize("chunk_size,span,dstate", [(32, 1, 16), (32, 2, 16), (32, 5, 16), (128, 3, 16),
                                                    (128, 3, 80)])
def test_walks_over_several_chunks_match_naive(make_ssd_inputs, monkeypatch, chunk_size: int, span: int,
                                               dstate: int) -> None:
    """The output walk carries its state from one chunk into the next, the dx walk its state gradient backwards (s
    restarts at each chunk): walks of 1, 2, 3 and 5 chunks of one, two or four steps (the dx walk takes 32-token
    steps from d_state 80) give the reference's y and gradients, with packed sequences that end mid-chunk, after
    one token and at a walk's end, D, z, initial states and a final-state gradient."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", f"walk=1,span={span}")
    monkeypatch.setenv("ARCHSPEC_SSD_DX", f"walk=1,span={span}")
    inputs = make_ssd_inputs(1, 600, 2, 32, 1, dstate, torch.float32, DEVICE, seqlens=[150, 1, 89, 360],
                             requires_grad=True, with_initial_states=True, with_D=True, with_z=True)
    check_scan(inputs, chunk_size, torch.float32, grads=True)


@pytest.mark.parametrize("seqlens", [None, [150, 1, 89, 360]])
def test_whole_sequence_walks_match_naive(make_ssd_inputs, monkeypatch, seqlens) -> None:
    """With ARCHSPEC_SSD_SCAN=whole=1 the output walk runs each whole sequence (batch rows, or packed sequences
    that end mid-chunk and after one token) from zero, stores every chunk's state for the backward and the final
    state, and no state pass runs: y, final states and all gradients are the reference's."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "walk=1,whole=1")
    monkeypatch.setattr(forward, "_state_pass", None)
    batch, seqlen = (2, 300) if seqlens is None else (1, 600)
    inputs = make_ssd_inputs(batch, seqlen, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=seqlens,
                             requires_grad=True, with_D=True, with_z=True)
    check_scan(inputs, 32, torch.float32, grads=True)


def test_whole_sequence_walks_leave_calls_with_initial_states_to_the_state_pass(make_ssd_inputs, monkeypatch) -> None:
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "walk=1,whole=1")
    passes = []
    state_pass = forward._state_pass
    monkeypatch.setattr(forward, "_state_pass", lambda *args: passes.append(state_pass(*args)))
    inputs = make_ssd_inputs(1, 600, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[150, 1, 89, 360],
                             requires_grad=True, with_initial_states=True)
    check_scan(inputs, 32, torch.float32, grads=True)
    assert len(passes) == 1


def test_whole_sequence_walks_store_the_state_passes_chunk_states_and_none_without_a_backward(
        make_ssd_inputs, monkeypatch) -> None:
    """The chunk states a whole-sequence walk stores (every row, the sequences' first zero) are the state pass's to
    float32 rounding, as are the final states (asked for); under no_grad it stores no chunk states."""
    results = []

    def recording(*args, **kwargs) -> forward.ForwardResult:
        results.append(forward.ssd_forward(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(autograd, "ssd_forward", recording)
    inputs = make_ssd_inputs(1, 600, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[150, 1, 89, 360])
    leaves = {k: v.requires_grad_(True) if k == "x" else v for k, v in inputs.items()}
    for whole in (0, 1):
        monkeypatch.setenv("ARCHSPEC_SSD_SCAN", f"walk=1,whole={whole}")
        ssd_scan_triton(chunk_size=32, return_final_states=True, **leaves)
        with torch.no_grad():
            ssd_scan_triton(chunk_size=32, return_final_states=True, **inputs)
    by_pass, by_pass_no_grad, by_walk, by_walk_no_grad = results
    assert by_walk.states.shape == by_pass.states.shape
    assert rel_err(by_walk.states, by_pass.states) < 1e-5
    assert rel_err(by_walk.final_states, by_pass.final_states) < 1e-5
    assert by_walk_no_grad.states.shape[0] == 0
    assert torch.equal(by_walk_no_grad.final_states, by_walk.final_states)
    assert torch.equal(by_walk_no_grad.y, by_walk.y) and torch.equal(by_pass_no_grad.y, by_pass.y)


def test_whole_sequence_walks_store_the_final_states_only_when_asked_for(make_ssd_inputs, monkeypatch) -> None:
    """Whole-sequence walks store the final states only for return_final_states (None in the forward's result
    otherwise), with the same y either way."""
    results = []

    def recording(*args, **kwargs) -> forward.ForwardResult:
        results.append(forward.ssd_forward(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(autograd, "ssd_forward", recording)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "walk=1,whole=1")
    inputs = make_ssd_inputs(1, 300, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[150, 61, 89])
    y, final = ssd_scan_triton(chunk_size=32, return_final_states=True, **inputs)
    y_alone = ssd_scan_triton(chunk_size=32, **inputs)
    asked, not_asked = results
    assert asked.final_states is final and not_asked.final_states is None
    assert torch.equal(y_alone, y)


@pytest.mark.parametrize("initial", [False, True])
def test_the_state_gradient_pass_stores_initial_state_gradients_only_for_initial_states(
        make_ssd_inputs, monkeypatch, initial: bool) -> None:
    """Without initial states (whose gradient no one asks for) the state-gradient pass over whole sequences gets no
    array to store that gradient into; with them it does, and the gradients match the reference either way."""
    stores = []
    kernel = backward.state_bwd_kernel

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                stores.append(args[6])
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(backward, "state_bwd_kernel", Recording())
    inputs = make_ssd_inputs(1, 200, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[120, 80], requires_grad=True,
                             with_initial_states=initial)
    check_scan(inputs, 32, torch.float32, grads=True)
    assert len(stores) == 1 and (stores[0] is not None) == initial


@pytest.mark.parametrize("walk", ["walk=1,whole=1", "walk=0"])
def test_a_forward_without_a_backward_stores_no_y_before_the_gate(make_ssd_inputs, monkeypatch, walk: str) -> None:
    """With z, y before the gate is kept for the backward only: under no_grad the forward writes none, and its y is
    the same."""
    results = []

    def recording(*args, **kwargs) -> forward.ForwardResult:
        results.append(forward.ssd_forward(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(autograd, "ssd_forward", recording)
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", walk)
    inputs = make_ssd_inputs(1, 100, 2, 32, 1, 16, torch.float32, DEVICE, with_z=True)
    ssd_scan_triton(chunk_size=32, **{k: v.requires_grad_(True) if k == "x" else v for k, v in inputs.items()})
    with torch.no_grad():
        ssd_scan_triton(chunk_size=32, **inputs)
    with_grad, no_grad = results
    assert with_grad.y_pre is not None and no_grad.y_pre is None
    assert torch.equal(no_grad.y, with_grad.y)


@pytest.mark.parametrize("segment,every", [(0, 3), (4, 1), (6, 3)])
def test_forward_without_a_backward_stores_only_the_states_the_output_walks_start_from(
        make_ssd_inputs, monkeypatch, segment: int, every: int) -> None:
    """Under no_grad the state pass writes only the chunk states the output walks (of 3 chunks) read, every third
    chunk of each sequence (the others stay poisoned); in segments of 4 chunks, which do not start at such chunks,
    every chunk's, in segments of 6 every third again. Those rows are the ones a forward with a backward to come
    stores, and y and the final states are the reference's (packed sequences, initial states, D, z)."""
    monkeypatch.setenv("ARCHSPEC_SSD_SCAN", "walk=1,span=3")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", f"segment={segment}")
    results = []

    def recording(*args, **kwargs) -> forward.ForwardResult:
        results.append(forward.ssd_forward(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(autograd, "ssd_forward", recording)
    inputs = make_ssd_inputs(1, 600, 2, 32, 1, 16, torch.float32, DEVICE, seqlens=[150, 1, 89, 360],
                             with_initial_states=True, with_D=True, with_z=True)
    with torch.no_grad():
        check_scan(inputs, 32, torch.float32, grads=False)
    ssd_scan_triton(chunk_size=32, **{k: v.requires_grad_(True) if k == "x" else v for k, v in inputs.items()})
    partial, full = (r.states for r in results)
    table = build_chunk_table(1, 600, 32, inputs["cu_seqlens"], torch.device(DEVICE))
    firsts = [first for first, n in zip(table.seq_chunk.tolist(), table.seq_nchunks) for _ in range(n)]
    stored = [c for c in range(table.nchunks) if (c - firsts[c]) % every == 0]
    assert set(table.walks(3).chunk.tolist()) <= set(stored)
    assert torch.equal(partial[stored], full[stored])
    assert torch.isnan(partial[[c for c in range(table.nchunks) if c not in stored]]).all()
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("segment", [0, 3])
def test_state_passes_weighting_the_b_and_c_tiles_match_naive(make_ssd_inputs, monkeypatch, segment: int) -> None:
    """ARCHSPEC_SSD_STATE / _STATE_BWD=scale_b=1: the per-token weights multiply the B (C) tile instead of x (dy),
    B^T diag(w) x, whole sequences or segments, packed, with initial states: y, the final states and every gradient
    are the reference's."""
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", f"scale_b=1,segment={segment},block_m=32,block_k=32")
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", f"scale_b=1,segment={segment},block_m=32,block_k=32")
    inputs = make_ssd_inputs(1, 400, 2, 64, 1, 32, torch.float32, DEVICE, seqlens=[150, 1, 249],
                             with_initial_states=True, with_D=True, requires_grad=True)
    check_scan(inputs, 64, torch.float32, grads=True)


def test_segment_table_cuts_each_sequence_at_whole_chunks() -> None:
    table = build_chunk_table(1, 175, 16, torch.tensor([0, 9, 109, 159, 175]), torch.device("cpu"))
    assert table.seq_nchunks == (1, 7, 4, 1)
    seg = build_segment_table(table, 3)
    assert seg.nsegs == 1 + 3 + 2 + 1
    assert seg.seg_chunk.tolist() == [0, 1, 4, 7, 8, 11, 12, 13]
    assert seg.seg_start.tolist() == [0, 9, 57, 105, 109, 157, 159, 175]
    assert seg.seq_seg.tolist() == [0, 1, 4, 6, 7]
    assert seg.chunk_seg.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6]
    assert seg.stored.tolist() == list(range(13))
    assert seg.after_first.tolist() == [4, 5, 6, 7, 11]
    assert seg.before_last.tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert build_segment_table(table, 3) is seg


def test_segment_table_of_a_forward_storing_every_third_chunk_state_lists_only_those() -> None:
    table = build_chunk_table(1, 175, 16, torch.tensor([0, 9, 109, 159, 175]), torch.device("cpu"))
    seg = build_segment_table(table, 6, every=3)
    assert seg.seg_chunk.tolist() == [0, 1, 7, 8, 12, 13]
    assert seg.stored.tolist() == [0, 1, 4, 7, 8, 11, 12]
    assert seg.after_first.tolist() == [7]
    with pytest.raises(ValueError, match="segments of 4 chunks do not start at chunks whose states are stored"):
        build_segment_table(table, 4, every=3)


def test_d_state_256_with_its_default_tiles_matches_naive(make_ssd_inputs) -> None:
    """At d_state 256 config.py splits the state passes into d_state tiles (128 forward, 64 backward), runs the
    per-row-tile output and dx kernels (dx in slices of 128) and dB/dC in tiles of 64: together exact."""
    inputs = make_ssd_inputs(1, 40, 2, 16, 1, 256, torch.float32, DEVICE, requires_grad=True,
                             with_initial_states=True, with_D=True)
    check_scan(inputs, 16, torch.float32, grads=True)


def test_d_state_256_at_head_dim_64_walks_two_heads_per_state_tile(make_ssd_inputs, monkeypatch) -> None:
    """The default tiles of head_dim 64, d_state 256 with two heads per group: both state passes take 128 x 128
    tiles of two heads, and stay exact; with one head per group, one head's 64 rows."""
    walks = record_state_walks(monkeypatch, 0)
    inputs = make_ssd_inputs(1, 32, 2, 64, 1, 256, torch.float32, DEVICE, requires_grad=True,
                             with_initial_states=True)
    check_scan(inputs, 16, torch.float32, grads=True)
    assert [(w.cfg.heads, w.cfg.block_p, w.cfg.block_n) for w in walks] == [(2, 128, 128), (2, 128, 128)]
    assert [w.grid[1] for w in walks] == [1, 1]


def test_bfloat16_matches_naive_with_gradients(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(2, 48, 4, 32, 1, 32, torch.bfloat16, DEVICE, requires_grad=True, with_D=True,
                             with_z=True, with_dt_bias=True, dt_softplus=True)
    check_scan(inputs, 16, torch.bfloat16, grads=True)


def test_float16_forward_matches_naive(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(1, 48, 2, 32, 1, 16, torch.float16, DEVICE, with_initial_states=True)
    check_scan(inputs, 32, torch.float16, grads=False)


def test_a_head_whose_state_grows_comes_out_nan_not_silently_wrong(make_ssd_inputs) -> None:
    """The kernels assume dt' A <= 0 (a decay of at most 1 per step): a head with A > 0 gets NaN outputs and final
    state, the other heads stay exact."""
    inputs = make_ssd_inputs(1, 80, 2, 32, 1, 16, torch.float32, DEVICE)
    inputs["A"] = torch.tensor([-0.7, 0.3], device=DEVICE)
    y, final = ssd_scan_triton(chunk_size=32, return_final_states=True, **inputs)
    y_ref, final_ref = ssd_naive(chunk_size=32, return_final_states=True, **float64_leaves(inputs))
    assert torch.isnan(y[:, :, 1]).all() and torch.isnan(final[:, 1]).all()
    assert rel_err(y[:, :, 0], y_ref[:, :, 0]) < TOL[torch.float32][0]
    assert rel_err(final[:, 0], final_ref[:, 0]) < TOL[torch.float32][0]


def test_only_requested_gradients_are_returned(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(1, 32, 2, 32, 1, 16, torch.float32, DEVICE, with_D=True)
    inputs["x"].requires_grad_(True)
    ssd_scan_triton(chunk_size=16, **inputs).sum().backward()
    assert inputs["x"].grad is not None
    assert all(inputs[k].grad is None for k in ("dt", "A", "B", "C", "D"))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_activation_checkpointing_recomputes_the_same_gradients(make_ssd_inputs, reentrant: bool) -> None:
    """torch.utils.checkpoint around the scan (as a trainer's activation checkpointing wraps a block) runs the
    forward kernels again in the backward; the gradients are those of the plain scan."""
    inputs = make_ssd_inputs(2, 80, 2, 32, 1, 16, torch.float32, DEVICE, requires_grad=True, with_D=True,
                             with_z=True, with_dt_bias=True, dt_softplus=True, with_initial_states=True)
    leaves = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    dy = torch.randn(2, 80, 2, 32, device=DEVICE)

    def scan(*values: torch.Tensor) -> torch.Tensor:
        return ssd_scan_triton(chunk_size=32, **{**inputs, **dict(zip(leaves, values))})

    scan(*leaves.values()).backward(dy)
    plain = {name: leaf.grad for name, leaf in leaves.items()}
    for leaf in leaves.values():
        leaf.grad = None
    torch.utils.checkpoint.checkpoint(scan, *leaves.values(), use_reentrant=reentrant).backward(dy)
    for name, leaf in leaves.items():  # equal but for the order of the backward's atomic sums
        assert rel_err(leaf.grad, plain[name]) < 1e-6, name


def test_poisoned_torch_empty_still_makes_leaves_that_require_grad() -> None:
    """conftest's NaN-filled torch.empty serves torch.utils.checkpoint too, whose non-reentrant form (torch 2.11)
    makes `torch.empty((0,), requires_grad=True)`: that must stay a leaf that requires grad."""
    t = torch.empty(3, requires_grad=True)
    assert t.is_leaf and t.requires_grad and torch.isnan(t).all()


def test_rejects_chunks_below_sixteen_and_float64(make_ssd_inputs) -> None:
    inputs = make_ssd_inputs(1, 32, 2, 32, 1, 16, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan_triton(chunk_size=8, **inputs)
    inputs = make_ssd_inputs(1, 32, 2, 32, 1, 16, torch.float64, DEVICE)
    with pytest.raises(ValueError, match="float64"):
        ssd_scan_triton(chunk_size=16, **inputs)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("headdim", [32, 64, 128, 256])
@pytest.mark.parametrize("dstate", [16, 64, 128, 256])
def test_gpu_bfloat16_all_head_and_state_sizes(make_ssd_inputs, headdim: int, dstate: int) -> None:
    inputs = make_ssd_inputs(2, 600, 4, headdim, 2, dstate, torch.bfloat16, "cuda", requires_grad=True,
                             with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True)
    check_scan(inputs, 256, torch.bfloat16, grads=True)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("chunk_size", [64, 128, 256])
def test_gpu_float32_packed_sequences_all_options(make_ssd_inputs, chunk_size: int) -> None:
    inputs = make_ssd_inputs(1, 1000, 8, 64, 2, 128, torch.float32, "cuda", seqlens=[100, 300, 1, 599],
                             requires_grad=True, with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True,
                             dt_limit=(0.001, 0.2), with_initial_states=True)
    check_scan(inputs, chunk_size, torch.float32, grads=True)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dstate", [64, 256])
def test_gpu_bfloat16_state_passes_in_segments(make_ssd_inputs, monkeypatch, dstate: int) -> None:
    """Long packed sequences with the state passes cut into segments of 3 chunks (segments.py), bf16 sizes."""
    _check_gpu_state_passes(make_ssd_inputs, monkeypatch, "segment=3", 64, dstate, [2900, 1, 1099])


def _check_gpu_state_passes(make_ssd_inputs, monkeypatch: pytest.MonkeyPatch, fields: str, headdim: int,
                            dstate: int, seqlens: list[int]) -> None:
    """Both state passes under ARCHSPEC_SSD_STATE / _STATE_BWD = fields, on packed bf16 sequences with every option
    and gradients, against the reference."""
    monkeypatch.setenv("ARCHSPEC_SSD_STATE", fields)
    monkeypatch.setenv("ARCHSPEC_SSD_STATE_BWD", fields)
    inputs = make_ssd_inputs(1, sum(seqlens), 4, headdim, 2, dstate, torch.bfloat16, "cuda", seqlens=seqlens,
                             requires_grad=True, with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True,
                             with_initial_states=True)
    check_scan(inputs, 256, torch.bfloat16, grads=True)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dstate, segment", [(128, 0), (256, 0), (256, 3)])
def test_gpu_bfloat16_state_tiles_of_two_heads(make_ssd_inputs, monkeypatch, dstate: int, segment: int) -> None:
    """The state passes' tiles of two heads natively, bf16 sizes, whole sequences or segments of 3 chunks; block_p
    is set, so that config.fill_sms keeps the pairs on a GPU whose SMs these few programs leave idle."""
    _check_gpu_state_passes(make_ssd_inputs, monkeypatch, f"heads=2,block_p=128,segment={segment}", 64, dstate,
                            [2900, 1, 1099])


@pytest.mark.gpu
@requires_cuda
def test_gpu_bfloat16_state_passes_weighting_the_b_and_c_tiles(make_ssd_inputs, monkeypatch) -> None:
    """scale_b=1 at head_dim 128 x d_state 64 (where it would be used), bf16, packed, with gradients."""
    _check_gpu_state_passes(make_ssd_inputs, monkeypatch, "scale_b=1", 128, 64, [1900, 1, 1099])
