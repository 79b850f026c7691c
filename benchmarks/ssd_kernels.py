"""Our Triton SSD scan against mamba_ssm's `mamba_chunk_scan_combined`, side by side on one GPU.

Rows: 65,536 tokens per call (batch x seqlen for seqlen 2K, 8K, 32K), 64 heads of head_dim 64 and 128, one group,
d_state 64/128/256, bf16, chunk 256, with dt_bias, softplus and D (nheads,) as the Mamba-2 mixer calls it.
For each row: forward and forward+backward medians (triton.testing.do_bench; each cell timed in two rounds that
alternate ours and mamba_ssm's, the smaller median kept, so that a slowdown of the GPU has to last through both
rounds to count: single rounds gave one forward cell in a table 1.7-2.2x slow now and then, which the next run or
`ssd_tune.py` did not repeat, RESULTS.md), the memory floor (bytes that must
move once: forward reads x, dt, B, C and writes y; forward+backward also reads dy and writes dx, ddt, dB, dC,
over the device-to-device copy bandwidth measured here), our speed-up, and the agreement with mamba_ssm
(relative Frobenius difference of y and of every gradient; both are bf16 computations). The table prints last.

mamba_ssm: build a pure-Python wheel from its sdist (MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
pip wheel --no-deps --no-build-isolation .), install it with --no-deps. Its package __init__ imports CUDA
extensions that such a wheel lacks, so `load_mamba_chunk_scan` registers an empty package module for
`mamba_ssm` (keeping its search path) before importing mamba_ssm.ops.triton.ssd_combined, which needs only
Triton, einops and torch.

Usage: python benchmarks/ssd_kernels.py [--quick | --seqlens 2048,32768] [--forward-only] [--sweep]
       [--profile [HxN,...]] [--rep MS] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import time
import types
from typing import Callable

import torch

TOKENS = 65536
NHEADS = 64
CHUNK = 256


def load_mamba_chunk_scan() -> Callable:
    """mamba_ssm's mamba_chunk_scan_combined without running mamba_ssm/__init__.py (CUDA extensions)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError("mamba_ssm is not installed (see this file's docstring)")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written), median of do_bench."""
    from triton.testing import do_bench

    src = torch.randn(256 * 1024 * 1024, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def make_inputs(batch: int, seqlen: int, headdim: int, dstate: int, seed: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dev, bf16 = "cuda", torch.bfloat16

    def randn(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dtype)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, device=dev)

    dt_init = torch.exp(uniform(math.log(1e-3), math.log(1e-1), NHEADS))
    return {
        "x": randn(batch, seqlen, NHEADS, headdim),
        "dt": (0.5 * randn(batch, seqlen, NHEADS, dtype=torch.float32)).to(bf16),
        "A": -torch.exp(uniform(0.0, math.log(16.0), NHEADS)),
        "B": randn(batch, seqlen, 1, dstate),
        "C": randn(batch, seqlen, 1, dstate),
        "D": randn(NHEADS, dtype=torch.float32),
        "dt_bias": dt_init + torch.log(-torch.expm1(-dt_init)),
    }


def floors(inputs: dict, bandwidth: float) -> tuple[float, float]:
    """Memory floors in ms: forward (x, dt, B, C read; y written) and forward+backward (+ dy read, grads written)."""
    streamed = sum(inputs[k].numel() * inputs[k].element_size() for k in ("x", "dt", "B", "C"))
    y = inputs["x"].numel() * inputs["x"].element_size()
    fwd = streamed + y
    fwd_bwd = fwd + y + streamed  # dy read; dx, ddt, dB, dC written
    return fwd / bandwidth * 1e3, fwd_bwd / bandwidth * 1e3


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def scan_calls(fn: Callable, inputs: dict, dy: torch.Tensor) -> tuple[Callable, Callable]:
    """(forward, forward+backward) closures of an SSD scan (ours or mamba_ssm's) on `make_inputs`' tensors, called
    as the Mamba-2 mixer calls it (chunk 256, dt_bias, softplus, D); the second returns the gradients of
    GRAD_NAMES for the output gradient dy."""
    leaves = [inputs[k].requires_grad_(True) for k in GRAD_NAMES]

    def forward() -> torch.Tensor:
        return fn(*leaves[:5], CHUNK, D=inputs["D"], dt_bias=inputs["dt_bias"], dt_softplus=True)

    def forward_backward() -> tuple:
        return torch.autograd.grad(forward(), leaves, dy)

    return forward, forward_backward


def median_ms(call: Callable, rep: int, grad: bool) -> float:
    """triton.testing.do_bench median of `call` in ms (under torch.no_grad() unless grad)."""
    from triton.testing import do_bench

    if grad:
        return do_bench(call, warmup=10, rep=rep, return_mode="median")
    with torch.no_grad():
        return do_bench(call, warmup=10, rep=rep, return_mode="median")


def kernel_ms(call: Callable, calls: int = 3) -> dict[str, float]:
    """Device time per call (ms) of each kernel that `call` launches, by kernel name, largest first (torch profiler
    over `calls` calls after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    times = {e.key: e.self_device_time_total / 1e3 / calls for e in prof.key_averages() if e.self_device_time_total}
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def alternated_ms(calls: dict[str, Callable], rep: int, grad: bool, rounds: int = 2) -> dict[str, float]:
    """Each call's `median_ms` in `rounds` rounds that alternate the calls, the smallest of its medians kept."""
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            medians[name].append(median_ms(call, rep, grad))
    return {name: min(times) for name, times in medians.items()}


def run_row(ours: Callable, theirs: Callable, batch: int, seqlen: int, headdim: int, dstate: int,
            bandwidth: float, rep: int, forward_only: bool = False) -> dict:
    inputs = make_inputs(batch, seqlen, headdim, dstate, seed=seqlen + headdim + dstate)
    dy = torch.randn_like(inputs["x"])
    fwd_ours, fb_ours = scan_calls(ours, inputs, dy)
    fwd_theirs, fb_theirs = scan_calls(theirs, inputs, dy)

    with torch.no_grad():
        y_ours, y_theirs = fwd_ours(), fwd_theirs()
    agree = {"y": rel_diff(y_ours, y_theirs)}
    del y_ours, y_theirs
    if not forward_only:
        g_ours, g_theirs = fb_ours(), fb_theirs()
        for name, a, b in zip(GRAD_NAMES, g_ours, g_theirs):
            agree["d" + name] = rel_diff(a, b)
        del g_ours, g_theirs

    row = dict(batch=batch, seqlen=seqlen, headdim=headdim, dstate=dstate)
    row.update(alternated_ms({"fwd_ours": fwd_ours, "fwd_mamba": fwd_theirs}, rep, False))
    nan = float("nan")
    row.update(dict(fb_ours=nan, fb_mamba=nan) if forward_only else
               alternated_ms({"fb_ours": fb_ours, "fb_mamba": fb_theirs}, rep, True))
    row["floor_fwd"], row["floor_fb"] = floors(inputs, bandwidth)
    row["agree"] = agree
    return row


def profile_row(ours: Callable, theirs: Callable, headdim: int, dstate: int, seqlen: int) -> None:
    """Prints each kernel's device time per forward+backward call (of three profiled) for both implementations."""
    inputs = make_inputs(TOKENS // seqlen, seqlen, headdim, dstate, seed=0)
    dy = torch.randn_like(inputs["x"])
    for name, fn in (("ours", ours), ("mamba_ssm", theirs)):
        times = kernel_ms(scan_calls(fn, inputs, dy)[1])
        print(f"profile {name} (ms per fwd+bwd, head_dim {headdim}, d_state {dstate}, seqlen {seqlen}), "
              f"total {sum(times.values()):.3f}")
        for kernel, ms in list(times.items())[:14]:
            print(f"  {ms:8.3f}  {kernel[:80]}")


SWEEP = [
    ("ARCHSPEC_SSD_STATE", "block_m=128"),
    ("ARCHSPEC_SSD_STATE", "block_p=32,num_warps=4"),
    ("ARCHSPEC_SSD_SCAN", "num_warps=8"),
    ("ARCHSPEC_SSD_DX", "walk=1,block_m=32"),
    ("ARCHSPEC_SSD_DCB", "num_warps=8"),
]


def sweep(ours: Callable, headdim: int, dstate: int, seqlen: int, rep: int) -> dict:
    """Greedy tile-size search on one row: keeps each override (config.py's tuning hook) that cuts fwd+bwd time
    by more than 3%. Leaves the kept overrides in os.environ and returns them."""
    inputs = make_inputs(TOKENS // seqlen, seqlen, headdim, dstate, seed=1)
    forward, forward_backward = scan_calls(ours, inputs, torch.randn_like(inputs["x"]))

    def timed() -> tuple[float, float]:
        return median_ms(forward, rep, False), median_ms(forward_backward, rep, True)

    best_fwd, best = timed()
    print(f"sweep baseline: fwd {best_fwd:.3f} ms, fwd+bwd {best:.3f} ms", flush=True)
    kept: dict = {}
    for name, value in SWEEP:
        previous = os.environ.get(name)
        os.environ[name] = value if previous is None else f"{previous},{value}"
        fwd, total = timed()
        keep = total < 0.97 * best
        print(f"sweep {name}={os.environ[name]}: fwd {fwd:.3f} ms, fwd+bwd {total:.3f} ms -> "
              f"{'keep' if keep else 'drop'}", flush=True)
        if keep:
            best, kept[name] = total, os.environ[name]
        elif previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous
    print(f"sweep kept {kept}", flush=True)
    return kept


def format_table(rows: list[dict]) -> str:
    head = ("| head_dim | d_state | batch x seqlen | fwd ours | fwd mamba | fwd speed-up | fwd floor | "
            "fwd+bwd ours | fwd+bwd mamba | fwd+bwd speed-up | fwd+bwd floor | max rel diff vs mamba |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        worst = max(r["agree"].items(), key=lambda kv: kv[1])
        lines.append(
            f"| {r['headdim']} | {r['dstate']} | {r['batch']} x {r['seqlen']} | {r['fwd_ours']:.3f} | "
            f"{r['fwd_mamba']:.3f} | {r['fwd_mamba'] / r['fwd_ours']:.2f}x | {r['floor_fwd']:.3f} | "
            f"{r['fb_ours']:.3f} | {r['fb_mamba']:.3f} | {r['fb_mamba'] / r['fb_ours']:.2f}x | "
            f"{r['floor_fb']:.3f} | {worst[0]} {worst[1]:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seqlen 8K only")
    parser.add_argument("--seqlens", default="2048,8192,32768", help="sequence lengths of the rows (without --quick)")
    parser.add_argument("--headdims", default="64,128")
    parser.add_argument("--dstates", default="64,128,256")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time in ms")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for ssd_bench.json")
    parser.add_argument("--profile", nargs="?", const="64x128", default=None, metavar="ROWS",
                        help="also print per-kernel times of these head_dim x d_state rows at 8K (default 64x128)")
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only")
    parser.add_argument("--sweep", action="store_true", help="first tune tile sizes greedily on one row")
    opts = parser.parse_args()

    from archspec.kernels.ssd import ssd_scan_triton
    import triton

    theirs = load_mamba_chunk_scan()
    bandwidth = copy_bandwidth()
    env = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "mamba_ssm": importlib.metadata.version("mamba_ssm"),
           "bandwidth": bandwidth}
    print(f"device {env['device']}, torch {env['torch']}, triton {env['triton']}, mamba_ssm {env['mamba_ssm']}, "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    if opts.sweep:
        sweep(ssd_scan_triton, 64, 128, 8192, opts.rep)
    if opts.profile:
        for profiled in opts.profile.split(","):
            headdim, dstate = (int(v) for v in profiled.split("x"))
            try:
                profile_row(ssd_scan_triton, theirs, headdim, dstate, 8192)
            except Exception as exc:  # the table matters more than the profile
                print(f"profile failed: {exc!r}")
    seqlens = [8192] if opts.quick else [int(v) for v in opts.seqlens.split(",")]
    rows = []
    for headdim in (int(v) for v in opts.headdims.split(",")):
        for dstate in (int(v) for v in opts.dstates.split(",")):
            for seqlen in seqlens:
                start = time.time()
                row = run_row(ssd_scan_triton, theirs, TOKENS // seqlen, seqlen, headdim, dstate, bandwidth, opts.rep,
                              opts.forward_only)
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                  if k != "agree"}), {k: f"{v:.1e}" for k, v in row["agree"].items()},
                      f"{time.time() - start:.0f}s", flush=True)
                torch.cuda.empty_cache()
                if opts.out:
                    with open(os.path.join(opts.out, "ssd_bench.json"), "w") as f:
                        json.dump({**env, "rows": rows}, f, indent=1)
    print(format_table(rows))


if __name__ == "__main__":
    main()
