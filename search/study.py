"""Creating, resuming and running a search's Optuna study, in one process or several sharing the storage.

Storage is any Optuna RDB URL (default ``sqlite:///<out>/study.db``; ``postgresql://user:pw@host/db`` lets
workers on several machines share one study) or ``journal:<path>`` for an append-only journal file (for
file systems without working locks, e.g. NFS). A study is created once and loaded afterwards, never
deleted: re-running a search resumes it (refused when the search file changed its budget, objectives,
task or seed). ``n_trials`` counts *finished* trials (complete, pruned or failed,
leaving out trials interrupted with Ctrl-C), so a resumed search runs only the missing ones. A trial that
raises is recorded as failed (its error in the ``error`` user attr) and the study goes on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from archspec.fileio import read_json_object, write_atomic
from archspec.search.objective import make_objective
from archspec.search.searchspec import SearchSpec
from archspec.search.space import grid

SQLITE_TIMEOUT_S = 60
"""Seconds a SQLite writer waits for another worker's lock before failing."""

CONNECT_TIMEOUT_S = 10
"""Seconds to wait for a PostgreSQL server to answer a new connection (a host that drops packets would otherwise
hang the search for the operating system's TCP timeout, minutes)."""

LIBPQ_DRIVERS = ("", "psycopg2", "psycopg", "psycopg2cffi")
"""PostgreSQL drivers built on libpq, which take ``connect_timeout``; "" is the default driver."""

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 600
"""A RUNNING trial whose worker sent no heartbeat for this long (it was killed) is marked failed."""

STORAGE_HINT = "expected sqlite:///file.db, postgresql://user:pw@host/db or journal:<file>"

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyTarget:
    """Where a search's study lives and how many finished trials it should end with."""

    storage: str
    study_name: str
    n_trials: int
    timeout_s: float | None


def default_storage_url(out_dir: str | Path) -> str:
    """``sqlite:///<out_dir>/study.db`` with an absolute path."""
    return f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"


