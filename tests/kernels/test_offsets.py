"""Packed-sequence offsets are read back to the host once per tensor and kept while it lives unchanged."""

from __future__ import annotations

import gc

import torch

from archspec.kernels import offsets, ssd_scan
from archspec.kernels.offsets import host_offsets, kept_for
from archspec.kernels.ssd.layout import build_chunk_table

CPU = torch.device("cpu")


def test_offsets_are_read_once_per_tensor_and_again_after_an_in_place_change() -> None:
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    first = host_offsets(cu)
    assert first == (0, 5, 12) and host_offsets(cu) is first
    cu[1] = 7
    assert host_offsets(cu) == (0, 7, 12)
    cu.add_(0)
    assert host_offsets(cu) == (0, 7, 12)
    assert host_offsets(torch.tensor([0, 3, 12])) == (0, 3, 12), "another tensor, its own values"


def test_values_derived_from_a_tensor_are_rebuilt_once_it_changes() -> None:
    cu = torch.tensor([0, 4, 9])
    builds = []

    def total() -> int:
        builds.append(1)
        return sum(host_offsets(cu))

    assert kept_for(cu, "total", total) == kept_for(cu, "total", total) == 13 and len(builds) == 1
    cu[2] = 10
    assert kept_for(cu, "total", total) == 14 and len(builds) == 2


def test_inference_tensors_have_no_version_counter_and_are_read_every_time() -> None:
    with torch.inference_mode():
        cu = torch.tensor([0, 2, 6])
        assert host_offsets(cu) == (0, 2, 6)
        cu[1] = 3
        assert host_offsets(cu) == (0, 3, 6)


def test_what_is_kept_goes_with_the_tensor() -> None:
    gc.collect()
    before = len(offsets._KEPT)
    for n in range(50):
        host_offsets(torch.tensor([0, n + 1]))
    gc.collect()
    assert len(offsets._KEPT) == before


def test_a_packed_chunk_table_is_built_once_per_cu_seqlens_and_again_after_it_changes() -> None:
    cu = torch.tensor([0, 40, 64], dtype=torch.int32)
    table = build_chunk_table(1, 64, 16, cu, CPU)
    assert build_chunk_table(1, 64, 16, cu, CPU) is table
    assert table.seq_nchunks == (3, 2) and table.chunk_len.tolist() == [16, 16, 8, 16, 8]
    assert build_chunk_table(1, 64, 32, cu, CPU).seq_nchunks == (2, 1), "per chunk size"
    cu[1] = 48
    changed = build_chunk_table(1, 64, 16, cu, CPU)
    assert changed.seq_nchunks == (3, 1) and changed.chunk_len.tolist() == [16, 16, 16, 16]


def test_nothing_is_kept_while_a_cuda_graph_is_captured(monkeypatch) -> None:
    """Tensors made during a capture live in the graph's memory."""
    monkeypatch.setattr(offsets, "capturing", lambda device: True)
    cu = torch.tensor([0, 4, 9])
    builds = []
    for _ in range(2):
        kept_for(cu, "total", lambda: builds.append(1))
    assert len(builds) == 2
    assert build_chunk_table(1, 9, 16, cu, CPU) is not build_chunk_table(1, 9, 16, cu, CPU), "packed tables"


def test_a_scan_over_empty_sequences_reads_cu_seqlens_once(make_ssd_inputs, monkeypatch) -> None:
    """The offsets without the empty sequences are made once per cu_seqlens, with their values already kept, so
    repeated scans (the layers of a model) read nothing back after the first."""
    reads = []
    real = offsets.read_back
    monkeypatch.setattr(offsets, "read_back", lambda cu: reads.append(1) or real(cu))
    cu = torch.tensor([0, 4, 4, 10], dtype=torch.int32)
    inputs = make_ssd_inputs(1, 10, 2, 3, 1, 4, torch.float32)
    first = ssd_scan(**inputs, chunk_size=4, cu_seqlens=cu, backend="torch")
    torch.testing.assert_close(ssd_scan(**inputs, chunk_size=4, cu_seqlens=cu, backend="torch"), first)
    assert len(reads) == 1
