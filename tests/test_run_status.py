"""Once a run is open it ends FINISHED, FAILED (error recorded) or KILLED, never RUNNING."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import deepmine_env, one_line_error


def test_exception_during_training_marks_the_run_failed(sandbox):
    # torch's SGD refuses a negative momentum when the optimizer is built, inside fit: a value
    # deepmine does not check up front (those are refused before a run opens)
    proc = sandbox.train("data=digits", "debug=fast", "optimizer=sgd", "optimizer.momentum=-1.0")
    assert proc.returncode == 1
    line = one_line_error(proc)
    (run,) = sandbox.runs()
    assert run.info.status == "FAILED"
    assert f"run {run.info.run_id} FAILED: ValueError: Invalid momentum value" in line
    assert "Invalid momentum value" in run.data.tags["deepmine.error"]
    client = sandbox.client()
    paths = [a.path for a in client.list_artifacts(run.info.run_id, "error")]
    assert paths == ["error/traceback.txt"]
    text = client.download_artifacts(run.info.run_id, "error/traceback.txt", str(sandbox.path))
    assert "Traceback" in Path(text).read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_run_killed(sandbox, sig):
    # a store write every step: the signal is likely to land in or near one (a signal inside an
    # SQLite commit once left the database locked and the run RUNNING)
    args = sandbox.overrides(
        "data=digits",
        "trainer.max_epochs=10000",
        "trainer.log_every_n_steps=1",
        "callbacks.early_stopping=null",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepmine", "train", *args],
        cwd=sandbox.cwd,
        env=deepmine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    records = []
    while not records and time.time() < deadline:
        records = list(sandbox.logs.glob("train/runs/*/*/checkpoints/epoch*.ckpt"))
        time.sleep(0.2)
    assert records, "training never reached a first checkpoint"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    (run,) = sandbox.runs()
    assert run.info.status == "KILLED"
    run_file = next(sandbox.logs.glob("train/runs/*/*/mlflow_run.json"))
    assert json.loads(run_file.read_text())["run_id"] == run.info.run_id
