"""`logger.tracking_uri` switches from the SQLite file to a real `mlflow server` process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from test_ui import free_port

from conftest import deepmine_env, run_cli
from deepmine.tracking.ui import stop_group


def test_run_recorded_through_a_real_mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        cwd=tmp_path,
        env=deepmine_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, stopped whole below
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        proc = run_cli(
            "train",
            f"paths.log_dir={tmp_path}/logs",
            f"logger.tracking_uri={uri}",
            "data=digits",
            "debug=fast",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["data._target_"] == "deepmine.data.digits.DigitsDataModule"
        assert "test/acc" in run.data.metrics
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config", "checkpoints", "plots", "metrics.json"} <= top
        # the server stored the artifacts in its own destination, not in the client's folders
        assert list((tmp_path / "server-artifacts").rglob("confusion_matrix.png"))
        assert not (tmp_path / "mlartifacts").exists()
    finally:
        stop_group(server)  # the server, uvicorn, the job runner and its consumers
        server.wait(timeout=30)
