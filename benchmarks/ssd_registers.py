"""Compiles the chunk-walking SSD kernels for sm_90 without a GPU and reports registers, spills and shared memory.

For each head_dim x d_state row and each (num_warps, block_t) setting, builds forward.py's `_scan_fwd_kernel` or
backward.py's `_dx_kernel` with the installed Triton (bf16 inputs, D per head, no z) and reads the cubin's resource
usage with the cuobjdump that Triton's package carries: REG (registers per thread, 255 at most), STACK (bytes per
thread, where spills go) and the shared memory the launch needs. Pointers, strides and sizes are marked divisible
by 16, as a launch on the benchmark's shapes specialises them: without that mark Triton cannot prove the rows
of a tile aligned and loads them synchronously, a different (and slower) kernel. A guide to what to time on a
GPU, not a timing: the device's Triton may allocate differently.

Usage: python benchmarks/ssd_registers.py [--kernel scan|dx] [--rows 64x64,64x128] [--warps 4,8] [--block-t 32,64]
       [--maxnreg 0,168]
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from archspec.kernels.ssd import backward, forward
from archspec.kernels.ssd.config import pow2

_FLOAT32_POINTERS = {"s_ptr", "dtp_ptr", "d_ptr", "ds_ptr", "dsend_ptr", "ddtp_ptr", "dd_ptr"}
_INT_ARGS = {"ntokens", "nheads", "headdim", "dstate", "heads_per_group", "ngroups"}


def _signature(fn: triton.JITFunction, constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("chunk_start_ptr", "chunk_len_ptr"):
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in _FLOAT32_POINTERS else "*bf16"
        else:
            sig[name] = "i32" if name.startswith("stride") or name in _INT_ARGS else "fp32"
    return sig


def _divisible_by_16(fn: triton.JITFunction, signature: dict[str, str]) -> dict:
    """Triton's launch-time specialisation of arguments that are multiples of 16 (pointers, strides, sizes)."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items()
            if kind.startswith("*") or name.startswith("stride") or name in ("ntokens", "headdim", "dstate")}


def resources(fn: triton.JITFunction, constexprs: dict, num_warps: int, maxnreg: int = 0) -> tuple[int, int, int]:
    """(registers per thread, stack bytes per thread, shared memory bytes) of one sm_90 build."""
    signature = _signature(fn, constexprs)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=_divisible_by_16(fn, signature))
    options = dict(num_warps=num_warps, num_stages=2, **({"maxnreg": maxnreg} if maxnreg else {}))
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return regs, stack, int(kernel.metadata.shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=("scan", "dx"), default="scan")
    parser.add_argument("--rows", default="64x64,64x128,128x64,128x128,64x256")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--block-t", default="32,64")
    parser.add_argument("--maxnreg", default="0", help="register caps to build with (0: none)")
    opts = parser.parse_args()
    fn = forward._scan_fwd_kernel if opts.kernel == "scan" else backward._dx_kernel
    lines = ["| head_dim x d_state | warps | block_t | maxnreg | registers | stack bytes | shared KB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in opts.rows.split(","):
        headdim, dstate = (int(v) for v in row.split("x"))
        block_n = pow2(dstate)
        block_p = min(pow2(headdim), max(16, 8192 // block_n))
        for warps in (int(v) for v in opts.warps.split(",")):
            for block_t in (int(v) for v in opts.block_t.split(",")):
                constexprs = dict(BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, HAS_D=True, D_HAS_HDIM=False,
                                  PREC="tf32")
                if opts.kernel == "scan":
                    constexprs["HAS_Z"] = False
                for maxnreg in (int(v) for v in opts.maxnreg.split(",")):
                    regs, stack, shared = resources(fn, constexprs, warps, maxnreg)
                    lines.append(f"| {row} | {warps} | {block_t} | {maxnreg or '-'} | {regs} | {stack} | "
                                 f"{shared / 1024:.1f} |")
                    print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
