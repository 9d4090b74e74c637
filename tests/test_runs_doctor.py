"""A run whose process died without closing it (SIGKILL) is found and closed by the doctor;
a run whose process lives is never touched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from conftest import deepmine_env, run_cli, start_cli
from deepmine.tracking import doctor
from deepmine.tracking.run import HEARTBEAT_AT, HEARTBEAT_HOST, HEARTBEAT_PID
from deepmine.tracking.store import connect


def _wait_for_running_run(sandbox, proc, timeout: float = 180):
    """The run of `proc` once it is RUNNING with its heartbeat and has metrics in the store."""
    deadline = time.monotonic() + timeout
    opened = False
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
        if not opened and sandbox.db.exists():
            # through the store lock: a bare MlflowClient opening the file while the training
            # process creates it would race that process in MLflow's schema migration
            connect(sandbox.uri)
            opened = True
        runs = sandbox.runs() if opened else []
        if runs and runs[0].data.tags.get(HEARTBEAT_PID) and runs[0].data.metrics:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("no RUNNING run with a heartbeat and metrics appeared")


def test_doctor_closes_a_run_killed_by_sigkill(sandbox):
    args = sandbox.overrides(
        "data=digits", "trainer.max_epochs=10000", "callbacks.early_stopping=null"
    )
    proc = start_cli("train", *args, cwd=sandbox.cwd)
    try:
        run = _wait_for_running_run(sandbox, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.info.status == "RUNNING"
    tags = run.data.tags
    assert tags[HEARTBEAT_PID] == str(proc.pid)
    assert tags[HEARTBEAT_HOST] == socket.gethostname()
    assert datetime.fromisoformat(tags[HEARTBEAT_AT]).tzinfo is not None
    run_id = run.info.run_id
    (after_kill,) = sandbox.runs()
    assert after_kill.info.status == "RUNNING"  # nobody closed it
    metrics = after_kill.data.metrics
    assert metrics

    check = run_cli("runs", "doctor", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
    assert check.returncode == 1, check.stderr[-2000:]
    assert run_id in check.stdout and "dead" in check.stdout, check.stdout
    assert sandbox.runs()[0].info.status == "RUNNING"  # without --fix nothing changes

    fix = run_cli("runs", "doctor", "--fix", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
    assert fix.returncode == 0, fix.stderr[-2000:]
    (fixed,) = sandbox.runs()
    assert fixed.info.status == "KILLED"
    reason = fixed.data.tags["deepmine.status_reason"]
    assert f"process {proc.pid}" in reason and "is gone" in reason, reason
    assert fixed.data.metrics == metrics  # the record stays as it was
    run_files = list(sandbox.logs.glob("train/runs/*/*/mlflow_run.json"))
    assert run_files, "the run's folder is gone"

    listing = run_cli("runs", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert f"{run_id}  default" in listing.stdout and "KILLED" in listing.stdout
    again = run_cli("runs", "doctor", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]


def test_doctor_tells_alive_dead_stale_and_unknown_runs_apart(sandbox):
    store = connect(sandbox.uri)
    experiment_id = store.experiment_id("default")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    here = socket.gethostname()
    now = datetime.now(UTC)
    old = (now - timedelta(hours=1)).isoformat(timespec="seconds")
    fresh = now.isoformat(timespec="seconds")
    heartbeats = {
        "alive": {HEARTBEAT_HOST: here, HEARTBEAT_PID: str(os.getpid()), HEARTBEAT_AT: fresh},
        "dead": {HEARTBEAT_HOST: here, HEARTBEAT_PID: str(finished.pid), HEARTBEAT_AT: fresh},
        "stale": {HEARTBEAT_HOST: "elsewhere", HEARTBEAT_PID: "1", HEARTBEAT_AT: old},
        "remote": {HEARTBEAT_HOST: "elsewhere", HEARTBEAT_PID: "1", HEARTBEAT_AT: fresh},
        "unknown": {},
    }
    ids = {}
    for name, tags in heartbeats.items():
        ids[name] = store.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    states = {s.name: s for s in doctor.list_runs(store, "default", stale_after_s=600)}
    assert {name: s.state for name, s in states.items()} == {
        "alive": "alive",
        "dead": "dead",
        "stale": "stale",
        "remote": "alive",
        "unknown": "unknown",
    }
    orphans = doctor.find_orphans(store, stale_after_s=600)
    assert sorted(s.name for s in orphans) == ["dead", "stale"]
    for state in orphans:
        doctor.mark_killed(store, state)
    status = {name: store.client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "alive": "RUNNING",
        "dead": "KILLED",
        "stale": "KILLED",
        "remote": "RUNNING",
        "unknown": "RUNNING",
    }
    assert doctor.find_orphans(store, stale_after_s=600) == []


def test_heartbeat_beats_while_the_run_is_open_and_stops_when_it_closes(sandbox):
    import threading

    from deepmine.tracking.run import recorded_run

    store = connect(sandbox.uri)
    with recorded_run(store, "default", "beating", {}, heartbeat_every_s=0.2) as run:
        first = store.client.get_run(run.run_id).data.tags[HEARTBEAT_AT]
        deadline = time.monotonic() + 10
        while store.client.get_run(run.run_id).data.tags[HEARTBEAT_AT] == first:
            assert time.monotonic() < deadline, "the heartbeat time never changed"
            time.sleep(0.2)
        assert doctor.run_state(store.client.get_run(run.run_id)).state == "alive"
    assert not [t for t in threading.enumerate() if t.name.startswith("deepmine-heartbeat")]
    closed = store.client.get_run(run.run_id)
    assert closed.info.status == "FINISHED"
    assert closed.data.tags[HEARTBEAT_PID] == str(os.getpid())


def _sweep_child(sandbox, controller, timeout: float = 240):
    """The child run of the sweep `controller` once it is RUNNING with a heartbeat and metrics,
    and the processes under the controller by then."""
    import psutil

    deadline = time.monotonic() + timeout
    seen = {}
    while time.monotonic() < deadline:
        assert controller.poll() is None, f"the sweep ended early: {controller.stderr.read()}"
        for process in psutil.Process(controller.pid).children(recursive=True):
            seen.setdefault(process.pid, process)
        children = []
        if sandbox.db.exists():
            connect(sandbox.uri)  # through the store lock (see _wait_for_running_run)
            children = [r for r in sandbox.runs() if "mlflow.parentRunId" in r.data.tags]
        if children and children[0].data.tags.get(HEARTBEAT_PID) and children[0].data.metrics:
            return children[0], list(seen.values())
        time.sleep(0.5)
    raise AssertionError("no RUNNING child run with a heartbeat and metrics appeared")


def test_doctor_stops_the_jobs_of_a_sweep_killed_by_sigkill(sandbox):
    """A SIGKILLed launcher=submitit_local sweep leaves its job training, its run RUNNING and
    beating: doctor finds it by its sweep's dead controller, and --fix stops the job (which
    closes its run KILLED) and closes the parent."""
    import psutil

    args = sandbox.overrides(
        "data=digits",
        "trainer.max_epochs=10000",
        "callbacks.early_stopping=null",
        "launcher=submitit_local",
        "seed=0",
    )
    controller = subprocess.Popen(
        [sys.executable, "-m", "deepmine", "train", "-m", *args],
        cwd=sandbox.cwd,
        env=deepmine_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: everything it started is found below
    )
    started = []
    try:
        child, started = _sweep_child(sandbox, controller)
        job = psutil.Process(int(child.data.tags[HEARTBEAT_PID]))
        assert job.pid != controller.pid and job in started
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=30)
        time.sleep(2)
        assert job.is_running(), "the job died with its controller: nothing to find"
        (parent,) = [r for r in sandbox.runs() if "mlflow.parentRunId" not in r.data.tags]

        check = run_cli("runs", "doctor", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
        assert check.returncode == 1, check.stdout + check.stderr[-2000:]
        line = next(ln for ln in check.stdout.splitlines() if child.info.run_id in ln)
        assert "orphaned" in line and f"process {controller.pid}" in line, check.stdout
        assert parent.info.run_id in check.stdout
        assert job.is_running()  # without --fix nothing changes

        fix = run_cli("runs", "doctor", "--fix", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
        assert fix.returncode == 0, fix.stdout + fix.stderr[-2000:]
        assert f"process {job.pid} stopped by SIGTERM" in fix.stdout, fix.stdout
        assert not job.is_running() or job.status() == psutil.STATUS_ZOMBIE
        statuses = {r.info.run_id: r.info.status for r in sandbox.runs()}
        assert statuses == {child.info.run_id: "KILLED", parent.info.run_id: "KILLED"}
        assert [p for p in started if _alive(p)] == []
        again = run_cli("runs", "doctor", "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)
        assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    finally:
        for process in started:
            if _alive(process):
                process.kill()
        if controller.poll() is None:
            controller.kill()
        controller.wait(timeout=30)
        controller.stderr.close()


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
