"""Every SSD kernel, the Gluon walks included, builds for a Hopper GPU with bf16 inputs (kernels/ssd/offline_build.py).

The CPU tests run the Triton kernels in the interpreter, which neither checks the types of loop-carried values nor
runs Gluon at all; this builds what a GPU would build, from the launches a scan really makes, without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

KERNELS = ["_decay_fwd_kernel", "_state_fwd_kernel", "_scan_fwd_kernel", "_scan_fwd_wgmma_kernel",
           "_scan_tiles_kernel", "_cb_kernel", "gate_bwd_kernel", "state_bwd_kernel", "_dx_kernel", "_dx_wgmma_kernel",
           "_dx_tiles_kernel", "_dcb_kernel", "_dbc_kernel", "dt_bwd_kernel", "_step_kernel", "_carry_kernel",
           "_fix_kernel"]


def test_every_ssd_kernel_builds_for_sm90_from_a_recorded_scan() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "archspec.kernels.ssd.offline_build"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = done.stdout.split("| kernel | tiles |")[-1].splitlines()[2:]  # the table, less its header lines
    assert {row.split("|")[1].strip() for row in rows} == set(KERNELS)
    assert not any("FAILED" in row for row in rows)


def test_the_build_refuses_to_run_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "archspec.kernels.ssd.offline_build"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "TRITON_INTERPRET" in done.stderr


def test_a_serialized_wgmma_is_read_from_the_ptxas_log() -> None:
    """The build counts a kernel whose wgmma ptxas serialized as failed; the reason comes from ptxas's -v note."""
    from archspec.kernels.ssd.offline_build import serialization_reason

    note = ("ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized due to "
            "non wgmma instructions reading accumulator registers of  a wgmma between start and end of the pipeline "
            "stage in the function '_dx_wgmma_kernel'\nptxas info    : Used 255 registers")
    assert serialization_reason(note).startswith("non wgmma instructions reading accumulator registers")
    assert serialization_reason("ptxas info    : Used 255 registers, used 1 barriers") == ""

