"""Compiles SSD kernels for sm_90 without a GPU and reports registers, spills and shared memory.

For each head_dim x d_state row and each (num_warps, block_t, maxnreg) setting, builds forward.py's
`_scan_fwd_kernel` or backward.py's `_dx_kernel` (or, with --kernel scan-gluon / dx-gluon, their Gluon versions,
4 warps) from the launch a bf16 scan at that size makes with the walk forced (kernels/ssd/offline_build.py records
it on the CPU: every option on, D per head), and reads the build's resource usage: REG (registers per thread, 255 at
most), STACK (bytes per thread, where spills go) and the shared memory the launch needs. The other kernels (state,
state-bwd, cb, scan-tiles, dx-tiles, dcb, dbc) are built from the launch config.py picks at that size, with its
tiles and num_stages, only warps and maxnreg varied (block_t does not apply). The launch-time marks (pointers,
strides, sizes divisible by 16) are applied as on a GPU: without them Triton cannot prove the rows of a tile aligned
and loads them synchronously, a different (and slower) kernel. The recorded scan has its sequence boundaries at
multiples of 16 (ChunkTable.aligned, as in the benchmarks) unless --unaligned. A guide to what to time on a GPU,
not a timing: the device's Triton may allocate differently (it runs triton 3.6; build with it to see its numbers).
`python -m archspec.kernels.ssd.offline_build` builds every kernel once.

Usage: python benchmarks/ssd_registers.py [--kernel scan|dx|scan-gluon|dx-gluon|state|state-bwd|cb|scan-tiles|
       dx-tiles|dcb|dbc] [--rows 64x64,64x128] [--warps 4,8] [--block-t 32,64] [--maxnreg 0,168] [--unaligned]
"""

from __future__ import annotations

import argparse
from typing import Any

from archspec.kernels.ssd import backward, backward_states, forward, tiles
from archspec.kernels.ssd.offline_build import build, forced_config, gluon_twin, record_scan, resources

_WALKS = {"scan": forward._scan_fwd_kernel, "dx": backward._dx_kernel}
_AS_CONFIGURED = {"state": forward._state_fwd_kernel, "state-bwd": backward_states.state_bwd_kernel,
                  "cb": tiles._cb_kernel, "scan-tiles": tiles._scan_tiles_kernel, "dx-tiles": tiles._dx_tiles_kernel,
                  "dcb": backward._dcb_kernel, "dbc": backward._dbc_kernel}


def walk_launch(kernel: str, headdim: int, dstate: int, aligned: bool = True) -> tuple[Any, dict[str, Any], int]:
    """The recorded launch of the walk named by kernel ("scan" or "dx", "-gluon" for the Gluon version) as
    (kernel function, arguments by name, num_stages); aligned: sequence boundaries at multiples of 16."""
    name = kernel.removesuffix("-gluon")
    with forced_config(**{name: "walk=1,block_m=64"}):
        launch = next(item for item in record_scan(headdim, dstate, aligned=aligned) if item.fn is _WALKS[name])
    if kernel.endswith("-gluon"):
        twin = gluon_twin(launch)
        if twin is None:
            raise SystemExit(f"no Gluon walk at {headdim} x {dstate}")
        return (*twin, 2)
    return launch.fn, launch.args, launch.options["num_stages"]


def configured_launch(kernel: str, headdim: int, dstate: int,
                      aligned: bool = True) -> tuple[Any, dict[str, Any], int]:
    """The recorded launch of kernel (an `_AS_CONFIGURED` name) at config.py's choice for head_dim x d_state, as
    (kernel function, arguments by name, num_stages); aligned: sequence boundaries at multiples of 16."""
    fn = _AS_CONFIGURED[kernel]
    launch = next((item for item in record_scan(headdim, dstate, aligned=aligned) if item.fn is fn), None)
    if launch is None:
        raise SystemExit(f"{kernel} does not run at {headdim} x {dstate} (config.py picks another kernel)")
    return fn, launch.args, launch.options["num_stages"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="scan",
                        choices=("scan", "dx", "scan-gluon", "dx-gluon", *_AS_CONFIGURED))
    parser.add_argument("--rows", default="64x64,64x128,128x64,128x128,64x256")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--block-t", default="32,64")
    parser.add_argument("--maxnreg", default="0", help="register caps to build with (0: none)")
    parser.add_argument("--unaligned", action="store_true",
                        help="sequence boundaries off multiples of 16 (default: aligned, as the benchmarks run)")
    opts = parser.parse_args()
    gluon = opts.kernel.endswith("-gluon")
    walk = opts.kernel not in _AS_CONFIGURED
    lines = ["| head_dim x d_state | warps | block_t | maxnreg | registers | stack bytes | shared KB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in opts.rows.split(","):
        headdim, dstate = (int(v) for v in row.split("x"))
        if walk:
            fn, args, stages = walk_launch(opts.kernel, headdim, dstate, not opts.unaligned)
        else:
            fn, args, stages = configured_launch(opts.kernel, headdim, dstate, not opts.unaligned)
        for warps in (4,) if gluon else (int(v) for v in opts.warps.split(",")):
            for block_t in (64,) if gluon else (int(v) for v in opts.block_t.split(",")) if walk else (None,):
                for maxnreg in (int(v) for v in opts.maxnreg.split(",")):
                    options = dict(num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))
                    tile = {} if block_t is None else {"BLOCK_T": block_t}
                    regs, stack, shared = resources(build(fn, {**args, **tile}, options))
                    lines.append(f"| {row} | {warps} | {block_t or '-'} | {maxnreg or '-'} | {regs} | {stack} | "
                                 f"{shared / 1024:.1f} |")
                    print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
