"""Offline runs and `deepmine sync` against a real tracking server (`deepmine server` on
loopback, an SQLite backend and served artifacts, in its own process group, stopped whole).

What is proven: a sweep recorded offline and synced equals the same sweep recorded online, field
by field (ids aside); a synced run equals its spooled source exactly (metric points with steps
and timestamps); syncing again adds nothing; a sync SIGKILLed half way is finished by the next
one without a duplicate run or metric point; `logger.failover=true` with the server down trains
into the spool with a warning, and the sync brings it to the server; a target that cannot be
reached is refused in one line without touching the source.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_server_auth import ADMIN, REFUSAL_FIX, USER, _group_gone, auth_server  # noqa: F401
from test_ui import free_port

from conftest import deepmine_env, one_line_error, run_cli, start_cli
from deepmine.tracking.ui import stop_group

#: a real server process: the suite's second stage
pytestmark = pytest.mark.cluster

SOURCE = "deepmine.sync.source_run_id"
COMPLETE = "deepmine.sync.complete"
PARENT = "mlflow.parentRunId"
#: tags that differ between any two executions of one command (ids, times, pids, folders) or
#: name the offline path itself; everything else must be equal
VOLATILE_TAGS = {
    PARENT, SOURCE, COMPLETE, "deepmine.offline.target", "deepmine.heartbeat.at",
    "deepmine.heartbeat.pid", "deepmine.host.pid", "deepmine.sweep.id", "deepmine.sweep.dir",
    "deepmine.sweep.best_run_id", "deepmine.output_dir", "deepmine.argv", "deepmine.command",
    "deepmine.overrides", "mlflow.note.content",
}  # fmt: skip
#: the only config keys an offline run records differently
OFFLINE_PARAMS = {"logger.offline", "logger.spool_dir"}
#: metrics measured in seconds: their steps must match, their values cannot
TIMED = {"time/epoch_s"}


@dataclass
class Server:
    url: str
    process: subprocess.Popen


def start_server(path: Path, db: Path, artifacts: Path) -> Server:
    """`deepmine server` on a free loopback port, in its own process group, once healthy."""
    path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "deepmine", "server",
                "--backend-store-uri", f"sqlite:///{db}",
                "--artifacts-destination", str(artifacts),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            cwd=path, env=deepmine_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: uvicorn and its workers
        )  # fmt: skip
    deadline = time.time() + 120
    while True:
        if process.poll() is not None or time.time() > deadline:
            stop_group(process)
            pytest.fail(f"deepmine server did not start:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return Server(url, process)
        except OSError:
            time.sleep(0.5)


def stop_server(server: Server) -> None:
    stop_group(server.process)
    assert _group_gone(server.process.pid), "processes of the server's group outlived it"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("sync-server")
    started = start_server(path, path / "server.db", path / "artifacts")
    try:
        yield started
    finally:
        stop_server(started)


def _client(server: Server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url)


def _runs(client, experiment: str = "default") -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def _train(path: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = run_cli("train", *overrides, f"paths.log_dir={path / 'logs'}", cwd=path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _sync(path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("sync", *args, cwd=path, timeout=240)


def _digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def offline(server, tmp_path_factory):
    """A 2-job sweep recorded offline (the server up but not used), then synced: the first sync
    SIGKILLed as soon as the server shows its first copy, a second one finishing the job.
    Returns (spool, state of the copies right after the kill, the finishing sync)."""
    path = tmp_path_factory.mktemp("offline")
    spool = path / "spool"
    _train(
        path, "-m", "logger.offline=true", "debug=fast", "data=digits", "seed=0,1",
        f"logger.spool_dir={spool}", f"logger.tracking_uri={server.url}",
    )  # fmt: skip
    assert _runs(_client(server)) == [], "an offline run reached the server"
    before = _digest(spool / "mlflow.db")
    client = _client(server)
    # no --to: the runs name the store they were meant for
    proc = start_cli("sync", str(spool), cwd=path)
    try:
        deadline = time.time() + 120
        while not [r for r in _runs(client) if SOURCE in r.data.tags]:
            assert proc.poll() is None, f"sync ended before it was killed: {proc.stderr.read()}"
            assert time.time() < deadline, "no copy reached the server"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    killed = [r.data.tags.get(COMPLETE) == "true" for r in _runs(client) if SOURCE in r.data.tags]
    finish = _sync(path, str(spool))
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert _digest(spool / "mlflow.db") == before, "sync wrote into its source"
    return spool, killed, finish


@pytest.fixture(scope="module")
def online(server, tmp_path_factory):
    """The same sweep recorded straight into the server."""
    path = tmp_path_factory.mktemp("online")
    _train(path, "-m", "debug=fast", "data=digits", "seed=0,1", f"logger.tracking_uri={server.url}")


def _split(server) -> tuple[list, list]:
    """(synced, online) runs of the default experiment, parent first, then by name."""
    runs = _runs(_client(server))

    def order(run):
        return PARENT in run.data.tags, run.info.run_name

    synced = sorted((r for r in runs if SOURCE in r.data.tags), key=order)
    return synced, sorted((r for r in runs if SOURCE not in r.data.tags), key=order)


def _artifacts(client, run_id: str, path: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def test_a_sync_killed_half_way_is_finished_by_the_next_without_duplicates(server, offline):
    _, killed, finish = offline
    complete, partial = killed.count(True), killed.count(False)
    assert killed and complete < 3, killed  # the kill landed half way
    line = finish.stdout.strip().splitlines()[-1]
    assert (
        f"{3 - complete - partial} runs copied, {partial} completed after an interrupted "
        f"sync, {complete} already there"
    ) in line, finish.stdout
    synced, _ = _split(server)
    assert len(synced) == 3
    assert len({r.data.tags[SOURCE] for r in synced}) == 3
    assert all(r.data.tags[COMPLETE] == "true" for r in synced)


def test_an_offline_sweep_synced_equals_the_same_sweep_logged_online(server, offline, online):
    spool, _, _ = offline
    client = _client(server)
    synced, direct = _split(server)
    assert [r.info.run_name for r in synced] == [r.info.run_name for r in direct]
    assert len(synced) == 3
    parent, online_parent = synced[0], direct[0]
    for copy, other in zip(synced, direct, strict=True):
        assert copy.info.status == other.info.status == "FINISHED"
        params = {k: v for k, v in copy.data.params.items() if k not in OFFLINE_PARAMS}
        assert params == {k: v for k, v in other.data.params.items() if k not in OFFLINE_PARAMS}
        tags = {k: v for k, v in copy.data.tags.items() if k not in VOLATILE_TAGS}
        assert tags == {k: v for k, v in other.data.tags.items() if k not in VOLATILE_TAGS}
        assert copy.data.tags["deepmine.offline.target"] == server.url
        assert set(copy.data.metrics) == set(other.data.metrics)
        for key in copy.data.metrics:
            mine = client.get_metric_history(copy.info.run_id, key)
            theirs = client.get_metric_history(other.info.run_id, key)
            assert [m.step for m in mine] == [m.step for m in theirs], key
        assert _artifacts(client, copy.info.run_id) == _artifacts(client, other.info.run_id)
        assert len(copy.inputs.dataset_inputs) == len(other.inputs.dataset_inputs)
        assert {i.dataset.digest for i in copy.inputs.dataset_inputs} == {
            i.dataset.digest for i in other.inputs.dataset_inputs
        }
        # the sweep keeps its shape: each child under the parent's copy
        if copy is parent:
            assert PARENT not in copy.data.tags and PARENT not in other.data.tags
            best = copy.data.tags["deepmine.sweep.best_run_id"]
            assert best in {r.info.run_id for r in synced[1:]}
        else:
            assert copy.data.tags[PARENT] == parent.info.run_id
            assert other.data.tags[PARENT] == online_parent.info.run_id
            _same_models(client, copy, other)
    _same_as_source(client, spool, synced)


def _same_models(client, copy, other) -> None:
    """The child's logged model came along: an output of the copy, READY, the same files."""
    (mine,) = copy.outputs.model_outputs
    (theirs,) = other.outputs.model_outputs
    assert mine.step == theirs.step
    model = client.get_logged_model(mine.model_id)
    assert str(model.status) == "READY" and model.source_run_id == copy.info.run_id
    files = sorted(a.path for a in client.list_logged_model_artifacts(mine.model_id))
    assert files == sorted(a.path for a in client.list_logged_model_artifacts(theirs.model_id))
    assert "MLmodel" in files and "python_model.pkl" in files
    # the model's own description names the copy, not the spool's run and model
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location}/MLmodel", dst_path=tmp,
                tracking_uri=client.tracking_uri,
            )
        ).read_text()  # fmt: skip
    assert f"model_id: {mine.model_id}" in text and f"run_id: {copy.info.run_id}" in text
    assert copy.data.tags[SOURCE] not in text


