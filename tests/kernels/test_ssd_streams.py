"""The backward's second stream (kernels/ssd/streams.py): launches there start after the current stream's earlier
work and the current stream waits for them at the join, whichever stream the caller runs on."""

from __future__ import annotations

import pytest
import torch

from archspec.kernels.ssd.streams import Fork
from errors import rel_err, scan_gradients

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

_SLEEP = 20_000_000  # GPU cycles (about 10 ms): long enough that an unordered launch would overtake the work


def test_side_launches_see_the_current_streams_earlier_work_and_the_join_waits_for_them() -> None:
    x = torch.zeros(1 << 20, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(_SLEEP)
    x.fill_(1.0)
    fork = Fork(x.device)
    with fork.side():
        assert torch.cuda.current_stream() != torch.cuda.default_stream()
        torch.cuda._sleep(_SLEEP)
        y = x * 2.0
    fork.join()
    z = y + 1.0
    assert torch.equal(z, torch.full_like(x, 3.0))


def test_follow_orders_later_side_launches_after_the_current_streams_work_since_the_fork() -> None:
    x = torch.zeros(1 << 20, device="cuda")
    torch.cuda.synchronize()
    fork = Fork(x.device)
    torch.cuda._sleep(_SLEEP)
    x.fill_(1.0)
    fork.follow()
    with fork.side():
        y = x * 2.0
    fork.join()
    assert torch.equal(y, torch.full_like(x, 2.0))


def test_a_switched_off_fork_launches_on_the_current_stream() -> None:
    fork = Fork(torch.device("cuda"), enabled=False)
    with fork.side():
        assert torch.cuda.current_stream() == torch.cuda.default_stream()


@pytest.mark.parametrize("dstate", [64, 256])
def test_backward_on_a_callers_stream_matches_the_single_stream_backward(make_ssd_inputs, monkeypatch,
                                                                         dstate: int) -> None:
    """bf16 sizes, packed sequences, D, z and initial states; the caller's stream is busy when the scan starts. A
    launch out of order would give wrong gradients; the atomics' order, which differs from run to run, only rounds a
    few bf16 gradients the other way (seen: ddt 1.1e-4 relative, seed 384229245)."""
    inputs = make_ssd_inputs(1, 3000, 4, 64, 2, dstate, torch.bfloat16, "cuda", seqlens=[2100, 900], with_D=True,
                             with_z=True, with_dt_bias=True, dt_softplus=True, with_initial_states=True)
    dy, dfinal = torch.randn_like(inputs["x"]), torch.randn_like(inputs["initial_states"])
    monkeypatch.setenv("ARCHSPEC_SSD_OVERLAP", "backward=0")
    expected = scan_gradients(inputs, 256, dy, dfinal)
    monkeypatch.delenv("ARCHSPEC_SSD_OVERLAP")
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(_SLEEP)
        got = scan_gradients(inputs, 256, dy, dfinal)
    torch.cuda.current_stream().wait_stream(stream)
    for name, grad in expected.items():
        assert torch.isfinite(got[name]).all(), name
        assert rel_err(got[name], grad) < 1e-3, f"d{name}: {rel_err(got[name], grad):.2e}"