def resolve_target(
    search: SearchSpec,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout_s: float | None = None,
) -> StudyTarget:
    """Command-line values first, then the search file's, then the defaults."""
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials: expected at least 1, got {n_trials}")
    return StudyTarget(
        storage=storage or search.storage or default_storage_url(out_dir),
        study_name=study_name or search.study_name or search.name,
        n_trials=n_trials if n_trials is not None else search.n_trials,
        timeout_s=timeout_s if timeout_s is not None else search.timeout_s,
    )


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for ``url``: ``journal:<path>`` or any SQLAlchemy URL (sqlite, postgresql, mysql)."""
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if not path:
            raise ValueError("storage: journal URLs need a file path, e.g. journal:runs/study.log")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
        try:
            return RDBStorage(
                with_installed_driver(url),
                engine_kwargs=engine_kwargs(url),
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
            )
        except ArgumentError as err:  # not a URL, or a database SQLAlchemy has no dialect for
            raise ValueError(f"storage: cannot open the URL ({err}); {STORAGE_HINT}") from None
        except ImportError as err:  # optuna's wrapper of the driver module that failed to import
            driver = getattr(err.__cause__, "name", None) or "its module"
            raise ValueError(f"storage: {public_url(url)} needs a database driver that is not installed "
                             f"({driver})") from None
        except DBAPIError as err:  # no server listening, a refused login, a database file that cannot be opened
            reason = " ".join(str(err.orig).split())  # the driver's message, on one line
            raise ValueError(f"storage: cannot open {public_url(url)}: {reason}") from None


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy ``create_engine`` arguments for a storage URL: SQLite waits ``SQLITE_TIMEOUT_S`` for locks;
    server databases check pooled connections before use, and PostgreSQL through libpq gives up connecting after
    ``CONNECT_TIMEOUT_S``."""
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    backend, _, driver = scheme.partition("+")
    if backend in ("postgresql", "postgres") and driver in LIBPQ_DRIVERS:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def with_installed_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 then picks psycopg 3; use psycopg2 when only
    that one is installed (the ``postgres`` extra installs psycopg2-binary)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def make_sampler(search: SearchSpec, worker: int = 0, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The search's sampler, seeded from (seed, worker, trials already in the study).

    Each worker of a multi-process run and each resumed run draws a different random stream, so none of
    them repeats the values an earlier one drew.
    """
    cfg = search.sampler
    seed = None
    if cfg.seed is not None:
        seed = int(np.random.SeedSequence([cfg.seed, worker, resumed_at]).generate_state(1)[0])
    if cfg.type == "tpe":
        kwargs = {} if cfg.n_startup_trials is None else {"n_startup_trials": cfg.n_startup_trials}
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if cfg.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.type == "nsga2":
        kwargs = {} if cfg.population_size is None else {"population_size": cfg.population_size}
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if cfg.type == "grid":
        return optuna.samplers.GridSampler(grid(search), seed=seed)
    if importlib.util.find_spec("cmaes") is None:
        raise ValueError("sampler: type cmaes needs the 'cmaes' package (pip install cmaes)")
    kwargs = {} if cfg.n_startup_trials is None else {"n_startup_trials": cfg.n_startup_trials}
    return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    """Median or Hyperband over the ``val_checks`` reports of a trial, or none."""
    cfg = search.pruner
    if cfg is None or cfg.type == "none":
        return optuna.pruners.NopPruner()
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    return optuna.pruners.HyperbandPruner(
        min_resource=cfg.min_resource, max_resource=search.val_checks, reduction_factor=cfg.reduction_factor
    )


def open_study(search: SearchSpec, target: StudyTarget, *, worker: int = 0) -> optuna.Study:
    """Create the study or load the existing one; refuses one that ``check_study`` finds incomparable."""
    study = optuna.create_study(
        storage=open_storage(target.storage),
        study_name=target.study_name,
        sampler=make_sampler(search, worker),
        pruner=make_pruner(search),
        directions=[o.direction for o in search.objectives],
        load_if_exists=True,
    )
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = make_sampler(search, worker, resumed_at=existing)
    check_study(study, search, stamp=True)
    return study


def check_study(study: optuna.Study, search: SearchSpec, *, stamp: bool = False) -> None:
    """Refuse (ValueError) a study whose trials ran on another budget, objectives, task or seed than ``search``;
    ``stamp`` records this search's values in a study that has none yet."""
    expected = {
        "budget_flops": search.budget_flops,
        "objectives": [o.metric for o in search.objectives],
        "task": search.data.model_dump(mode="json"),
        "seed": search.seed,
    }
    for key, value in expected.items():
        stored = study.user_attrs.get(key)
        if stored is None:
            if stamp:
                study.set_user_attr(key, value)
        elif stored != value:
            if isinstance(stored, dict) and isinstance(value, dict):
                changed = sorted(k for k in set(stored) | set(value) if stored.get(k) != value.get(k))
                stored, value = ({k: d.get(k) for k in changed} for d in (stored, value))
            raise ValueError(
                f"{search.source or search.name} {key}: study {study.study_name!r} was run with {key} = {stored}, "
                f"this search has {value}; choose another --study-name or --out so the trials stay comparable"
            )


def public_url(url: str) -> str:
    """The storage URL with any password hidden."""
    if url.startswith("journal:"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError as err:
        raise ValueError(f"storage: cannot read the URL ({err}); {STORAGE_HINT}") from None


def check_out_dir(out_dir: Path, target: StudyTarget) -> None:
    """Raise ValueError when ``out_dir/study.json`` names another study (trial n trains in ``out_dir/trials/n``,
    so two studies must not share an output folder) or cannot be read; the folder is left as it is."""
    marker = out_dir / "study.json"
    if not marker.exists():
        return
    mine = {"study_name": target.study_name, "storage": public_url(target.storage)}
    theirs = _read_marker(marker, mine)
    if theirs != mine:
        raise ValueError(
            f"out_dir: {out_dir} holds study {theirs.get('study_name')!r} in {theirs.get('storage')}, not "
            f"{mine['study_name']!r} in {mine['storage']}; use another --out"
        )


def _read_marker(marker: Path, mine: dict[str, str]) -> dict[str, Any]:
    """The ``{"study_name", "storage"}`` record of ``study.json``; ValueError naming the file (and line or field)
    when it is damaged, with how to recover: delete it if the folder is the one of ``mine``, else use another."""
    hint = (f"it records which study owns {marker.parent}: if that is study {mine['study_name']!r} in "
            f"{mine['storage']}, delete it (the search writes it again), else use another --out")
    record = read_json_object(marker, "with study_name and storage", hint)
    for key in mine:
        if not isinstance(record.get(key), str):
            found = f"got {record[key]!r:.40}" if key in record else "missing"
            raise ValueError(f"{marker} {key}: expected a string, {found}; {hint}")
    return record


def claim_out_dir(out_dir: Path, target: StudyTarget) -> None:
    """Mark ``out_dir`` as the folder of this study (``study.json``) after ``check_out_dir``."""
    check_out_dir(out_dir, target)
    marker = out_dir / "study.json"
    if marker.exists():
        return
    write_atomic(marker, json.dumps({"study_name": target.study_name, "storage": public_url(target.storage)},
                                    indent=2) + "\n")


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Finished (complete, pruned or failed) and not interrupted by the user."""
    return trial.state in COUNTED_STATES and not trial.user_attrs.get("interrupted", False)


def finished_trials(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``."""
    return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False, states=COUNTED_STATES))


