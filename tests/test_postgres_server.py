"""A team server on PostgreSQL: `deepmine server` on a real, throwaway PostgreSQL cluster, a
parallel sweep recorded through it, and `deepmine compare` reading the sweep back.

The cluster is made with PostgreSQL's own tools (`initdb`, `pg_ctl`) in a temporary folder, on
a free port, with password logins; PostgreSQL refuses to run as root, so when the tests run as
root (as CI does) the cluster runs as the unprivileged `postgres` user (Debian's package makes
it; `nobody` otherwise). The database and its user are created with the very commands the
README shows. Missing PostgreSQL binaries fail the tests with the line that installs them:
nothing here is skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from test_ui import free_port

from conftest import deepmine_env, one_line_error, run_cli

#: a real PostgreSQL cluster and a server on it: the suite's second stage (`make test`)
pytestmark = pytest.mark.cluster

INSTALL = "`apt-get install postgresql` (or `make test`, which does)"
PARENT = "mlflow.parentRunId"
#: what every child run records at least (debug=fast logs every one of its 5 train steps)
CORE_METRICS = {"train/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"}


def postgres_bindir() -> Path:
    """The folder of `initdb` and `pg_ctl`: Debian keeps them off PATH, in
    /usr/lib/postgresql/<major>/bin."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout
        candidates.append(Path(out.strip()))
    majors = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += majors
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    pytest.fail(f"PostgreSQL's initdb and pg_ctl are not installed: {INSTALL}", pytrace=False)


