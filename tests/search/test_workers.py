"""Several worker processes share one study: on SQLite always, on a real PostgreSQL server when installed."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import optuna
import pytest

from archspec.search.searchspec import load_search
from archspec.search.study import _worker_main, finished_trials, open_storage, resolve_target, run_search, worker_gpus

from search_helpers import tiny_search, write_yaml


def _postgres_bin_dir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")) and os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(found)) if found and shutil.which("initdb", path=os.path.dirname(
        os.path.realpath(found))) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port (run as the postgres user when we are root)."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl, initdb) installed")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra) is needed to talk to PostgreSQL")
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="archspec-pg-")
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            import pwd

            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log, port = os.path.join(root, "data"), os.path.join(root, "server.log"), _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    run(os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE archspec_search")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/archspec_search"
    finally:
        run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _two_workers_share_one_study(tmp_path, storage: str | None) -> None:
    search = load_search(write_yaml(tmp_path / "s.yaml", tiny_search(
        sampler={"type": "random", "seed": 5},
        space={"attention_ratio": {"low": 0.0, "high": 0.5, "step": 0.5},
               "lr": {"low": 1e-3, "high": 1e-2, "path": "training.lr"}},  # no two trials alike
    )))
    out = tmp_path / "out"
    target = resolve_target(search, out, storage=storage, n_trials=4)
    run_search(search, out, target=target, workers=2, progress_bar=False)
    study = optuna.load_study(study_name="tiny", storage=open_storage(target.storage))
    trials = study.get_trials()
    assert len(trials) == 4 and finished_trials(study) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.user_attrs.get("error") for t in trials]
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    for t in trials:
        assert (out / "trials" / str(t.number) / "result.json").exists()


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    _two_workers_share_one_study(tmp_path, storage=None)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_worker_processes_share_one_postgresql_study(tmp_path, postgres_url):
    _two_workers_share_one_study(tmp_path, storage=postgres_url)


@pytest.mark.parametrize(("visible", "count", "expected"), [
    (None, 4, ["0", "1", "2", "3", "0"]),
    ("2,5", 2, ["2", "5", "2", "5", "2"]),
    (None, 1, ["0"] * 5),
])
def test_workers_spread_over_the_visible_gpus(monkeypatch, visible, count, expected):
    monkeypatch.setattr("torch.cuda.device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert worker_gpus(5, "auto") == expected
    assert worker_gpus(5, "gpu") == expected
    assert worker_gpus(5, "cpu") == [None] * 5


def test_workers_get_no_gpu_without_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert worker_gpus(3, "auto") == [None, None, None]


def test_each_worker_process_is_started_on_its_gpu(tmp_path, monkeypatch):
    """run_search hands worker i its GPU; the worker sets CUDA_VISIBLE_DEVICES to it before CUDA starts."""
    started = []

    class FakeProcess:
        def __init__(self, target, args, name):
            started.append(args)
            self.name, self.exitcode = name, 0

        def start(self):
            pass

        def is_alive(self):
            return False

        def join(self):
            pass

    class FakeContext:
        Process = FakeProcess

    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    monkeypatch.setattr("multiprocessing.get_context", lambda method: FakeContext)
    search = load_search(write_yaml(tmp_path / "search.yaml", tiny_search(n_trials=3)))
    run_search(search, tmp_path / "out", workers=3, progress_bar=False)
    assert [args[-1] for args in started] == ["3", "7", "3"]

    class Stop(Exception):
        pass

    def record_and_stop(*args, **kwargs):
        seen["visible"] = os.environ["CUDA_VISIBLE_DEVICES"]
        raise Stop

    seen = {}
    monkeypatch.setattr("archspec.search.study.open_study", record_and_stop)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    with pytest.raises(Stop):
        _worker_main(*started[1])
    assert seen["visible"] == "7"
