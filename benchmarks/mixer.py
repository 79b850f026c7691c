"""Where the time of one Mamba2Mixer goes on a GPU: each stage alone, then the whole mixer.

Usage (on a CUDA machine with archspec installed):
    python benchmarks/mixer.py [--d-model 2048] [--tokens 65536] [--seqlen 8192] [--d-state 128]

Stages, forward and forward + backward, bf16, triton.testing.do_bench medians in ms: in_proj, the causal
depthwise conv + SiLU (the mixer's own path), the SSD scan, the gated RMSNorm, out_proj, and the whole mixer.
The memory floor of each elementwise stage is its bytes read + written over the measured copy bandwidth.
Prints a table last.
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from archspec.blocks import Mamba2Mixer


def _bench(fn, rep: int) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def _fwd_bwd(fn, inputs: list[torch.Tensor], rep: int) -> tuple[float, float]:
    """Times fn(*inputs) forward, and forward + backward of its sum against a fixed random cotangent."""
    with torch.no_grad():
        fwd = _bench(lambda: fn(*inputs), rep)
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step() -> None:
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)

    return fwd, _bench(step, rep)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), 50)
    return 2 * src.numel() / (ms * 1e-3)


def profile_mixer(mixer: Mamba2Mixer, u: torch.Tensor) -> None:
    """Prints the CUDA kernels of one whole-mixer forward + backward, most time first."""
    out = mixer(u)
    grad = torch.randn_like(out)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        mixer(u).backward(grad)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--d-state", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rep", type=int, default=40, help="ms of repetitions per measurement")
    parser.add_argument("--profile", action="store_true", help="also list the whole mixer's top CUDA kernels")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/mixer.py needs a CUDA device")
    torch.manual_seed(0)
    dev, dtype = "cuda", torch.bfloat16
    batch = args.tokens // args.seqlen
    mixer = Mamba2Mixer(args.d_model, d_state=args.d_state, head_dim=args.head_dim, device=dev, dtype=dtype)
    bw = copy_bandwidth()
    u = torch.randn(batch, args.seqlen, args.d_model, device=dev, dtype=dtype, requires_grad=True)
    zxbcdt = mixer.in_proj(u).detach()
    z, xBC, dt = torch.split(zxbcdt, [mixer.d_inner, mixer.conv_dim, mixer.nheads], dim=-1)
    xBC = xBC.contiguous().requires_grad_()
    z = z.contiguous().requires_grad_()
    dt = dt.contiguous().requires_grad_()
    conv_out = mixer._conv(xBC, None, None).detach()
    y = torch.randn(batch, args.seqlen, mixer.d_inner, device=dev, dtype=dtype, requires_grad=True)

    def scan(conv_out_: torch.Tensor, dt_: torch.Tensor) -> torch.Tensor:
        return mixer._scan(z.detach(), conv_out_, dt_, None, None)

    x_only = conv_out.clone().requires_grad_()
    elem = xBC.numel() * xBC.element_size()
    rows = [
        ("in_proj", *_fwd_bwd(mixer.in_proj, [u], args.rep), None),
        ("conv + SiLU", *_fwd_bwd(lambda t: mixer._conv(t, None, None), [xBC], args.rep), 2 * elem / bw * 1e3),
        ("conv input into scan (xBC) + dt -> y", *_fwd_bwd(scan, [x_only, dt], args.rep), None),
        ("gated RMSNorm", *_fwd_bwd(mixer.norm, [y, z], args.rep), 3 * y.numel() * y.element_size() / bw * 1e3),
        ("out_proj", *_fwd_bwd(mixer.out_proj, [y], args.rep), None),
        ("whole mixer", *_fwd_bwd(mixer, [u], args.rep), None),
    ]
    if args.profile:
        profile_mixer(mixer, u)
    print(f"Mamba2Mixer d_model {args.d_model}, d_state {args.d_state}, head_dim {args.head_dim}, "
          f"{batch} x {args.seqlen} tokens, bf16; copy bandwidth {bw / 1e12:.2f} TB/s; "
          f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    print("| stage | fwd ms | fwd+bwd ms | elementwise fwd floor ms |")
    print("| --- | --- | --- | --- |")
    for name, fwd, both, floor in rows:
        print(f"| {name} | {fwd:.3f} | {both:.3f} | {'-' if floor is None else f'{floor:.3f}'} |")


if __name__ == "__main__":
    main()
