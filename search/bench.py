"""SSD against attention over sequence lengths at equal width: the crossover benchmark (GPU).

For each sequence length L the benchmark builds a batch of ``tokens // L`` sequences (the same tokens per
call at every L), and times ``archspec.blocks.Mamba2Mixer`` (the SSD mixer with its projections, Triton
kernels) and ``archspec.blocks.Attention`` (flash-attn if importable, else torch SDPA; same d_model,
``d_model / attn_head_dim`` heads) in bf16: forward (no grad) and forward + backward, median milliseconds of
``triton.testing.do_bench``. With ``core`` it times the bare operations instead: ``ssd_scan`` (one B/C
group, dt softplus) against causal attention of q, k, v (the Mamba-2 paper's comparison). Writes
``bench.md``, ``bench.csv``, ``bench.json`` and ``crossover.png``.

On the CPU it refuses (the numbers would say nothing about the GPU kernels) unless ``allow_cpu``, which runs
a tiny float32 smoke version (sizes of ``BenchConfig.cpu_smoke``) timed with ``time.perf_counter``.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from archspec.fileio import write_atomic
from archspec.search.files import csv_text

DEFAULT_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


class CPURefused(RuntimeError):
    """The benchmark was asked to run without a CUDA device and without ``allow_cpu``."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes: SSD with d_inner = expand * d_model in heads of head_dim; attention in heads of attn_head_dim.

    core: time the bare operations (``archspec.kernels.ssd_scan`` with one group of B/C, against causal
    attention of q, k, v) instead of the whole mixers with their projections (the paper's comparison).
    """

    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    d_model: int = 2048
    tokens: int = 65536
    d_state: int = 128
    head_dim: int = 64
    attn_head_dim: int = 128
    expand: int = 2
    chunk_size: int = 256
    core: bool = False

    def __post_init__(self) -> None:
        if not self.seq_lens or min(self.seq_lens) < 1:
            raise ValueError(f"seq_lens: expected positive lengths, got {self.seq_lens}")
        for name in ("d_model", "tokens", "d_state", "head_dim", "attn_head_dim", "expand", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        if self.d_model % self.attn_head_dim:
            raise ValueError(f"attn_head_dim: {self.attn_head_dim} must divide d_model {self.d_model}")
        if (self.expand * self.d_model) % self.head_dim:
            raise ValueError(f"head_dim: {self.head_dim} must divide expand * d_model = {self.expand * self.d_model}")

    def cpu_smoke(self) -> BenchConfig:
        """Tiny sizes for a CPU smoke run."""
        return replace(self, seq_lens=(32, 64, 128), d_model=64, tokens=256, d_state=16, head_dim=32,
                       attn_head_dim=32, chunk_size=32)


@dataclass
class BenchResult:
    """One row per sequence length (milliseconds, None where it ran out of memory), the table, files."""

    rows: list[dict[str, Any]]
    markdown: str
    device: str
    files: list[Path] = field(default_factory=list)


def run_bench(config: BenchConfig, *, out_dir: str | Path, allow_cpu: bool = False) -> BenchResult:
    """Time both mixers at every sequence length and write the table and plot (see the module docstring)."""
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not allow_cpu:
        raise CPURefused(
            "archspec bench times the GPU kernels (Triton SSD, flash/SDPA attention) and needs a CUDA device; "
            "pass --allow-cpu for a tiny smoke run on the CPU (its timings mean nothing)"
        )
    if not on_gpu:
        config = config.cpu_smoke()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    targets = _core_ops(config, device, dtype) if config.core else _mixers(config, device, dtype)
    timer = _gpu_timer if on_gpu else _cpu_timer
    rows = []
    for seq_len in config.seq_lens:
        batch = max(1, config.tokens // seq_len)
        row: dict[str, Any] = {"seq_len": seq_len, "batch": batch, "tokens": batch * seq_len}
        for name, target in targets.items():
            row[f"{name}_fwd_ms"], row[f"{name}_fwd_bwd_ms"] = _time_target(target, batch, seq_len, timer)
        rows.append(row)
        if on_gpu:
            torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(device) if on_gpu else "CPU (smoke run, float32)"
    backend = "flash_attn" if on_gpu and _flash() else "SDPA"
    markdown = _markdown(rows, config, device_name, backend)
    out = Path(out_dir)
    files = [out / "bench.md", out / "bench.csv", out / "bench.json", out / "crossover.png"]
    write_atomic(files[0], markdown + "\n")
    write_atomic(files[1], csv_text(rows))
    write_atomic(files[2], json.dumps({"device": device_name, "attention_backend": backend,
                                       "config": asdict(config), "rows": rows}, indent=2) + "\n")
    _plot(rows, config, device_name, backend, files[3])
    return BenchResult(rows=rows, markdown=markdown, device=device_name, files=files)


def _flash() -> bool:
    from archspec.blocks.attention import flash_attn_available

    return flash_attn_available()


@dataclass
class _Target:
    """What to time: ``inputs(batch, seq_len)`` makes fresh leaf tensors, ``fn(*inputs)`` returns one tensor;
    ``params`` are the weights whose gradients are reset between backward passes."""

    inputs: Callable[[int, int], list]
    fn: Callable[..., Any]
    params: list = field(default_factory=list)


def _mixers(config: BenchConfig, device: Any, dtype: Any) -> dict[str, _Target]:
    import torch

    from archspec.blocks import Attention, Mamba2Mixer

    ssd = Mamba2Mixer(config.d_model, d_state=config.d_state, head_dim=config.head_dim, expand=config.expand,
                      chunk_size=config.chunk_size, device=device, dtype=dtype)
    attn = Attention(config.d_model, n_heads=config.d_model // config.attn_head_dim, head_dim=config.attn_head_dim,
                     device=device, dtype=dtype)

    def inputs(batch: int, seq_len: int) -> list:
        return [torch.randn(batch, seq_len, config.d_model, device=device, dtype=dtype, requires_grad=True)]

    return {"ssd": _Target(inputs, ssd, list(ssd.parameters())),
            "attention": _Target(inputs, attn, list(attn.parameters()))}


def _core_ops(config: BenchConfig, device: Any, dtype: Any) -> dict[str, _Target]:
    import torch
    import torch.nn.functional as F

    from archspec.kernels import ssd_scan

    nheads = config.expand * config.d_model // config.head_dim
    A = -(1 + 15 * torch.rand(nheads, device=device))
    dt_bias = torch.rand(nheads, device=device) - 4.0
    heads = config.d_model // config.attn_head_dim

    def leaf(*shape: int) -> Any:
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    def ssd_inputs(batch: int, seq_len: int) -> list:
        return [leaf(batch, seq_len, nheads, config.head_dim), leaf(batch, seq_len, nheads),
                leaf(batch, seq_len, 1, config.d_state), leaf(batch, seq_len, 1, config.d_state)]

    def ssd(x: Any, dt: Any, B: Any, C: Any) -> Any:
        return ssd_scan(x, dt, A, B, C, config.chunk_size, dt_bias=dt_bias, dt_softplus=True)

    def attn_inputs(batch: int, seq_len: int) -> list:
        return [leaf(batch, heads, seq_len, config.attn_head_dim) for _ in range(3)]

    def attention(q: Any, k: Any, v: Any) -> Any:
        if _flash() and q.is_cuda:
            from flash_attn import flash_attn_func

            return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return {"ssd": _Target(ssd_inputs, ssd), "attention": _Target(attn_inputs, attention)}


def _time_target(target: _Target, batch: int, seq_len: int, timer: Callable) -> tuple:
    """(forward ms, forward + backward ms); None for a size that does not fit in memory."""
    import torch

    try:
        inputs = target.inputs(batch, seq_len)
        grad = torch.randn_like(target.fn(*inputs))

        def forward() -> None:
            with torch.no_grad():
                target.fn(*inputs)

        def forward_backward() -> None:
            target.fn(*inputs).backward(grad)

        return timer(forward, []), timer(forward_backward, [*inputs, *target.params])
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None


def _gpu_timer(fn: Callable[[], None], grads: list) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median"))


def _cpu_timer(fn: Callable[[], None], grads: list) -> float:
    times = []
    for _ in range(3):
        for g in grads:
            g.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def crossover(rows: list[dict[str, Any]], key: str) -> int | None:
    """The shortest sequence length from which SSD is faster than attention for ``key`` ("fwd" or "fwd_bwd")."""
    for row in rows:
        ssd, attn = row[f"ssd_{key}_ms"], row[f"attention_{key}_ms"]
        if ssd is not None and attn is not None and ssd < attn:
            return row["seq_len"]
    return None


def _ms(value: float | None) -> str:
    return "OOM" if value is None else f"{value:.3f}"


def _markdown(rows: list[dict[str, Any]], config: BenchConfig, device: str, backend: str) -> str:
    ssd_heads = config.expand * config.d_model // config.head_dim
    what = "ssd_scan vs causal attention (no projections)" if config.core else "Mamba2Mixer vs Attention"
    lines = [
        f"{device}, {what}: d_model {config.d_model}; SSD {ssd_heads} heads x {config.head_dim}, "
        f"d_state {config.d_state}, "
        f"chunk {config.chunk_size}; attention ({backend}) {config.d_model // config.attn_head_dim} heads x "
        f"{config.attn_head_dim}; {config.tokens} tokens per call; median ms.",
        "",
        "| seq_len | batch | SSD fwd | attn fwd | SSD fwd+bwd | attn fwd+bwd | attn/SSD fwd+bwd |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, a = r["ssd_fwd_bwd_ms"], r["attention_fwd_bwd_ms"]
        ratio = f"{a / s:.2f}" if s and a else "-"
        lines.append(f"| {r['seq_len']} | {r['batch']} | {_ms(r['ssd_fwd_ms'])} | {_ms(r['attention_fwd_ms'])} | "
                     f"{_ms(s)} | {_ms(a)} | {ratio} |")
    for key, label in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
        at = crossover(rows, key)
        lines.append("")
        lines.append(f"SSD faster than attention ({label}) from seq_len {at}" if at is not None
                     else f"SSD not faster than attention ({label}) at any measured seq_len")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], config: BenchConfig, device: str, backend: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    for i, (key, label) in enumerate((("fwd", "forward"), ("fwd_bwd", "forward + backward"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ssd_label = "SSD (ssd_scan)" if config.core else "SSD (Mamba2Mixer)"
        for name, color in (("ssd", "C0"), ("attention", "C1")):
            points = [(r["seq_len"], r[f"{name}_{key}_ms"]) for r in rows if r[f"{name}_{key}_ms"] is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color,
                    label=ssd_label if name == "ssd" else f"attention ({backend})")
        at = crossover(rows, key)
        if at is not None:
            ax.axvline(at, color="gray", linestyle=":", label=f"SSD faster from {at}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (same tokens per call)")
        ax.set_ylabel("milliseconds (median)")
        ax.set_title(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{device}: SSD vs attention at d_model {config.d_model}, {config.tokens} tokens per call")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buf.getvalue())
