"""The ``archspec search``, ``archspec compare`` and ``archspec bench`` subcommands.

Each ``add_*_parser(subparsers)`` adds one subcommand whose ``func(args)`` returns the exit status; spec
mistakes propagate as SpecError, which ``archspec.cli.main`` prints without a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from archspec.cliargs import add_accelerator, int_list, parse_flops, positive_float, positive_int


def quiet_training_logs() -> None:
    """Keep Lightning's per-run banners and data-loader hints out of a search's output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # lightning's pytree shim
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)


# --------------------------------------------------------------------------------------------- search
def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``archspec search SEARCH.yaml [--out DIR] [--n-trials N] [--timeout S] [--storage URL] ...``"""
    p = subparsers.add_parser(
        "search",
        help="Optuna search over hybrid architectures at a fixed training-FLOP budget",
        description="Run (or resume) the search described by SEARCH.yaml and write its report: trials.csv/json, "
        "best.yaml (or pareto/ for several objectives) and PNG plots in --out.",
    )
    p.add_argument("search", metavar="SEARCH.yaml")
    p.add_argument("--out", default=None, help="output folder (default runs/<search name>)")
    p.add_argument("--n-trials", type=positive_int, default=None,
                   help="finished trials the study should hold (default: the file's n_trials)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S", help="stop starting trials after S s")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: sqlite:///file.db, postgresql://user:pw@host/db or journal:<file> "
                   "(default sqlite:///<out>/study.db)")
    p.add_argument("--study-name", default=None, help="default: the file's study_name, else its name")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes on this machine, all sharing the storage (default: the file's workers)")
    p.add_argument("--report-only", action="store_true", help="write the report of the stored study, run nothing")
    add_accelerator(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_search)
    return p


def cmd_search(args: argparse.Namespace) -> int:
    import optuna

    from archspec.search.report import write_report
    from archspec.search.searchspec import load_search
    from archspec.search.study import (
        check_out_dir, check_study, finished_trials, open_storage, public_url, resolve_target, run_search,
    )
    from archspec.training import check_devices

    check_devices(args.accelerator)  # before any trial: each would fail the same way
    quiet_training_logs()
    if not args.no_progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar shows the trials and the best
    search = load_search(args.search)
    out = Path(args.out or Path("runs") / search.name)
    target = resolve_target(
        search, out, storage=args.storage, study_name=args.study_name, n_trials=args.n_trials, timeout_s=args.timeout
    )
    if args.report_only:
        study = None
        sqlite_path = target.storage[len("sqlite:///"):] if target.storage.startswith("sqlite:///") else None
        if sqlite_path is None or Path(sqlite_path).exists():  # opening a missing file would create an empty one
            try:
                study = optuna.load_study(study_name=target.study_name, storage=open_storage(target.storage))
            except KeyError:
                pass
            except ValueError as err:  # a storage URL that does not open
                print(f"error: {err}", file=sys.stderr)
                return 2
        if study is None:
            print(f"error: no study {target.study_name!r} in {public_url(target.storage)}", file=sys.stderr)
            return 2
        try:
            check_out_dir(out, target)  # the report must not replace the one of another study
            check_study(study, search)
        except ValueError as err:  # another study's folder or study.json damaged; another budget, task, seed, ...
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        try:
            study = run_search(
                search, out, target=target, workers=args.workers or search.workers, progress_bar=not args.no_progress,
                accelerator=args.accelerator,
            )
        except ValueError as err:  # a study or output folder that does not match this search
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        report = write_report(study, search, out)
    except OSError as err:  # a full disk, an --out that cannot be written: the trials themselves are stored
        from archspec.fileio import os_error_text

        print(f"error: {os_error_text(err)}; the report is incomplete, but the study's "
              f"{finished_trials(study)} finished trials are safe in study {study.study_name!r} in "
              f"{public_url(target.storage)}; once that is fixed, `{report_command(args, out)}` rewrites the report",
              file=sys.stderr)
        return 2
    print(summary(study, search, report, finished_trials(study)))
    return 0


def report_command(args: argparse.Namespace, out: Path) -> str:
    """The ``archspec search ... --report-only`` command line that rewrites the report of this search's study
    (with its --storage, password hidden, and --study-name when they were given)."""
    from archspec.search.study import public_url

    words = ["archspec", "search", args.search, "--out", str(out)]
    if args.storage:
        words += ["--storage", public_url(args.storage)]
    if args.study_name:
        words += ["--study-name", args.study_name]
    return shlex.join([*words, "--report-only"])


def summary(study: Any, search: Any, report: Any, finished: int) -> str:
    """A few lines: trial counts by state, the best trial(s), the files written."""
    from collections import Counter

    from archspec.search.report import trial_rows

    rows = trial_rows(study, search)
    states = Counter(r["state"] for r in rows)
    lines = [f"study {study.study_name!r}: {finished} finished trials ("
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ")"]
    metrics = [o.metric for o in search.objectives]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if len(metrics) == 1 and complete:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, {metrics[0]} = {best.value:.4g}, "
                     f"layout {best.user_attrs.get('layout')}, {best.user_attrs.get('params'):,} params")
    elif complete:
        lines.append(f"Pareto front: {len(study.best_trials)} trials of {len(complete)} complete")
    for path in [report.table_csv, report.table_json, *report.best_specs[:3], *report.plots]:
        lines.append(f"  wrote {path}")
    if len(report.best_specs) > 3:
        lines.append(f"  ... and {len(report.best_specs) - 3} more Pareto specs in {report.best_specs[0].parent}")
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- compare
def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``archspec compare A.yaml B.yaml ... --budget FLOPS [--task FILE] [--seed N] [--out DIR]``"""
    p = subparsers.add_parser(
        "compare",
        help="train several specs on the same data and FLOP budget; compare loss, speed, memory, state",
        description="Each spec trains on the same task (the first spec's data section or --task) with the same "
        "seed for the same training FLOPs; writes compare.md/csv/json and loss-vs-FLOPs plots in --out.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--budget", type=parse_flops, required=True, metavar="FLOPS",
                   help="training FLOPs per spec (1e12, 2.5T)")
    p.add_argument("--task", default=None, metavar="FILE",
                   help="YAML with a data config (task: ...) or a spec whose data section to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-checks", type=positive_int, default=8, help="validations per run (equal FLOP intervals)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    add_accelerator(p)
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (faster start; on the CPU peak memory then accumulates across specs)")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    from archspec.search.compare import RunFailed, compare, load_task
    from archspec.training import check_devices

    check_devices(args.accelerator)
    quiet_training_logs()
    task = load_task(args.task) if args.task else None
    try:  # a RunDirError (runs of another budget, task or seed in --out) is printed by archspec.cli
        result = compare(
            args.specs, budget_flops=args.budget, out_dir=args.out, task=task, seed=args.seed,
            val_checks=args.val_checks, accelerator=args.accelerator, isolate=not args.in_process,
        )
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------- bench
def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``archspec bench [--seq-lens 512,...] [--d-model D] [--tokens T] [--out DIR] [--allow-cpu]``"""
    from archspec.search.bench import DEFAULT_SEQ_LENS

    p = subparsers.add_parser(
        "bench",
        help="time the SSD mixer against attention over sequence lengths at equal width (GPU)",
        description="Forward and forward+backward milliseconds of Mamba2Mixer and Attention (flash-attn if "
        "installed, else SDPA) in bf16 at the same d_model and the same tokens per call; writes bench.md/csv/json "
        "and a crossover plot.",
    )
    p.add_argument("--seq-lens", type=int_list, default=list(DEFAULT_SEQ_LENS), metavar="L1,L2,...")
    p.add_argument("--d-model", type=positive_int, default=2048)
    p.add_argument("--tokens", type=positive_int, default=65536, help="batch x seqlen per call")
    p.add_argument("--d-state", type=positive_int, default=128)
    p.add_argument("--head-dim", type=positive_int, default=64, help="SSD head dim")
    p.add_argument("--attn-head-dim", type=positive_int, default=128)
    p.add_argument("--core", action="store_true",
                   help="time the bare ssd_scan against causal attention, without the mixers' projections")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--allow-cpu", action="store_true", help="tiny float32 smoke run on the CPU (timings meaningless)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from archspec.search.bench import BenchConfig, CPURefused, run_bench

    config = BenchConfig(
        seq_lens=tuple(args.seq_lens), d_model=args.d_model, tokens=args.tokens, d_state=args.d_state,
        head_dim=args.head_dim, attn_head_dim=args.attn_head_dim, core=args.core,
    )
    try:
        result = run_bench(config, out_dir=args.out, allow_cpu=args.allow_cpu)
    except CPURefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    return 0
