"""Builds every SSD kernel for a Hopper GPU on a machine without one, from the launches a scan really makes.

A scan's forward and backward and a decode step run on the CPU with their kernel launches recorded instead of
executed (`recorded_launches`); each distinct launch is then compiled for sm_90 with its arguments' real dtypes and
Triton's launch-time marks (pointers and integers divisible by 16), and so are the Gluon walks, from the launches of
their Triton twins. This checks what the CPU interpreter cannot: the types of loop-carried values, layouts, and
the Gluon kernels at all; and it reports each build's registers and spills (ptxas, through the cuobjdump that
Triton's package carries), and whether ptxas serialized its wgmma (a build that did counts as failed). A build,
not a run: it says nothing of the results.

Usage: python -m archspec.kernels.ssd.offline_build   (without TRITON_INTERPRET, which replaces the kernels)
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
from triton.tools.tensor_descriptor import TensorDescriptor
from triton.runtime.jit import JITFunction, mangle_type

from . import backward, forward, tiles
from .autograd import ssd_scan_triton
from .backward_wgmma import _dx_wgmma_kernel, dx_tma_arguments
from .forward_wgmma import MIN_BLOCK_P, _scan_fwd_wgmma_kernel, tma_arguments
from .config import bwd_dx_config
from .step import ssd_step_triton
from .wgmma import wgmma_tiles

__all__ = ["Launch", "build", "forced_config", "gluon_twin", "record_scan", "recorded_launches", "resources",
           "scan_launches"]

HOPPER = GPUTarget("cuda", 90, 32)
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64"}
_OPTIONS = ("num_warps", "num_stages", "maxnreg")
# Gluon walks and the Triton kernels whose arguments (less PREC) they take, where wgmma_tiles allows
_DESCRIPTORS = (GluonDescriptor, TensorDescriptor)  # TMA descriptors of Gluon and of Triton kernels
_GLUON_TWINS = {forward._scan_fwd_kernel: _scan_fwd_wgmma_kernel, backward._dx_kernel: _dx_wgmma_kernel}


@dataclass
class Launch:
    """One kernel launch: the kernel, every parameter's value by name, and the launch options."""

    fn: JITFunction
    args: dict[str, Any]
    options: dict[str, int]

    def key(self) -> tuple:
        """What decides the build: the kernel, the options, the constexprs and the argument types."""
        kinds = tuple((name, value if _is_constexpr(self.fn, name, value) else _kind(value))
                      for name, value in self.args.items())
        return (self.fn, tuple(sorted(self.options.items())), kinds)


def _is_constexpr(fn: JITFunction, name: str, value: Any) -> bool:
    return value is None or next(p for p in fn.params if p.name == name).is_constexpr


def _kind(value: Any) -> str:
    if isinstance(value, _DESCRIPTORS):
        return mangle_type(value)
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type a kernel argument of {type(value).__name__}")


@contextlib.contextmanager
def recorded_launches() -> Iterator[list[Launch]]:
    """Within the block, `kernel[grid](...)` of any Triton kernel appends a Launch to the yielded list and runs
    nothing (outputs stay as allocated)."""
    launches: list[Launch] = []

    def record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        launches.append(Launch(self, bound, options))

    original = JITFunction.run
    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def build(fn: JITFunction, args: dict[str, Any], options: dict[str, int], target: GPUTarget = HOPPER) -> Any:
    """Compiles fn for target with the types and constexprs of args (values by parameter name)."""
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        value = args[param.name]
        if _is_constexpr(fn, param.name, value):
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value == 1 and not param.do_not_specialize:
            signature[param.name] = "constexpr"  # Triton specialises integer arguments equal to 1
            constexprs[param.name] = 1
            continue
        signature[param.name] = _kind(value)
        aligned = value.data_ptr() % 16 == 0 if isinstance(value, torch.Tensor) else (
            not isinstance(value, (bool, float, *_DESCRIPTORS)) and value % 16 == 0)
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = (GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource)(
        fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options=dict(options))


def serialized_wgmma(kernel: Any) -> str:
    """ptxas's reason for running a kernel's wgmma one at a time (its performance note C7514 and kin, which Triton
    does not show), or "" when they stay pipelined or the kernel has none. Such a kernel is correct but loses the
    overlap of its products: a whole-sequence dx walk that kept g live after its loop ran 2.27 -> 3.52 ms at
    128 x 128 (H200), with every HGMMA followed by a wait."""
    ptx = kernel.asm["ptx"]
    if "wgmma.mma_async" not in ptx:
        return ""
    ptxas = get_ptxas(HOPPER.arch).path  # the ptxas Triton itself compiles with (3.9: ptxas-blackwell)
    arch = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    return serialization_reason(log)


