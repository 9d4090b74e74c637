"""`deepmine ui` serves a real MLflow UI on the store the runs were written to, and SIGTERM
stops its whole process tree (the MLflow CLI, uvicorn, the job runner and its consumers)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

from conftest import deepmine_env, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_recorded_run(sandbox):
    proc = sandbox.train("data=digits", "debug=fast")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = sandbox.runs()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deepmine",
            "ui",
            "--port",
            str(port),
            "--tracking-uri",
            sandbox.uri,
        ],
        cwd=sandbox.cwd,
        env=deepmine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    tree: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
        deadline, body = time.time() + 90, None
        while body is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the UI never answered"
        served = body["run"]
        assert served["info"]["run_name"] == run.info.run_name
        params = {p["key"]: p["value"] for p in served["data"]["params"]}
        assert params["data._target_"] == "deepmine.data.digits.DigitsDataModule"
        tree = psutil.Process(server.pid).children(recursive=True)
        assert len(tree) >= 2, "mlflow ui and its server should be running under deepmine ui"
        server.terminate()  # SIGTERM to deepmine ui alone, as `kill <pid>` would
        assert server.wait(timeout=30) == 0
        banner = server.stdout.read().decode()
        assert f"open http://127.0.0.1:{port}" in banner
        assert "only this machine can reach it" in banner
        experiment = f"#/experiments/{run.info.experiment_id}?workflowType=machine_learning"
        assert f"runs of 'default'  http://127.0.0.1:{port}/{experiment}" in banner
        _, alive = psutil.wait_procs(tree, timeout=20)
        survivors = [" ".join(p.cmdline()[:4]) for p in alive if _running(p)]
        assert not survivors, f"outlived deepmine ui: {survivors}"
    finally:
        # never leave a server behind, even when the test failed before `tree` was read: a
        # SIGTERM lets deepmine ui stop its own group, then whatever is left is killed
        if server.poll() is None:
            tree = tree or psutil.Process(server.pid).children(recursive=True)
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
        server.kill()
        server.wait(timeout=30)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ui_workers_are_sized_to_the_machine():
    from deepmine.tracking.ui import default_workers, ui_command

    assert [default_workers(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
    command = ui_command("sqlite:////tmp/x.db")
    assert command[command.index("--workers") + 1] == str(default_workers())
    command = ui_command("sqlite:////tmp/x.db", workers=3)
    assert command[command.index("--workers") + 1] == "3"


def test_ui_refuses_a_worker_count_below_one(tmp_path):
    proc = run_cli("ui", "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --workers 0 is not valid. Fix: e.g. `deepmine ui --workers 1`"
    )
