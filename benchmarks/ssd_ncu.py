"""One forward+backward (or, with --forward, one forward under no_grad) of our SSD scan and of mamba_ssm's, bracketed
for Nsight Compute.

Compiles and warms both first, then runs one call of each between cudaProfilerStart/Stop, so that
`ncu --profile-from-start off` profiles only those kernels (each once).

Usage: ncu --profile-from-start off --clock-control none --section ... \
           python benchmarks/ssd_ncu.py [--headdim 64] [--dstate 128] [--seqlen 8192] [--only ours|mamba_ssm]
           [--forward]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_kernels import TOKENS, load_mamba_chunk_scan, make_inputs, scan_calls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--dstate", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--only", choices=("ours", "mamba_ssm"))
    parser.add_argument("--forward", action="store_true", help="profile a forward under no_grad, with no backward")
    args = parser.parse_args()
    from archspec.kernels.ssd import ssd_scan_triton

    impls = {"ours": ssd_scan_triton, "mamba_ssm": load_mamba_chunk_scan()}
    if args.only:
        impls = {args.only: impls[args.only]}
    inputs = make_inputs(TOKENS // args.seqlen, args.seqlen, args.headdim, args.dstate, seed=0)
    dy = torch.randn_like(inputs["x"])
    steps = [scan_calls(fn, inputs, dy)[0 if args.forward else 1] for fn in impls.values()]
    with torch.set_grad_enabled(not args.forward):
        for step in steps:
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for step in steps:
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
