"""The ``archspec`` command: validate, summary, train, schema, and search / compare / bench from archspec.search.

Spec mistakes (SpecError), refused run directories and files that cannot be read or written (OSError) are printed
as ``error: <message>`` on stderr without a traceback, exit status 2. FLOP arguments accept plain numbers
(``1e12``) and SI suffixes (``2.5T``, ``300G``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from archspec.cliargs import non_negative_int, parse_flops, positive_int
from archspec.errors import SpecError
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
    from archspec.training import RunDirError, train

    spec = load_spec(args.spec, args.overrides)
    out_dir = args.out or os.path.join("runs", spec.name)
    try:
        result = train(spec, out_dir=out_dir, max_steps=args.max_steps, budget_flops=args.budget, seed=args.seed,
                       accelerator=args.accelerator, resume=not args.no_resume, progress_bar=not args.no_progress)
    except RunDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    p.add_argument("--accelerator", choices=["cpu", "gpu", "auto"], default="auto")
    p.add_argument("--no-resume", action="store_true", help="start over instead of continuing from last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_set(p)
    p.set_defaults(func=cmd_train)

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
    except SpecError as exc:
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