def serialization_reason(ptxas_log: str) -> str:
    """The reason in ptxas's -v log for serializing a kernel's wgmma, or "" when it says none."""
    found = re.search(r"wgmma\.mma_async instructions are serialized due to (.*?) in the function", ptxas_log)
    return found.group(1).strip() if found else ""


def resources(kernel: Any) -> tuple[int, int, int]:
    """(registers per thread, stack bytes per thread, shared memory bytes) of a compiled kernel."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return regs, stack, int(kernel.metadata.shared)


def _inputs(headdim: int, dstate: int, d_per_channel: bool, aligned: bool, initial_states: bool) -> dict[str, Any]:
    """bf16 scan inputs on the CPU: 2 packed sequences (300 tokens; aligned: 320, in sequences of 112 and 208, so
    that the chunk table is aligned), 4 heads in 2 groups, every option on (initial states as asked)."""
    ntokens, nheads, ngroups = (320, 4, 2) if aligned else (300, 4, 2)
    bf16 = dict(dtype=torch.bfloat16, requires_grad=True)
    f32 = dict(dtype=torch.float32, requires_grad=True)
    return dict(
        x=torch.randn(1, ntokens, nheads, headdim, **bf16), dt=torch.randn(1, ntokens, nheads, **bf16),
        A=-torch.rand(nheads, **f32), B=torch.randn(1, ntokens, ngroups, dstate, **bf16),
        C=torch.randn(1, ntokens, ngroups, dstate, **bf16),
        D=torch.randn(nheads, headdim, **f32) if d_per_channel else torch.randn(nheads, **f32),
        z=torch.randn(1, ntokens, nheads, headdim, **bf16), dt_bias=torch.randn(nheads, **f32),
        initial_states=torch.randn(2, nheads, headdim, dstate, **f32) if initial_states else None,
        cu_seqlens=torch.tensor([0, 112 if aligned else 100, ntokens], dtype=torch.int32),
    )


def record_scan(headdim: int, dstate: int, d_per_channel: bool = False, aligned: bool = False,
                initial_states: bool = True, final_states: bool = True) -> list[Launch]:
    """The launches of a bf16 scan's forward and backward (every option on, initial states and final states as
    asked) and of a decode step at head_dim x d_state, recorded on the CPU (config.py's choices for a machine
    without the Gluon walks); aligned: sequence boundaries at multiples of 16 (ChunkTable.aligned), as the
    benchmarks' shapes have them."""
    with recorded_launches() as launches:
        inputs = _inputs(headdim, dstate, d_per_channel, aligned, initial_states)
        out = ssd_scan_triton(chunk_size=256, dt_softplus=True, dt_limit=(1e-3, 0.1),
                              return_final_states=final_states, **inputs)
        outs = list(out) if final_states else [out]
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
        step_inputs = {k: v.detach()[:, 0] if k in ("x", "dt", "B", "C", "z") else v.detach()
                       for k, v in inputs.items() if k not in ("initial_states", "cu_seqlens")}
        ssd_step_triton(torch.zeros(1, 4, headdim, dstate), dt_softplus=True, **step_inputs)
    return launches


