"""`deepmine ui`: the MLflow UI on the same store the runs were written to.

`mlflow ui` is a tree of processes (the CLI, uvicorn, a job runner and its huey consumers).
Stopping only the process that started it orphans the rest, still holding the port and
gigabytes of memory. So the tree runs in a session of its own, and whatever stops
`deepmine ui` — Ctrl-C, SIGTERM, SIGHUP, the UI exiting by itself — stops that whole process
group: SIGTERM first, SIGKILL for whatever is left after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

#: seconds the UI's processes get to exit after SIGTERM before the group is killed
GRACE_S = 10.0


def default_tracking_uri() -> str:
    """`logger.tracking_uri` as `deepmine train` would resolve it (local overrides included)."""
    from deepmine.config import compose_train

    return str(compose_train([]).logger.tracking_uri)


def default_workers(cpus: int | None = None) -> int:
    """uvicorn workers for the UI: one per two cores, at most MLflow's own default of 4.

    Why: `mlflow ui` starts 4 workers whatever the machine; on 2 cores that is four Python
    servers (about 3 GB with their job runner) for one person browsing runs, competing with
    the training it is meant to watch. One worker answers a single user's pages at once."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(4, cpus // 2))


def ui_command(
    tracking_uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int | None = None
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers or default_workers()),
    ]


class _Stopped(Exception):
    """A stop signal reached `deepmine ui`."""


def _experiments(uri: str, most: int = 5) -> list[tuple[str, str]]:
    """The store's most recently used experiments, for links that open their runs in the
    model-training view (MLflow's start page opens in its GenAI view). Never creates a store,
    never stops the UI from starting."""
    from pathlib import Path

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    try:
        from mlflow import MlflowClient

        found = MlflowClient(tracking_uri=uri).search_experiments(
            max_results=most, order_by=["last_update_time DESC"]
        )
    except Exception:
        return []
    return [(e.name, e.experiment_id) for e in found]


def serve(
    tracking_uri: str | None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
) -> int:
    uri = tracking_uri or default_tracking_uri()
    reach = (
        "only this machine can reach it; --host 0.0.0.0 serves the network"
        if host in ("127.0.0.1", "localhost", "::1")
        else f"bound to {host}: anyone who can reach this address can read and change the runs"
    )
    print(f"MLflow UI on {uri}: open http://{host}:{port} ({reach}; Ctrl-C stops it)", flush=True)
    for name, experiment_id in _experiments(uri):
        link = f"http://{host}:{port}/#/experiments/{experiment_id}?workflowType=machine_learning"
        print(f"  runs of '{name}'  {link}", flush=True)
    return run_group(ui_command(uri, host, port, workers))


def run_group(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run `command` as the leader of a session of its own until it exits or a stop signal
    (Ctrl-C, SIGTERM, SIGHUP) reaches this process; either way the whole group is stopped
    (`stop_group`). Returns the command's exit code, 0 when it was stopped."""
    child = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(signum, frame):
        raise _Stopped

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return child.wait()
    except (_Stopped, KeyboardInterrupt):
        return 0
    finally:
        stop_group(child)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_group(child: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop every process of `child`'s process group (the session it leads), even those its
    leader has left behind."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)  # stragglers, and the leader if it hung
    child.wait()