def cluster_owner() -> str | None:
    """The unprivileged user that runs the cluster when the tests run as root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


@dataclass
class Cluster:
    bindir: Path
    folder: Path
    port: int
    owner: str | None
    superuser: str
    superuser_password: str
    password: str  # of the `mlflow` user, the server's

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        """A PostgreSQL tool, as the cluster's owner."""
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        return subprocess.run(
            [*prefix, str(self.bindir / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    def psql(self, sql: str, user: str | None = None, db: str = "postgres") -> str:
        """`psql` over TCP with a password, as an admin (the superuser, by default) would."""
        password = self.superuser_password if user is None else self.password
        server = ["-h", "127.0.0.1", "-p", str(self.port), "-U", user or self.superuser]
        proc = subprocess.run(
            [str(self.bindir / "psql"), *server, "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": password},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def uri(self, user: str = "mlflow", password: str | None = None, db: str = "mlflow") -> str:
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def processes(self) -> list[psutil.Process]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            postmaster = psutil.Process(int(pid_file.read_text().splitlines()[0]))
            return [postmaster, *postmaster.children(recursive=True)]
        return []


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    bindir, owner = postgres_bindir(), cluster_owner()
    # not under pytest's tmp_path: root's is closed to other users, and the socket's path must
    # stay short (Unix sockets: 107 bytes)
    folder = Path(tempfile.mkdtemp(prefix="deepmine-pg-"))
    pg = Cluster(
        bindir, folder, free_port(), owner, "admin", secrets.token_hex(8), secrets.token_hex(8)
    )
    (folder / "socket").mkdir()
    pwfile = folder / "superuser-password"
    pwfile.write_text(pg.superuser_password + "\n")
    if owner:
        subprocess.run(["chown", "-R", f"{owner}:", str(folder)], check=True)
    folder.chmod(0o700)
    started = False
    try:
        init = pg.run(
            "initdb", "-D", str(pg.data), "-U", pg.superuser, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        pwfile.unlink()
        options = (
            f"-k {folder / 'socket'} -p {pg.port} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = pg.run(
            "pg_ctl", "-D", str(pg.data), "-l", str(folder / "postgres.log"), "-w", "-o", options,
            "start",
        )  # fmt: skip
        started = True
        assert start.returncode == 0, start.stdout + start.stderr + _log(folder)
        # the README's commands: a user for the server and a database it owns
        pg.psql(f"CREATE USER mlflow WITH PASSWORD '{pg.password}'")
        pg.psql("CREATE DATABASE mlflow OWNER mlflow")
        yield pg
    finally:
        processes = pg.processes()
        if started:
            stop = pg.run("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "stop")
        _, alive = psutil.wait_procs(processes, timeout=30)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)
        if started:
            assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not alive, f"PostgreSQL processes outlived pg_ctl stop: {alive}"


def _log(folder: Path) -> str:
    log = folder / "postgres.log"
    return log.read_text()[-3000:] if log.exists() else ""


@dataclass
class Server:
    pid: int
    url: str
    artifacts: Path
    log: Path
    cluster: Cluster


def _wait_healthy(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"deepmine server exited with {server.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"deepmine server not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory) -> Server:
    path = tmp_path_factory.mktemp("pg-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = path / "server.log"
    artifacts = path / "artifacts"
    with log.open("w") as out:
        store = ["--backend-store-uri", cluster.uri(), "--artifacts-destination", str(artifacts)]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepmine",
                "server",
                *store,
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=path,
            env=deepmine_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tree: list[psutil.Process] = []
    try:
        _wait_healthy(process, url, log)
        tree = psutil.Process(process.pid).children(recursive=True)
        yield Server(process.pid, url, artifacts, log, cluster)
    finally:
        # SIGTERM to `deepmine server` alone, as `kill <pid>` would: it stops its whole group
        with contextlib.suppress(psutil.Error):
            tree = tree or psutil.Process(process.pid).children(recursive=True)
        process.terminate()
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=20)
        survivors = []
        for p in alive:
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(" ".join(p.cmdline()[:4]))
                p.kill()
        assert not survivors, f"outlived deepmine server: {survivors}"
        assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """A 4-job sweep run by the joblib launcher (2 jobs at a time) into the server."""
    path = tmp_path_factory.mktemp("pg-sweep")
    proc = run_cli(
        "train", "-m", "launcher=joblib", "debug=fast", "data=digits", "seed=0,1,2,3",
        f"paths.log_dir={path / 'logs'}", f"logger.tracking_uri={server.url}",
        cwd=path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("default")
    runs = client.search_runs([experiment.experiment_id])
    return path, proc, client, experiment, runs


def test_a_joblib_sweep_is_recorded_whole_in_postgresql(server, sweep):
    path, _, client, _, runs = sweep
    parents = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2", "3"]

    # every metric on every child, every step of the logged history
    names = set().union(*(c.data.metrics for c in children))
    assert names >= CORE_METRICS
    for child in children:
        assert set(child.data.metrics) == names, child.info.run_id
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 5

    # the runs are rows of the PostgreSQL database, not of some file beside the client
    stored = server.cluster.psql("SELECT run_uuid FROM runs", user="mlflow", db="mlflow")
    assert set(stored.split()) == {r.info.run_id for r in runs}
    assert not (path / "mlflow.db").exists() and not (path / "mlartifacts").exists()


def test_artifacts_travel_through_the_server(server, sweep):
    _, _, client, experiment, runs = sweep
    for run in runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    child = next(r for r in runs if PARENT in r.data.tags)
    top = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"config", "checkpoints", "metrics.json"} <= top
    # ...and land in the server's destination: <experiment id>/<run id>/artifacts/
    folder = server.artifacts / experiment.experiment_id / child.info.run_id / "artifacts"
    assert (folder / "metrics.json").is_file()
    assert list((folder / "checkpoints").glob("*.ckpt"))


def test_the_database_password_is_never_printed_nor_on_a_command_line(server, sweep):
    password = server.cluster.password
    log = server.log.read_text()
    assert "MLflow tracking server on postgresql://mlflow:***@127.0.0.1" in log
    assert "logger.tracking_uri=http://127.0.0.1:" in log
    assert password not in log
    # the server's processes get the password from their environment (PGPASSWORD), not from
    # their command line, which every user of the machine can read
    commands = [" ".join(p.cmdline()) for p in psutil.Process(server.pid).children(recursive=True)]
    assert any("-m mlflow server --backend-store-uri" in c for c in commands), commands
    assert not [c for c in commands if password in c]


def test_compare_reads_the_sweep_from_the_server(server, sweep):
    path, _, _, _, runs = sweep
    (parent,) = [r for r in runs if PARENT not in r.data.tags]
    proc = run_cli("compare", "--sweep", parent.info.run_id, "--tracking-uri", server.url, cwd=path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"\b4 runs\b", proc.stdout), proc.stdout
    # the only group holds the four seeds: its n column reads 4
    assert re.search(r"│\s*1\s*│[^│\n]*│\s*4\s*│", proc.stdout), proc.stdout


def test_a_wrong_password_or_a_missing_database_is_one_line(cluster, tmp_path):
    proc = run_cli(
        "server", "--backend-store-uri", cluster.uri(password="not-the-password"), cwd=tmp_path
    )
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "password authentication failed" in line and "not-the-password" not in line
    assert "postgresql://mlflow:***@127.0.0.1" in line
    assert "Fix: check the user and password" in line

    proc = run_cli("server", "--backend-store-uri", cluster.uri(db="nowhere"), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert 'database "nowhere" does not exist' in line and cluster.password not in line
    assert "Fix: create it" in line


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    closed = free_port()
    proc = run_cli(
        "server", "--backend-store-uri", f"postgresql://mlflow:pw@127.0.0.1:{closed}/mlflow",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(
        f"error: cannot connect to the database postgresql://mlflow:***@127.0.0.1:{closed}/mlflow"
    )
    assert ":pw@" not in proc.stderr
    assert "Fix: start the database server" in one_line_error(proc)


@pytest.mark.parametrize(
    ("uri", "problem", "fix"),
    [
        (None, "needs the database that keeps the runs", "e.g. `deepmine server --backend"),
        ("file:///srv/mlruns", "has scheme 'file'", "e.g. `deepmine server --backend"),
        ("sqlite:///relative.db", "is relative to the current directory", "use an absolute"),
        ("mssql+pymssql://sa@127.0.0.1/mlflow", "no module 'pymssql'", "`pip install pymssql`"),
        ("postgresql+nodriver://u@h/db", "names a driver SQLAlchemy does not know", "plain"),
    ],
)
def test_a_backend_store_uri_that_cannot_work_is_refused(uri, problem, fix):
    from deepmine.errors import DeepmineError
    from deepmine.tracking.server import check_backend

    if uri and "pymssql" in uri:
        with contextlib.suppress(ImportError):
            import pymssql  # noqa: F401

            pytest.fail("this case needs a driver that is not installed, and pymssql is")
    with pytest.raises(DeepmineError) as refused:
        check_backend(uri)
    assert problem in refused.value.problem and fix in refused.value.fix
