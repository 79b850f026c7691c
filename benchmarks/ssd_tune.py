"""Times our SSD scan under kernel-config overrides, row by row (a tuning aid for kernels/ssd/config.py).

Each override is `NAME=field=v,field=v` for the ARCHSPEC_SSD_<NAME> hook of kernels/ssd/config.py (names: state,
state_bwd, cb, scan, dx, dcb, dbc), several joined by ';'; "-" is the defaults. Rows are head_dim x d_state at
65,536 tokens (batch 65,536 / seqlen) unless --tokens says otherwise. Prints forward and forward+backward medians
(ms) per row and override, a table last.

Usage: python benchmarks/ssd_tune.py --rows 64x256,128x128 --configs "-" "scan=num_warps=8;dx=block_m=32" [--fwd]
       [--seqlen 32768] [--tokens 1048576] [--kernels]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssd_kernels import TOKENS, kernel_ms, make_inputs, median_ms, scan_calls  # noqa: E402


def apply(config: str) -> None:
    for key in [k for k in os.environ if k.startswith("ARCHSPEC_SSD_")]:
        del os.environ[key]
    if config != "-":
        for part in config.split(";"):
            name, value = part.split("=", 1)
            os.environ[f"ARCHSPEC_SSD_{name.strip().upper()}"] = value.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64x128")
    parser.add_argument("--configs", nargs="+", default=["-"])
    parser.add_argument("--fwd", action="store_true", help="time the forward pass only")
    parser.add_argument("--rep", type=int, default=15)
    parser.add_argument("--seqlen", type=int, default=8192, help="tokens per sequence (a divisor of --tokens)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="batch x seqlen")
    parser.add_argument("--kernels", action="store_true",
                        help="also print each kernel's time per call (forward+backward, or forward with --fwd)")
    opts = parser.parse_args()
    from archspec.kernels.ssd import ssd_scan_triton

    if opts.tokens % opts.seqlen:
        parser.error(f"--seqlen {opts.seqlen} must divide --tokens {opts.tokens}")
    batch = opts.tokens // opts.seqlen
    shape = f"{batch} x {opts.seqlen}"
    lines = ["| head_dim x d_state | batch x seqlen | config | fwd ms | fwd+bwd ms |",
             "| --- | --- | --- | --- | --- |"]
    for row in opts.rows.split(","):
        headdim, dstate = (int(v) for v in row.split("x"))
        inputs = make_inputs(batch, opts.seqlen, headdim, dstate, seed=0)
        forward, forward_backward = scan_calls(ssd_scan_triton, inputs, torch.randn_like(inputs["x"]))
        for config in opts.configs:
            apply(config)
            try:
                t_fwd = median_ms(forward, opts.rep, False)
                t_fb = float("nan") if opts.fwd else median_ms(forward_backward, opts.rep, True)
            except triton.runtime.errors.OutOfResources as exc:  # a setting too large for this GPU: next one
                lines.append(f"| {row} | {shape} | {config} | {exc} | |")
                print(lines[-1], flush=True)
                continue
            lines.append(f"| {row} | {shape} | {config} | {t_fwd:.3f} | {t_fb:.3f} |")
            print(lines[-1], flush=True)
            if opts.kernels:
                with torch.set_grad_enabled(not opts.fwd):
                    times = kernel_ms(forward if opts.fwd else forward_backward)
                print("  kernels (ms per call): " + ", ".join(f"{name} {ms:.3f}" for name, ms in times.items()
                                                        if ms >= 0.01), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