def _same_as_source(client, spool: Path, synced: list) -> None:
    """Each copy holds exactly its source's metric points (value, step, timestamp: none lost,
    none twice) and times; the source still holds every run."""
    from mlflow import MlflowClient

    source = MlflowClient(tracking_uri=f"sqlite:///{spool / 'mlflow.db'}")
    for copy in synced:
        original = source.get_run(copy.data.tags[SOURCE])
        assert copy.info.start_time == original.info.start_time
        assert copy.info.end_time == original.info.end_time
        assert copy.info.run_name == original.info.run_name
        for key in original.data.metrics:
            points = [
                (m.step, m.timestamp, m.value)
                for m in client.get_metric_history(copy.info.run_id, key)
            ]
            expected = [
                (m.step, m.timestamp, m.value)
                for m in source.get_metric_history(original.info.run_id, key)
            ]
            assert sorted(points) == sorted(expected), key


def test_syncing_again_adds_nothing(server, offline):
    spool, _, _ = offline
    before = sorted(r.info.run_id for r in _runs(_client(server)))
    proc = _sync(spool.parent, str(spool), "--to", server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 runs copied, 0 completed after an interrupted sync, 3 already there" in proc.stdout
    assert sorted(r.info.run_id for r in _runs(_client(server))) == before


def test_failover_with_the_server_down_trains_into_the_spool_then_syncs(server, tmp_path):
    """The run also registers its model: `--register` makes a version on the server too."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spool = tmp_path / "spool"
    proc = _train(
        tmp_path, "debug=fast", "data=digits", "logger.failover=true", "logger.register=digits",
        f"logger.tracking_uri={down}", f"logger.spool_dir={spool}", "experiment_name=failover",
    )  # fmt: skip
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "unreachable" in warnings[0], proc.stderr[-3000:]
    assert "offline spool" in warnings[0] and str(spool) in warnings[0]
    from mlflow import MlflowClient

    local = MlflowClient(tracking_uri=f"sqlite:///{spool / 'mlflow.db'}")
    (spooled,) = _runs(local, "failover")
    assert spooled.info.status == "FINISHED"
    assert spooled.data.tags["deepmine.offline.target"] == down
    assert spooled.data.tags["deepmine.model.registered"] == "digits/1"
    assert "test/acc" in spooled.data.metrics
    sync = _sync(tmp_path, str(spool), "--to", server.url, "--register")
    assert sync.returncode == 0, sync.stderr[-3000:]
    client = _client(server)
    (copy,) = _runs(client, "failover")
    assert copy.data.tags[SOURCE] == spooled.info.run_id
    assert copy.info.status == "FINISHED"
    assert copy.data.metrics == spooled.data.metrics
    assert copy.data.params == spooled.data.params
    (version,) = client.search_model_versions("name = 'digits'")
    assert version.run_id == copy.info.run_id
    model = client.get_logged_model(copy.outputs.model_outputs[0].model_id)
    assert version.source == model.artifact_location
    assert copy.data.tags["deepmine.model.registered"] == f"digits/{version.version}"
    again = _sync(tmp_path, str(spool), "--to", server.url, "--register")
    assert again.returncode == 0 and "1 already there" in again.stdout, again.stderr
    assert len(client.search_model_versions("name = 'digits'")) == 1


def test_failover_off_refuses_an_unreachable_server(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    proc = run_cli(
        "train", "debug=fast", "data=digits", f"logger.tracking_uri={down}",
        f"logger.spool_dir={tmp_path / 'spool'}", f"paths.log_dir={tmp_path / 'logs'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unreachable" in one_line_error(proc)
    assert not (tmp_path / "spool").exists()


def test_a_sync_to_an_unreachable_server_is_one_line_and_writes_nothing(server, offline):
    spool, _, _ = offline
    before = _digest(spool / "mlflow.db")
    down = f"http://127.0.0.1:{free_port()}"
    proc = _sync(spool.parent, str(spool), "--to", down)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert (
        line.startswith(f"error: MLflow tracking server {down} is unreachable") and "Fix:" in line
    )
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    assert _digest(spool / "mlflow.db") == before


def test_a_sync_from_a_folder_without_a_spool_is_one_line(server, tmp_path):
    proc = _sync(tmp_path, str(tmp_path / "nothing"), "--to", server.url)
    assert proc.returncode == 2
    assert "no offline spool store" in one_line_error(proc)
    assert not (tmp_path / "nothing").exists()


def test_a_refused_login_is_one_line_and_nothing_moves(auth_server, offline, monkeypatch):  # noqa: F811
    """A server with logins on (MLflow's basic-auth app): no credentials, or a wrong password,
    is refused before anything is copied."""
    spool, _, _ = offline
    before = _digest(spool / "mlflow.db")
    for env, problem in (
        ({}, "requires a login (HTTP 401)"),
        (
            {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong"},
            f"refused the credentials of user '{USER}' (HTTP 401)",
        ),
    ):
        proc = run_cli("sync", str(spool), "--to", auth_server.uri, cwd=spool.parent, **env)
        assert proc.returncode == 2
        assert problem in one_line_error(proc) and REFUSAL_FIX in proc.stderr
        assert "wrong" not in proc.stderr
    assert _digest(spool / "mlflow.db") == before
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.admin_password)
    admin = MlflowClient(tracking_uri=auth_server.uri)
    copies = [
        r for e in admin.search_experiments() for r in admin.search_runs([e.experiment_id])
        if SOURCE in r.data.tags
    ]  # fmt: skip
    assert copies == []


def test_a_run_that_loses_its_server_mid_run_continues_in_the_spool_and_syncs_whole(tmp_path):
    """The server dies after the run's first epoch, for longer than the client's retries
    (shortened here); the run goes on in the spool and ends FINISHED there; the server comes
    back (another process on the same backend) and `deepmine sync` joins the two parts: one
    FINISHED run, every metric equal to an uninterrupted run's, no step missing."""
    db, artifacts = tmp_path / "server.db", tmp_path / "artifacts"
    first = start_server(tmp_path / "first", db, artifacts)
    spool = tmp_path / "spool"
    config = (
        "data=digits", "data.batch_size=8", "trainer.max_epochs=3", "net.dropout=0.0",
        "logger.flush_every_s=0", "print_config=false", "logger.log_model=false",
    )  # fmt: skip
    training = start_cli(
        "train", *config, f"logger.tracking_uri={first.url}", "logger.failover=true",
        f"logger.spool_dir={spool}", f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )  # fmt: skip
    try:
        client = _client(first)
        deadline = time.monotonic() + 240
        while not [r for r in _runs(client) if "val/acc" in r.data.metrics]:
            assert training.poll() is None, training.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no epoch on the server"
            time.sleep(0.1)
        (online,) = _runs(client)
        stop_server(first)  # gone mid-run
        _, err = training.communicate(timeout=300)
    finally:
        if training.poll() is None:
            training.kill()
        stop_group(first.process)
    assert training.returncode == 0, err[-3000:]
    assert "lost the MLflow tracking server" in err
    second = start_server(tmp_path / "second", db, artifacts)
    try:
        synced = _sync(tmp_path, str(spool), "--to", second.url)
        assert synced.returncode == 0, synced.stderr[-3000:]
        client = _client(second)
        (run,) = _runs(client)
        assert run.info.run_id == online.info.run_id  # the server's run, completed
        assert run.info.status == "FINISHED" and run.data.tags[COMPLETE] == "true"
        _train(tmp_path, *config, f"logger.tracking_uri={second.url}", "experiment_name=ref")
        (reference,) = _runs(client, "ref")
        final = {k: v for k, v in run.data.metrics.items() if k not in TIMED}
        assert final == {k: v for k, v in reference.data.metrics.items() if k not in TIMED}
        for key in final:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            ref_steps = [m.step for m in client.get_metric_history(reference.info.run_id, key)]
            assert sorted(steps) == sorted(ref_steps), key  # no gap, nothing twice
        again = _sync(tmp_path, str(spool), "--to", second.url)
        assert again.returncode == 0 and len(_runs(client)) == 1
    finally:
        stop_server(second)
