"""Error of our SSD scan against the float64 reference over many seeds, per output and gradient.

The GPU tests draw fresh random inputs at every run and check each error against one bound (tests/kernels/
test_triton_ssd.py: TOL); this sweeps fixed seeds over the same inputs (those of
test_gpu_bfloat16_all_head_and_state_sizes by default: 2 x 600 tokens, 4 heads, 2 groups, D, z, dt_bias, softplus,
chunk 256) and prints, per head_dim x d_state row, the median and the largest relative error (Frobenius norm of the
difference over that of the reference) of y and of every gradient, with the seed of the largest, so that a bound
can be set from a distribution and a failure rerun with its seed. A table last.

Usage: python benchmarks/ssd_accuracy.py [--rows 32x128,64x64] [--seeds 0:16] [--dtype bfloat16] [--device cuda]
(on the CPU: TRITON_INTERPRET=1 ... --device cpu, small rows only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

# the GPU tests' input builder, error measure and float64 copy, so that the sweep draws and measures exactly what
# they do
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "kernels"))
from conftest import make_ssd_inputs  # noqa: E402
from errors import float64_leaves, rel_err  # noqa: E402

ALL_ROWS = ",".join(f"{h}x{n}" for h in (32, 64, 128, 256) for n in (16, 64, 128, 256))


def errors(headdim: int, dstate: int, seed: int, dtype: torch.dtype, device: str) -> dict[str, float]:
    """Relative errors of y and of every input's gradient for one draw of the GPU test's inputs."""
    from archspec.kernels.reference import ssd_naive
    from archspec.kernels.ssd import ssd_scan_triton

    inputs = make_ssd_inputs(2, 600, 4, headdim, 2, dstate, dtype, device, seed=seed, requires_grad=True,
                             with_D=True, with_z=True, with_dt_bias=True, dt_softplus=True)
    ref = float64_leaves(inputs)
    y, final = ssd_scan_triton(chunk_size=256, return_final_states=True, **inputs)
    y_ref, final_ref = ssd_naive(chunk_size=256, return_final_states=True, **ref)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=gen, device=device).to(y.dtype)
    dfinal = torch.randn(final.shape, generator=gen, device=device)
    torch.autograd.backward([y, final], [dy, dfinal])
    torch.autograd.backward([y_ref, final_ref], [dy.double(), dfinal.double()])
    out = {"y": rel_err(y, y_ref), "final": rel_err(final, final_ref)}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.grad is not None:
            out["d" + name] = rel_err(value.grad, ref[name].grad)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=ALL_ROWS, help="head_dim x d_state, comma-separated")
    parser.add_argument("--seeds", default="0:16", help="first:last (exclusive)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="cuda")
    opts = parser.parse_args()
    first, last = (int(v) for v in opts.seeds.split(":"))
    dtype = getattr(torch, opts.dtype)
    lines = ["| head_dim x d_state | quantity | median | max | seed of max |", "| --- | --- | --- | --- | --- |"]
    for row in opts.rows.split(","):
        headdim, dstate = (int(v) for v in row.split("x"))
        runs = {seed: errors(headdim, dstate, seed, dtype, opts.device) for seed in range(first, last)}
        for name in next(iter(runs.values())):
            values = {seed: errs[name] for seed, errs in runs.items()}
            worst = max(values, key=values.get)
            line = (f"| {row} | {name} | {statistics.median(values.values()):.2e} | {values[worst]:.2e} | "
                    f"{worst} |")
            print(line, flush=True)
            lines.append(line)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
