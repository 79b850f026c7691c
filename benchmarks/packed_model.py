"""What packing sequences costs a whole model: forward+backward on batch rows against the same tokens packed.

Usage (on a CUDA machine with archspec installed; `--device cpu --spec specs/tiny-hybrid.yaml --tokens 512
--seqlen 128 --rep 2` is a smoke run):
    python benchmarks/packed_model.py [--spec specs/hybrid-mamba2-hybrid-like.yaml] [--tokens 16384]
        [--seqlen 2048] [--rep 20]

Builds the spec's model (float32 parameters, bf16 autocast on a GPU, as training runs), then times a training
step's forward+backward (summed logits against a fixed random cotangent) on `tokens / seqlen` rows of `seqlen`
tokens and on the same tokens as one row with cu_seqlens marking the same sequences: the same arithmetic, so the
difference is what packing adds (cu_seqlens checks, packed chunk tables, the attention's packed path). Medians
of `rep` steps after 3 warm-up steps, in ms. Without flash-attn the packed attention runs the sequences as the
rows of right-padded batches (blocks/packing.py). Prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from archspec.builder import build_model
from archspec.loader import load_spec


def _step_ms(model: torch.nn.Module, ids: torch.Tensor, cu_seqlens: torch.Tensor | None, rep: int) -> float:
    device = ids.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        cotangent = torch.randn_like(model(ids, cu_seqlens=cu_seqlens), dtype=torch.float32)
    times = []
    for i in range(rep + 3):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            logits = model(ids, cu_seqlens=cu_seqlens)
        logits.float().backward(cotangent)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/hybrid-mamba2-hybrid-like.yaml")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--rep", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    opts = parser.parse_args()
    if opts.tokens % opts.seqlen:
        raise SystemExit(f"--tokens {opts.tokens} is not a multiple of --seqlen {opts.seqlen}")
    device = torch.device(opts.device)
    spec = load_spec(opts.spec)
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    rows = opts.tokens // opts.seqlen
    ids = torch.randint(0, spec.vocab_size, (rows, opts.seqlen), device=device)
    cu_seqlens = torch.arange(rows + 1, device=device, dtype=torch.int32) * opts.seqlen
    batch_ms = _step_ms(model, ids, None, opts.rep)
    packed_ms = _step_ms(model, ids.reshape(1, -1), cu_seqlens, opts.rep)
    name = getattr(spec, "name", opts.spec)
    print("| model | layers | tokens | sequences of | device | rows fwd+bwd ms | packed fwd+bwd ms | packed / rows |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {name} | {len(model.backbone.layers)} | {opts.tokens} | {opts.seqlen} | "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} | {batch_ms:.2f} | "
          f"{packed_ms:.2f} | {packed_ms / batch_ms:.3f} |")


if __name__ == "__main__":
    main()
