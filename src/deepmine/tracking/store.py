"""Connect to a tracking store: an SQLite file (default) or an `mlflow server`.

Why an explicit client instead of MLflow's global state: the tracking URI comes from the config
(absolute, never CWD-relative), and nothing leaks from one run to the next in the same process.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deepmine.errors import DeepmineError

SERVER_TIMEOUT_S = 5.0
# MLflow 3's UI opens an experiment in its GenAI view unless this tag says it holds trained
# models; with it, runs appear under "Model training" with their params, metrics and charts.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


@dataclass
class Store:
    uri: str
    client: object  # mlflow.MlflowClient, typed loosely to keep this module import-light
    artifact_location: str | None

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (with our artifact location) if missing."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise DeepmineError(
                    f"MLflow experiment '{name}' is deleted",
                    "restore it (`mlflow experiments restore`) or use experiment_name=<other>",
                )
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=self.artifact_location, tags=EXPERIMENT_TAGS
            )
        except MlflowException:  # created meanwhile by a parallel job
            return self.client.get_experiment_by_name(name).experiment_id


def connect(tracking_uri: str, artifact_location: str | None = None) -> Store:
    """Open the store at `tracking_uri`, failing in one line if it cannot be used."""
    from mlflow import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
    elif tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_absolute():
            raise DeepmineError(
                f"logger.tracking_uri={tracking_uri} is relative to the current directory",
                "use an absolute path: sqlite:////abs/path/mlflow.db",
            )
        db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_location is None:
            artifact_location = (db.parent / "mlartifacts").as_uri()
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        raise DeepmineError(
            f"logger.tracking_uri={tracking_uri} is a file store, which MLflow 3 no longer accepts",
            "use sqlite:////abs/path/mlflow.db or an http:// tracking server",
        )
    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    client = _InterruptSafeClient(MlflowClient(tracking_uri=tracking_uri))
    return Store(tracking_uri, client, artifact_location)


class _InterruptSafeClient:
    """An MlflowClient whose every call runs inside `deepmine.interrupts.critical()`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            from deepmine.interrupts import critical

            with critical():
                return attribute(*args, **kwargs)

        return call


def _check_server(uri: str) -> None:
    """Fail fast: MLflow's own client retries an unreachable server for minutes."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeepmineError(
            f"MLflow tracking server {uri} is unreachable ({reason})",
            "start it (`mlflow server --host 127.0.0.1 --port 5000 ...`) or drop "
            "logger.tracking_uri to use the local SQLite store",
        ) from exc


def end_fluent_runs() -> None:
    """End runs left active on MLflow's fluent stack (KILLED: nobody closed them)."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status="KILLED")
