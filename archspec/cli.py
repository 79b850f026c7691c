"""The ``archspec`` command: validate, summary, train, eval, generate, export, schema, and search / compare / bench
from archspec.search.

Spec mistakes (SpecError), refused run directories (RunDirError), prompts a model cannot take and files that cannot
be read or written (OSError) are printed as ``error: <message>`` on stderr without a traceback, exit status 2. FLOP
arguments accept plain numbers (``1e12``) and SI suffixes (``2.5T``, ``300G``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from archspec.cliargs import (
    add_accelerator, batches_or_all, non_negative_float, non_negative_int, parse_flops, positive_int, token_ids,
)
from archspec.errors import DeviceError, RunDirError, SpecError
from archspec.fileio import file_in_the_way, os_error_text, write_atomic

def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. blocks.M.d_state=64 (repeatable; YAML values)")


# --------------------------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    """Load every spec and expand its layout; print ``<path>: OK`` or the error. Exit 2 if any failed."""
    from archspec.layout import expand_layout
    from archspec.loader import load_spec

    status = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.overrides)
            layers = expand_layout(spec)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{path}: OK ({spec.name}, {len(layers)} layers)")
    return status


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the accounting table and the layout in compact form."""
    from archspec.accounting import account, format_summary
    from archspec.layout import describe_layout, expand_layout
    from archspec.loader import load_spec

    spec = load_spec(args.spec, args.overrides)
    seq_len = args.seq_len or (spec.data.seq_len if spec.data is not None else 2048)
    print(format_summary(spec, account(spec, seq_len)))
    print(f"layout: {describe_layout(expand_layout(spec))}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a spec (see archspec.training.train) and print the final numbers."""
    from archspec.loader import load_spec
    from archspec.training import train

    spec = load_spec(args.spec, args.overrides)
    out_dir = args.out or os.path.join("runs", spec.name)
    try:
        result = train(spec, out_dir=out_dir, max_steps=args.max_steps, budget_flops=args.budget, seed=args.seed,
                       accelerator=args.accelerator, devices=args.devices, resume=not args.no_resume,
                       progress_bar=not args.no_progress)
    except SpecError as exc:  # a rule between sections (batch size vs data) found when the run starts
        exc.source = exc.source or args.spec
        raise
    throughput = f"{result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second else "- tokens/s"
    print(f"{spec.name}: {result.steps} steps, {result.tokens:,} tokens, {result.train_flops:.3e} training FLOPs")
    print(f"val_loss {_fmt(result.val_loss)}, val_accuracy {_fmt(result.val_accuracy)}, "
          f"best val_loss {_fmt(result.best_val_loss)}; {throughput}")
    print(f"results: {Path(out_dir) / 'result.json'}; checkpoint: {result.checkpoint_path}")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run's last checkpoint (or a mamba_ssm checkpoint) on its data or ``--data``; print a table or JSON.

    Defaults reproduce the run's validation: its seed, ``training.batch_size`` and ``training.val_batches``.
    """
    from archspec.evaluation import evaluate, load_data_file
    from archspec.runs import open_run
    from archspec.training import resolve_precision

    device = _device(args.accelerator)
    run = open_run(args.run)
    spec = run.spec
    if args.data is not None:
        data = load_data_file(args.data, vocab_size=spec.vocab_size, model=str(run.path))
        source = os.path.normpath(args.data)
    elif spec.data is not None:
        data, source = spec.data, str(run.spec_path)
    else:
        print(f"error: --data: {run.path} is a mamba_ssm checkpoint without a data section; "
              "give a task with --data FILE.yaml", file=sys.stderr)
        return 2
    cfg = spec.training
    batch_size = args.batch_size or cfg.batch_size
    max_batches = cfg.val_batches if args.batches is None else (None if args.batches == "all" else args.batches)
    precision = resolve_precision(cfg.precision, "gpu" if device.type == "cuda" else "cpu")
    seed = cfg.seed if args.seed is None else args.seed
    result = evaluate(run.model.to(device), data, split=args.split, batch_size=batch_size, max_batches=max_batches,
                      seed=seed, precision=precision, source=source)
    record = {"run": str(run.path), "kind": run.kind, "checkpoint": str(run.checkpoint), "step": run.step,
              "data": source, "seed": seed, "precision": precision, "device": str(device), **result.to_dict()}
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    step = f" at step {run.step}" if run.step is not None else ""
    print(f"{run.path} ({spec.name}, {run.checkpoint.name}{step}) on {result.split} of {data.task} "
          f"(seq_len {result.seq_len}, from {source}): {result.batches} batch{'es' * (result.batches != 1)} of up to "
          f"{batch_size}, "
          f"{result.sequences} sequences")
    rows = [
        ("loss", _num(result.loss, ".6f")),
        ("accuracy", _num(result.accuracy, ".4f")),
        ("perplexity", _num(result.perplexity, ".4g")),
        ("tokens", f"{result.scored_tokens:,} scored of {result.tokens:,}"),
        ("tokens/s", "-" if result.tokens_per_second is None else f"{result.tokens_per_second:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def _num(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else ("inf" if value == math.inf else "-")


def _device(accelerator: str):
    """The torch device of ``--accelerator`` (auto: CUDA when present); DeviceError for gpu without CUDA."""
    import torch

    from archspec.training import check_devices

    check_devices(accelerator)
    return torch.device("cuda" if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
                        else "cpu")


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue a prompt with a run's last checkpoint: text in and out for a byte-level text model, ids otherwise."""
    from archspec.generation import (
        PromptError, beyond_context, check_prompt_ids, decode_text, encode_text_prompt, generate_ids,
    )
    from archspec.runs import open_run

    device = _device(args.accelerator)
    run = open_run(args.run)
    try:
        if args.prompt is not None:
            prompt = encode_text_prompt(run.spec, args.prompt, model=str(run.path))
        else:
            prompt = check_prompt_ids(run.spec, args.prompt_ids, model=str(run.path))
    except PromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ids = generate_ids(run.model.to(device), prompt, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(decode_text(ids, len(prompt)) if args.prompt is not None else ",".join(str(i) for i in ids))
    if beyond_context(run.spec, len(prompt), args.max_new_tokens):
        print(f"note: {len(prompt)} prompt + {args.max_new_tokens} new tokens run past the "
              f"{run.spec.data.seq_len}-token context {run.path} was trained on", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's last checkpoint (or a mamba_ssm folder) as a mamba_ssm checkpoint: config.json and
    pytorch_model.bin in a new or empty folder. A spec mamba_ssm cannot express, or an --to folder that already
    holds files, is one ``error:`` line (exit 2) and nothing is written."""
    from archspec.checkpoint import mamba_ssm_config_from_spec, save_mamba_ssm_checkpoint
    from archspec.runs import open_run

    run = open_run(args.run)
    try:
        config = mamba_ssm_config_from_spec(run.spec)
    except ValueError as exc:
        print(f"error: {run.spec_path} {exc}", file=sys.stderr)
        return 2
    try:
        written = save_mamba_ssm_checkpoint(run.model, args.to)
    except ValueError as exc:
        print(f"error: --to {exc}", file=sys.stderr)
        return 2
    mixers = f"{config['n_layer']} layers" + (f" ({len(config['attn_layer_idx'])} MHA)" if config["attn_layer_idx"]
                                               else "")
    mlp = f", GatedMLP {config['d_intermediate']}" if config["d_intermediate"] else ""
    step = f" at step {run.step}" if run.step is not None else ""
    print(f"{run.path} ({run.spec.name}, {run.checkpoint.name}{step}) as mamba_ssm MambaLMHeadModel: {mixers}, "
          f"d_model {config['d_model']}{mlp}")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the spec format, or write it to ``--out``."""
    from archspec.schema import model_json_schema_text

    text = model_json_schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    blocker = file_in_the_way(out.parent)
    if blocker is not None:
        print(f"error: {blocker} is a file, not a folder, so --out {out} cannot be written", file=sys.stderr)
        return 2
    if out.is_dir():
        print(f"error: {out} is a folder; --out expects a file name such as {out / 'spec.schema.json'}",
              file=sys.stderr)
        return 2
    write_atomic(out, text)
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of all subcommands; each subparser sets ``func(args) -> int`` (exit status)."""
    from archspec.search.cli import add_bench_parser, add_compare_parser, add_search_parser

    parser = argparse.ArgumentParser(prog="archspec", description="Hybrid Mamba-2 SSD / attention LM specs: "
                                     "validate, account, train, search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check spec files")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("summary", help="per-layer params, FLOPs/token, decode state and KV-cache bytes")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="sequence length for FLOPs and KV cache (default: the data section's, else 2048)")
    _add_set(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a spec on its data section")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--out", default=None, help="run directory (default runs/<spec name>)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps")
    steps.add_argument("--budget", type=parse_flops, default=None, metavar="FLOPS",
                       help="training FLOP budget (1e12, 2.5T, 300G); sets the steps")
    p.add_argument("--seed", type=non_negative_int, default=None)
    add_accelerator(p)
    p.add_argument("--devices", type=positive_int, default=1,
                   help="data-parallel (DDP) over N GPUs, or N processes on the CPU; training.batch_size stays the "
                        "global batch and must be divisible by N (default 1)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of continuing from last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss, accuracy, perplexity of a trained run on its data or another task",
                       description="Evaluate RUN_DIR/checkpoints/last.ckpt (or a mamba_ssm folder with config.json "
                       "and pytorch_model.bin, given --data) without writing anything. The defaults reproduce the "
                       "run's validation: its data section, seed, training.batch_size and training.val_batches.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--data", default=None, metavar="FILE.yaml",
                   help="another task: a YAML with a data section, a bare task config (task: ...) or a spec")
    p.add_argument("--batches", type=batches_or_all, default=None, metavar="N",
                   help="batches to evaluate, or 'all' (default: training.val_batches, else all)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: training.batch_size")
    p.add_argument("--seed", type=non_negative_int, default=None,
                   help="the data seed of synthetic tasks (default: the run's training.seed, as its validation)")
    add_accelerator(p)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained run (text for byte-level text models)",
                       description="Continue a prompt with RUN_DIR/checkpoints/last.ckpt: --prompt TEXT for a model "
                       "trained on the text task (prints the text, stopping at the end of a document), "
                       "--prompt-ids for any model (prints the ids). Writes nothing.")
    p.add_argument("run", metavar="RUN_DIR")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", default=None, metavar="TEXT", help="text (byte-level text models)")
    prompt.add_argument("--prompt-ids", type=token_ids, default=None, metavar="1,2,3", help="token ids")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=64)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0: reproducible)")
    add_accelerator(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a trained run as a mamba_ssm checkpoint (config.json + pytorch_model.bin)",
                       description="Write RUN_DIR/checkpoints/last.ckpt (or a mamba_ssm folder) in mamba_ssm's "
                       "save_pretrained format: OUT_DIR/config.json (MambaConfig) and OUT_DIR/pytorch_model.bin "
                       "(MambaLMHeadModel's state dict), loadable with MambaLMHeadModel.from_pretrained(OUT_DIR). "
                       "OUT_DIR must be new or empty; a spec mamba_ssm cannot express (e.g. GELU MLPs, sliding "
                       "windows, two different SSD configs) is refused naming the field. Nothing is written into "
                       "RUN_DIR.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--to", required=True, metavar="OUT_DIR", help="a new or empty folder")
    p.add_argument("--format", choices=["mamba_ssm"], default="mamba_ssm", help="the checkpoint format (default and "
                   "only one: mamba_ssm)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("schema", help="JSON Schema of the spec format")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=cmd_schema)

    add_search_parser(sub)
    add_compare_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for spec and run-directory errors and files that cannot be read
    or written, printed to stderr; 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (SpecError, RunDirError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing input, an --out that cannot be written, a full disk
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: running the same command again resumes", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