class StopAtTotal:
    """Study callback: stop once the study holds ``n_trials`` finished trials (from any worker or run)."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if finished_trials(study) >= self.n_trials:
            study.stop()


def run_search(
    search: SearchSpec,
    out_dir: str | Path,
    *,
    target: StudyTarget | None = None,
    workers: int = 1,
    progress_bar: bool = True,
    accelerator: str = "auto",
) -> optuna.Study:
    """Run (or resume) the search until the study holds ``target.n_trials`` finished trials or time runs out.

    ``workers`` > 1 starts that many processes on this machine, each running its share of the missing
    trials against the same storage (SQLite serialises their writes; use PostgreSQL for many workers or
    machines); on a machine with several GPUs, worker i trains on GPU i mod count (``worker_gpus``). Workers
    started separately (other machines) stop when the study reaches n_trials; each may
    finish the trial it is running, so the total can exceed n_trials by up to one trial per extra worker.
    """
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    out_dir = Path(out_dir)
    target = target or resolve_target(search, out_dir)
    check_out_dir(out_dir, target)
    study = open_study(search, target)
    claim_out_dir(out_dir, target)  # only once the storage opened and the study matched this search
    missing = target.n_trials - finished_trials(study)
    if missing <= 0:
        log.info("study %r already holds %d finished trials", target.study_name, finished_trials(study))
        return study
    workers = min(workers, missing)
    if workers == 1:
        study.optimize(
            make_objective(search, out_dir, accelerator=accelerator),
            n_trials=missing,
            timeout=target.timeout_s,
            catch=(Exception,),
            callbacks=[StopAtTotal(target.n_trials)],
            gc_after_trial=True,
            show_progress_bar=progress_bar,
        )
        return study
    _run_workers(search, out_dir, target, study, missing, workers, progress_bar, accelerator)
    return study


def _run_workers(
    search: SearchSpec,
    out_dir: Path,
    target: StudyTarget,
    study: optuna.Study,
    missing: int,
    workers: int,
    progress_bar: bool,
    accelerator: str,
) -> None:
    shares = [missing // workers + (i < missing % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    gpus = worker_gpus(workers, accelerator)
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=_worker_main,
            args=(search, out_dir, target, i, share, threads, accelerator, gpu),
            name=f"archspec-search-worker-{i}",
        )
        for i, (share, gpu) in enumerate(zip(shares, gpus))
    ]
    if any(gpu is not None for gpu in gpus):
        log.info("search workers on GPUs %s", ", ".join(f"{i}: {gpu}" for i, gpu in enumerate(gpus)))
    for proc in procs:
        proc.start()
    bar = _progress(target.n_trials, finished_trials(study)) if progress_bar else None
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            if bar is not None:
                bar.n = finished_trials(study)
                bar.refresh()
    finally:
        for proc in procs:
            proc.join()
        if bar is not None:
            bar.n = finished_trials(study)
            bar.close()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"search worker(s) {', '.join(failed)} exited with an error (see their output above)")


def worker_gpus(workers: int, accelerator: str) -> list[str | None]:
    """The GPU each worker process trains on: worker i gets the (i mod count)-th visible GPU (the ids listed in
    CUDA_VISIBLE_DEVICES when set, else 0..count-1), so workers spread over a multi-GPU machine instead of all
    using the first one; None for every worker with accelerator "cpu" or without CUDA."""
    import torch

    count = torch.cuda.device_count() if accelerator != "cpu" else 0
    if count == 0:
        return [None] * workers
    listed = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    visible = listed[:count] if listed else [str(k) for k in range(count)]
    return [visible[i % len(visible)] for i in range(workers)]


def _progress(total: int, done: int):  # noqa: ANN202 - tqdm's type
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="trials", unit="trial")


def _worker_main(
    search: SearchSpec, out_dir: Path, target: StudyTarget, worker: int, n_trials: int, threads: int, accelerator: str,
    gpu: str | None,
) -> None:
    """One worker process: its own sampler seed, ``n_trials`` trials, stopping early when the study is full; on
    ``gpu`` (a CUDA_VISIBLE_DEVICES id, set before CUDA starts in this process) when given."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    from archspec.search.cli import quiet_training_logs

    torch.set_num_threads(threads)
    quiet_training_logs()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(search, target, worker=worker)
    study.optimize(
        make_objective(search, out_dir, accelerator=accelerator),
        n_trials=n_trials,
        timeout=target.timeout_s,
        catch=(Exception,),
        callbacks=[StopAtTotal(target.n_trials)],
        gc_after_trial=True,
    )
