"""One Optuna study worked by several `deepmine train -m` processes (`hydra.sweeper.shared=true`)
against a real PostgreSQL, recorded through a real `deepmine server`: the workers split the
trials, every trial is a child of one parent run, and a later process finds nothing to run.

Which worker gets which trial depends on timing; to make sure both get some, the first worker
seen running a trial is frozen (SIGSTOP, as a slow machine would be) until the other one runs a
trial too. Nothing here waits on a clock to assert anything."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from test_postgres_server import cluster, server  # noqa: F401  (the fixtures, module scope)

from conftest import deepmine_env, one_line_error, run_cli

pytestmark = pytest.mark.cluster

PARENT = "mlflow.parentRunId"
EXPERIMENT = "shared_search"
#: the same command for every worker: a one-key space, tiny trials (two epochs of a few
#: batches), the study shared through PostgreSQL, the runs through the team server
SEARCH = (
    "hydra/sweeper=optuna",
    "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
    "debug=fast",
    "data=digits",
    "trainer.max_epochs=2",
    "hydra.sweeper.shared=true",
    f"experiment_name={EXPERIMENT}",
)


@dataclass
class OptunaDB:
    url: str  # what the workers get: postgresql://mlflow@127.0.0.1:<port>/optuna
    password: str  # what they get it with: PGPASSWORD, as the server does (no password in ps)
    read: str  # what this test reads the studies with

    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password}


@pytest.fixture(scope="module")
def optuna_db(cluster) -> OptunaDB:  # noqa: F811
    """The studies' database, beside MLflow's in the same cluster, owned by the same user. The
    test reads it through psycopg2 named: SQLAlchemy 2.1 takes a bare postgresql:// for
    psycopg 3 (the workers name it themselves)."""
    cluster.psql("CREATE DATABASE optuna OWNER mlflow")
    url = f"postgresql://mlflow@127.0.0.1:{cluster.port}/optuna"
    read = cluster.uri(db="optuna").replace("postgresql://", "postgresql+psycopg2://", 1)
    return OptunaDB(url, cluster.password, read)


@dataclass
class Worker:
    proc: subprocess.Popen
    out: Path
    err: Path

    @property
    def name(self) -> str:
        """As the worker names itself: host:pid."""
        return f"{socket.gethostname()}:{self.proc.pid}"

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.out.read_text() + self.err.read_text()


def arguments(storage: str, server_url: str, study: str, n_trials: int, path: Path) -> list[str]:
    return [
        "train",
        "-m",
        *SEARCH,
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}",
        f"logger.tracking_uri={server_url}",
        f"paths.log_dir={path / 'logs'}",
    ]


def start_worker(argv: list[str], path: Path, db: OptunaDB) -> Worker:
    """`python -m deepmine train -m ...` in its own working directory and log folder."""
    path.mkdir(parents=True, exist_ok=True)
    out, err = path / "stdout", path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepmine", *argv],
            cwd=path,
            env=deepmine_env(**db.env()),
            stdout=stdout,
            stderr=stderr,
        )
    return Worker(proc, out, err)


def trials(db: OptunaDB, study: str) -> list[tuple[int, str, str | None]]:
    """(number, state, worker) of the study's trials, read with plain SQL: opening the storage
    with Optuna here would create its tables, racing the workers that are creating them."""
    import sqlalchemy

    query = sqlalchemy.text(
        "SELECT t.number, t.state, a.value_json FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "LEFT JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key = 'deepmine.optuna.worker' "
        "WHERE s.study_name = :study ORDER BY t.number"
    )
    engine = sqlalchemy.create_engine(db.read, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, {"study": study}).all()
    except sqlalchemy.exc.ProgrammingError:  # no tables yet
        return []
    finally:
        engine.dispose()
    return [(n, str(s).split(".")[-1], w.strip('"') if w else None) for n, s, w in rows]


def running_in(db: OptunaDB, study: str, workers: list[Worker], names: set[str]) -> str:
    """The first worker among `names` seen running a trial (the workers checked alive)."""
    deadline = time.monotonic() + 240
    while True:
        for worker in workers:
            if worker.proc.poll() is not None:
                code, text = worker.finish()
                pytest.fail(f"worker {worker.name} exited with {code}:\n{text[-3000:]}")
        for _, state, name in trials(db, study):
            if state == "RUNNING" and name in names:
                return name
        assert time.monotonic() < deadline, "no worker got a trial running"
        time.sleep(0.2)


@contextlib.contextmanager
def frozen(worker: Worker):
    """The worker stopped (SIGSTOP) for the block, as a machine that stalls would be."""
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)


def summary_rows(client, run_id: str, folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    path = client.download_artifacts(run_id, "summary/trials.csv", str(folder))
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_two_workers_split_one_study_and_a_third_finds_it_complete(
    server,  # noqa: F811
    optuna_db,
    tmp_path,
):
    from mlflow import MlflowClient

    study_name, n_trials = "shared_digits", 6
    argv = arguments(optuna_db.url, server.url, study_name, n_trials, tmp_path)
    # started at the same instant: both race to create the study (and its tables)
    workers = [start_worker(argv, tmp_path / name, optuna_db) for name in ("a", "b")]
    try:
        first_name = running_in(optuna_db, study_name, workers, {w.name for w in workers})
        first = next(w for w in workers if w.name == first_name)
        other = next(w for w in workers if w is not first)
        with frozen(first):
            running_in(optuna_db, study_name, workers, {other.name})
        ended = [w.finish() for w in workers]
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.proc.pid, signal.SIGCONT)
                worker.proc.kill()
    for code, text in ended:
        assert code == 0, text[-3000:]

    # the study: n_trials counted trials, each run once; a trial asked past the budget by a
    # worker racing for the last slot is marked surplus and was never run
    study = optuna.load_study(study_name=study_name, storage=optuna_db.read)
    counted = [t for t in study.trials if not t.user_attrs.get("deepmine.surplus")]
    surplus = [t for t in study.trials if t.user_attrs.get("deepmine.surplus")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * n_trials
    assert all(t.state.name == "FAIL" for t in surplus)
    by_trial = {t.number: t.user_attrs["deepmine.optuna.worker"] for t in counted}
    assert set(by_trial.values()) == {w.name for w in workers}, by_trial
    # each worker's sampler drew its own seed: no two trials at the same point
    assert len({t.params["optimizer.lr"] for t in counted}) == n_trials

    # MLflow: one parent, keyed by the study, FINISHED; one child per trial, each once
    client = MlflowClient(tracking_uri=server.url)
    runs = _study_runs(client, study_name)
    parents = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    (parent,) = parents
    assert parent.data.tags["deepmine.optuna.study"] == study_name
    assert parent.info.status == "FINISHED"
    assert set(parent.data.tags["deepmine.optuna.workers"].split()) == set(by_trial.values())
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    numbers = sorted(int(c.data.tags["deepmine.optuna.trial"]) for c in children)
    assert numbers == sorted(by_trial), "each trial once among the children"
    for child in children:
        trial = int(child.data.tags["deepmine.optuna.trial"])
        assert child.info.status == "FINISHED"
        assert child.data.tags["deepmine.optuna.worker"] == by_trial[trial]
        assert child.data.tags["deepmine.optuna.study"] == study_name
    # whoever closed it wrote the summary of every trial, its own and the other's
    rows = summary_rows(client, parent.info.run_id, tmp_path / "summary")
    assert sorted(int(r["job"]) for r in rows) == sorted(by_trial)
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    assert {r["status"] for r in rows} == {"FINISHED"}
    closed = "this worker, the last, wrote the summary and closed the parent run"
    closers = [text for _, text in ended if closed in text]
    assert closers, "no worker closed the parent"
    for _, text in ended:
        if text not in closers:  # left while the other still ran, and said who closes
            assert "this worker is done; trials still run in" in text
    # the database password (PGPASSWORD, as a team would pass it) is nowhere printed or recorded
    password = optuna_db.password
    assert all(password not in text for _, text in ended)
    found = f"value LIKE '%{password}%'"
    stored = server.cluster.psql(
        f"SELECT (SELECT count(*) FROM tags WHERE {found}) + "
        f"(SELECT count(*) FROM params WHERE {found})",
        user="mlflow",
        db="mlflow",
    )
    assert stored.strip() == "0"

    # a third process, same command, after the study is complete: nothing runs, nothing changes
    third = run_cli(*argv, cwd=_fresh(tmp_path / "c"), **optuna_db.env())
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"study {study_name} is complete ({n_trials} of {n_trials} trials); nothing to run" in (
        third.stdout
    )
    after = {
        r.info.run_id: (r.info.status, r.info.end_time) for r in _study_runs(client, study_name)
    }
    assert after == {r.info.run_id: (r.info.status, r.info.end_time) for r in runs}
    assert len(optuna.load_study(study_name=study_name, storage=optuna_db.read).trials) == len(
        study.trials
    )

    # a worker must run the same search, and one process alone may not take a shared study
    other_space = [a.replace("1e-3, 1e-1", "1e-4, 1e-1") for a in argv]
    refused = run_cli(*other_space, cwd=tmp_path / "c", **optuna_db.env())
    assert refused.returncode == 2
    assert "search space differs from study 'shared_digits' in optimizer.lr" in one_line_error(
        refused
    )
    alone = run_cli(*[a for a in argv if "shared=" not in a], cwd=tmp_path / "c", **optuna_db.env())
    assert alone.returncode == 2
    assert "is shared by several workers" in one_line_error(alone)
    assert "hydra.sweeper.shared=true" in one_line_error(alone)


def test_a_worker_stopped_by_sigterm_leaves_the_study_to_the_other(
    server,  # noqa: F811
    optuna_db,
    tmp_path,
):
    """SIGTERM (Ctrl-C) of one worker in the middle of a trial's training while the other has
    a trial training too: the stopped worker's trial is interrupted and queued again, its child
    closed KILLED, the parent stays RUNNING; the other worker redoes that trial and closes the
    parent FINISHED. Both are frozen at a moment their child run is open (training), so the
    signal lands there and the other is still busy when the first stops."""
    from mlflow import MlflowClient

    study_name, n_trials = "shared_stopped", 4
    argv = arguments(optuna_db.url, server.url, study_name, n_trials, tmp_path)
    workers = [start_worker(argv, tmp_path / name, optuna_db) for name in ("a", "b")]
    client = MlflowClient(tracking_uri=server.url)
    training = _training(client, study_name)
    try:
        stopped_name = _freeze_while(training, workers, {w.name for w in workers})
        stopped = next(w for w in workers if w.name == stopped_name)
        going = next(w for w in workers if w is not stopped)
        with frozen(stopped):
            _freeze_while(training, workers, {going.name}, frozen_already=stopped)
            stopped.proc.send_signal(signal.SIGTERM)
        code, text = stopped.finish(timeout=120)
        assert code == 130, text[-3000:]
        assert f"this worker stops (interrupted); trials still run in {going.name}" in text, text
        (parent,) = [r for r in _study_runs(client, study_name) if PARENT not in r.data.tags]
        assert parent.info.status == "RUNNING"
        os.kill(going.proc.pid, signal.SIGCONT)
        code, text = going.finish()
        assert code == 0, text[-3000:]
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.proc.pid, signal.SIGCONT)
                worker.proc.kill()

    study = optuna.load_study(study_name=study_name, storage=optuna_db.read)
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    (cut,) = interrupted
    assert cut.user_attrs["deepmine.optuna.worker"] == stopped.name
    redo = [t for t in study.trials if t.user_attrs.get("deepmine.retry_of") == cut.number]
    assert [(t.state.name, t.user_attrs["deepmine.optuna.worker"]) for t in redo] == [
        ("COMPLETE", going.name)
    ]
    assert redo[0].params == cut.params
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == n_trials

    runs = _study_runs(client, study_name)
    (parent,) = [r for r in runs if PARENT not in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert "deepmine.error" not in parent.data.tags
    by_trial = {int(r.data.tags["deepmine.optuna.trial"]): r for r in runs if r is not parent}
    assert by_trial[cut.number].info.status == "KILLED"
    assert {by_trial[t.number].info.status for t in complete} == {"FINISHED"}
    rows = summary_rows(client, parent.info.run_id, tmp_path / "summary")
    assert {int(r["job"]): r["status"] for r in rows} == {
        cut.number: "INTERRUPTED",
        **{t.number: "FINISHED" for t in complete},
    }


def _training(client, study: str):
    """The workers whose child runs of `study` are open now (a trial training)."""

    def workers() -> set[str]:
        found = _study_runs(client, study, "attributes.status = 'RUNNING'")
        return {r.data.tags.get("deepmine.optuna.worker") for r in found if PARENT in r.data.tags}

    return workers


def _freeze_while(training, workers: list[Worker], names: set[str], frozen_already=None) -> str:
    """SIGSTOP the first worker among `names` seen with a child run open, at a moment it still
    has one (not between two trials); its name."""
    deadline = time.monotonic() + 240
    while True:
        for worker in workers:
            if worker is not frozen_already and worker.proc.poll() is not None:
                code, text = worker.finish()
                pytest.fail(f"worker {worker.name} exited with {code}:\n{text[-3000:]}")
        for worker in (w for w in workers if w.name in names & training()):
            os.kill(worker.proc.pid, signal.SIGSTOP)
            if worker.name in training():
                return worker.name
            os.kill(worker.proc.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"no child run of {names} was seen training"
        time.sleep(0.2)


def _study_runs(client, study: str, also: str = "") -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    found = f"tags.`deepmine.optuna.study` = '{study}'" + (f" and {also}" if also else "")
    return client.search_runs([experiment.experiment_id], filter_string=found)


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
