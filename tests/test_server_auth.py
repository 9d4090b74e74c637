"""`logger.tracking_uri` pointing at a real, shared `mlflow server` with authentication on
(MLflow's basic-auth app): the run, its metrics and its artifacts land on the server.

One real server for the module, its users kept in a database under the test's temporary folder
(MLFLOW_AUTH_CONFIG_PATH), stopped as a whole process group afterwards. Credentials reach
deepmine only through the environment, as MLflow's own client reads them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_ui import free_port

from conftest import deepmine_env, one_line_error, run_cli
from deepmine.tracking.ui import stop_group

ADMIN = "admin"
USER = "alice"
REFUSAL_FIX = (
    "Fix: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"
)


@dataclass
class AuthServer:
    uri: str
    admin_password: str
    user_password: str
    path: Path


def _request(url: str, user: str, password: str, body: dict | None = None) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def _wait_healthy(server: subprocess.Popen, uri: str, log: Path) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after 90 s:\n{log.read_text()[-3000:]}")


def _group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """Whether no process of group `pgid` is left (killed ones may take a moment to be reaped)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> AuthServer:
    path = tmp_path_factory.mktemp("auth-server")
    admin_password = "adm-" + secrets.token_urlsafe(12)
    # MLflow ships no default admin password: the first start creates the admin with the one
    # in MLFLOW_AUTH_ADMIN_PASSWORD (as the README shows, so no file holds it)
    ini = path / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{path}/basic_auth.db\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{path}/server.db",
                "--artifacts-destination",
                str(path / "server-artifacts"),
            ],
            cwd=path,
            env=deepmine_env(
                MLFLOW_AUTH_CONFIG_PATH=str(ini),
                MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: uvicorn, job runner, consumers
        )
    pgid = server.pid
    try:
        _wait_healthy(server, uri, log)
        user_password = "usr-" + secrets.token_urlsafe(12)
        created = _request(
            f"{uri}/api/2.0/mlflow/users/create",
            ADMIN,
            admin_password,
            {"username": USER, "password": user_password},
        )
        assert created["user"]["username"] == USER
        yield AuthServer(uri, admin_password, user_password, path)
    finally:
        stop_group(server)
        assert _group_gone(pgid), f"processes of the server's group {pgid} outlived it"


@pytest.fixture
def admin_client(auth_server, monkeypatch):
    """An MlflowClient logged in as the server's admin (MLflow reads the env at each call)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.admin_password)
    return MlflowClient(tracking_uri=auth_server.uri)


def _all_runs(client) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def _train(auth_server: AuthServer, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return run_cli(
        "train",
        "data=digits",
        "debug=fast",
        f"paths.log_dir={tmp_path}/logs",
        f"logger.tracking_uri={auth_server.uri}",
        cwd=tmp_path,
        **env,
    )


def test_run_logged_with_credentials_from_the_environment(auth_server, admin_client, tmp_path):
    before = {r.info.run_id for r in _all_runs(admin_client)}
    proc = _train(
        auth_server,
        tmp_path,
        MLFLOW_TRACKING_USERNAME=USER,
        MLFLOW_TRACKING_PASSWORD=auth_server.user_password,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [r for r in _all_runs(admin_client) if r.info.run_id not in before]
    assert run.info.status == "FINISHED"
    assert "test/acc" in run.data.metrics
    assert run.data.params["data._target_"] == "deepmine.data.digits.DigitsDataModule"
    top = {a.path for a in admin_client.list_artifacts(run.info.run_id)}
    assert {"config", "checkpoints", "plots", "metrics.json"} <= top
    # the server stored the artifacts in its own destination, not in the client's folders
    assert list((auth_server.path / "server-artifacts").rglob("confusion_matrix.png"))
    assert not (tmp_path / "mlartifacts").exists()
    recorded = json.dumps([run.data.params, run.data.tags])
    assert auth_server.user_password not in recorded
    assert auth_server.user_password not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong-pass-1234"},
            f"refused the credentials of user '{USER}' (HTTP 401)",
        ),
        ({}, "requires a login (HTTP 401)"),
    ],
    ids=["wrong-password", "no-credentials"],
)
def test_refused_login_is_one_line_and_creates_no_run(
    auth_server, admin_client, tmp_path, env, problem
):
    before = {r.info.run_id for r in _all_runs(admin_client)}
    experiments = len(admin_client.search_experiments())
    proc = _train(auth_server, tmp_path, **env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert proc.stderr.strip() == line, proc.stderr[-3000:]  # the only line
    assert line == f"error: MLflow tracking server {auth_server.uri} {problem}. {REFUSAL_FIX}"
    for password in ("wrong-pass-1234", auth_server.user_password, auth_server.admin_password):
        assert password not in proc.stdout + proc.stderr
    assert {r.info.run_id for r in _all_runs(admin_client)} == before
    assert len(admin_client.search_experiments()) == experiments