@contextlib.contextmanager
def forced_config(**overrides: str) -> Iterator[None]:
    """Sets config.py's ARCHSPEC_SSD_<NAME> variables (keyword NAME, value "field=v,...") inside the block and
    restores what the environment had."""
    keys = {f"ARCHSPEC_SSD_{name.upper()}": value for name, value in overrides.items()}
    before = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def scan_launches() -> list[Launch]:
    """The distinct launches of `record_scan` at 64 x 64 with D per channel (the chunk walks), 64 x 256 with D
    per head (the per-row-tile kernels), both with and without aligned sequences, 64 x 64 with the state passes in
    segments (segments.py), 64 x 128 with the state passes' tiles that config.fill_sms picks for few programs on
    a GPU (the CPU has no SM count), the output walks over whole sequences (config.whole_walks) at 64 x 64 and
    128 x 128, whole walks in two warpgroups (64 x 256 over the whole d_state, with final states and without;
    128 x 64), the dx walk at 128 x 128 in the GPU's tiles, and the dx row tiles of 128 x 256."""
    with forced_config(state="segment=1", state_bwd="segment=1"):
        segmented = record_scan(64, 64, False)
    with forced_config(scan="whole=1"):
        whole = [launch for shape in ((64, 64), (128, 128))
                 for launch in record_scan(*shape, True, initial_states=False) if launch.fn is forward._scan_fwd_kernel]
    # the whole walks in two warpgroups (config.scan_one_per_sm_config): over all of d_state 256 (sequences aligned
    # and not: the copies of C B^T tiles), and in the 128-column head_dim blocks of 128 x 64
    with forced_config(scan="walk=1,block_n=256,block_p=64,num_warps=8,whole=1"):
        two_warpgroups = [launch for aligned in (False, True)
                          for launch in record_scan(64, 256, not aligned, aligned, initial_states=False,
                                                    final_states=aligned)
                          if launch.fn is forward._scan_fwd_kernel]
    with forced_config(scan="num_warps=8,whole=1"):
        two_warpgroups += [launch for launch in record_scan(128, 64, False, True, initial_states=False)
                           if launch.fn is forward._scan_fwd_kernel]
    # the Gluon dx walk with the d_state tiles of 128 it takes on a GPU (the CPU's config picks the row-tile kernel)
    gpu_dx = bwd_dx_config(128, 128, 256, wgmma=True)
    with forced_config(dx=f"walk=1,block_m={gpu_dx.block_m},block_p={gpu_dx.block_p},block_n={gpu_dx.block_n}"):
        dx_128 = [launch for launch in record_scan(128, 128, True) if launch.fn is backward._dx_kernel]
    with forced_config(state="block_p=16,num_warps=4,maxnreg=0", state_bwd="block_p=32,num_warps=4,maxnreg=0"):
        split = [launch for launch in record_scan(64, 128, False) if "state" in launch.fn.__name__]
    # the dx row tiles of 128 x 256: head_dim blocks of 128 in 8 warps, forming their own state term (ptxas had
    # serialized their wgmma, which 64 x 256, taking the term from the batched matmul, did not show)
    dx_rows = [launch for launch in record_scan(128, 256, False, True) if launch.fn is tiles._dx_tiles_kernel]
    distinct: dict[tuple, Launch] = {}
    walks_and_tiles = [launch for aligned in (False, True)
                       for launch in record_scan(64, 64, True, aligned) + record_scan(64, 256, False, aligned)]
    for launch in walks_and_tiles + segmented + split + whole + two_warpgroups + dx_128 + dx_rows:
        distinct.setdefault(launch.key(), launch)
    return list(distinct.values())


def _warps(launch: Launch) -> int:
    return launch.options.get("num_warps", 4)


def gluon_twin(launch: Launch) -> Optional[tuple[JITFunction, dict[str, Any]]]:
    """The Gluon walk that runs instead of launch's Triton walk on Hopper, with its arguments; None if none does."""
    twin = _GLUON_TWINS.get(launch.fn)
    if twin is None or not wgmma_tiles(launch.args["BLOCK_T"], launch.args["BLOCK_N"], _warps(launch)):
        return None
    args = dict(launch.args)
    if twin is _scan_fwd_wgmma_kernel:
        if args["BLOCK_P"] < MIN_BLOCK_P:
            return None
        args.update(tma_arguments(args, args["x_ptr"], args["b_ptr"], args["c_ptr"], args["states_ptr"],
                                  args["y_ptr"], args["ypre_ptr"]))
    if twin is _dx_wgmma_kernel:
        args.update(dx_tma_arguments(args, args["dy_ptr"], args["b_ptr"], args["c_ptr"]))
    return twin, {p.name: args[p.name] for p in twin.params}


def _builds() -> Iterator[tuple[JITFunction, dict[str, Any], dict[str, int]]]:
    for launch in scan_launches():
        yield launch.fn, launch.args, launch.options
        twin = gluon_twin(launch)
        if twin is not None:
            yield twin[0], twin[1], dict(num_warps=_warps(launch))


def main() -> int:
    """Builds every kernel and prints one line each, a table last; exit status 1 if any build failed or had its
    wgmma serialized by ptxas."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("offline_build: unset TRITON_INTERPRET (it replaces the kernels by the interpreter's)", file=sys.stderr)
        return 2
    rows, failed = [], 0
    for fn, args, options in _builds():
        blocks = ",".join(f"{k}={v}" for k, v in args.items() if k.startswith(("BLOCK", "CHUNK", "ALIGNED", "SIDE")))
        try:
            kernel = build(fn, args, options)
            regs, stack, shared = resources(kernel)
            serial = serialized_wgmma(kernel)
            failed += bool(serial)
            rows.append(f"| {fn.__name__} | {blocks} | {options.get('num_warps', 4)} | {regs} | {stack} | "
                        f"{shared / 1024:.1f} | {'FAILED: serialized, ' + serial if serial else 'ok'} |")
        except Exception as err:  # noqa: BLE001 - every failure is reported, then the status says so
            failed += 1
            rows.append(f"| {fn.__name__} | {blocks} | {options.get('num_warps', 4)} | FAILED: "
                        f"{str(err).strip().splitlines()[-1][:200]} | | | |")
        print(rows[-1], flush=True)
    print("\n| kernel | tiles | warps | registers | stack bytes | shared KB | wgmma |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
