"""Connect to a tracking store: an SQLite file (default) or an `mlflow server`.

Why an explicit client instead of MLflow's global state: the tracking URI comes from the config
(absolute, never CWD-relative), and nothing leaks from one run to the next in the same process.

Why a lock around opening an SQLite store: MLflow creates a fresh database by running its whole
chain of schema migrations, and several processes doing that on one new file at once (parallel
jobs, eight `deepmine train` started together) collide in the migrations (`ALTER TABLE ...`,
"table _alembic_tmp_... already exists"): measured, 7 of 8 failed. Under the lock exactly one
process migrates and the others open a ready store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deepmine.errors import DeepmineError

if TYPE_CHECKING:
    from omegaconf import DictConfig

SERVER_TIMEOUT_S = 5.0
# Creating a fresh store takes about a second; a lock held far longer than that belongs to a
# process that hangs.
STORE_LOCK_TIMEOUT_S = 300.0
# schemes of the stores MLflow can log to besides an SQLite file: a tracking server, or a
# database it opens itself (SQLAlchemy URIs, dialect+driver allowed: postgresql+psycopg2)
SERVER_SCHEMES = {"http", "https", "postgresql", "mysql", "mssql", "databricks"}
# MLflow 3's UI opens an experiment in its GenAI view unless this tag says it holds trained
# models; with it, runs appear under "Model training" with their params, metrics and charts.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


@dataclass
class Store:
    uri: str
    client: object  # mlflow.MlflowClient, typed loosely to keep this module import-light
    artifact_location: str | None
    run_tags: dict[str, str] | None = None  # on every run opened here (a spool's target)

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
                f"use an absolute path, e.g. logger.tracking_uri=sqlite:///{db.resolve()}",
            )
        db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_location is None:
            artifact_location = (db.parent / "mlartifacts").as_uri()
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        raise DeepmineError(
            f"logger.tracking_uri={tracking_uri} is a file store, which MLflow 3 no longer accepts",
            f"use an SQLite file or an http:// tracking server, e.g. {_default_uri_override()}",
        )
    elif tracking_uri.split("://", 1)[0].split("+", 1)[0] not in SERVER_SCHEMES:
        raise DeepmineError(
            f"logger.tracking_uri={tracking_uri} has an unknown scheme "
            f"'{tracking_uri.split('://', 1)[0]}' (MLflow takes sqlite, http(s) and "
            f"{', '.join(sorted(SERVER_SCHEMES - {'http', 'https'}))})",
            f"use an SQLite file or a tracking server, e.g. {_default_uri_override()}",
        )
    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    if tracking_uri.startswith("sqlite:///"):
        client = _open_sqlite(tracking_uri, db)
    else:
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as exc:
            raise _store_error(tracking_uri, exc) from exc
    return Store(tracking_uri, _InterruptSafeClient(client), artifact_location)


def _default_uri_override() -> str:
    """The override that puts runs in the project's own SQLite store."""
    from deepmine.project import project_root

    return f"logger.tracking_uri=sqlite:///{project_root() / 'mlflow.db'}"


def _open_sqlite(tracking_uri: str, db: Path):
    """An MlflowClient on an SQLite store whose schema is complete, created or checked while
    holding `<db>.lock`, so that only one process at a time runs MLflow's migrations.

    The lock is `filelock` (a dependency of torch and dvc, so always installed): an OS lock
    (`flock` on Linux) that the kernel drops when its process dies, even by SIGKILL, so a
    crashed run never leaves the store locked; unlike a bare `fcntl.flock` it also works on
    Windows and has a timeout.
    """
    from filelock import FileLock, Timeout
    from mlflow import MlflowClient

    from deepmine.tracking.store_schema import schema_check_skipped

    lock = FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        with lock:
            if not db.exists():
                _create_sqlite(db)
            # MlflowClient builds (and caches, per URI) the SQLAlchemy store; a first query
            # proves the schema is usable. A store already at the head revision is opened
            # without MLflow's check, which loads every migration script (store_schema).
            with schema_check_skipped(db):
                client = MlflowClient(tracking_uri=tracking_uri)
                client.search_experiments(max_results=1)
    except Timeout as exc:
        raise DeepmineError(
            f"the MLflow store {db} stayed locked by another process for "
            f"{STORE_LOCK_TIMEOUT_S:.0f} s ({db}.lock)",
            "wait for the other deepmine process to open the store, or stop it",
        ) from exc
    except Exception as exc:
        raise _store_error(tracking_uri, exc) from exc
    return client


def _create_sqlite(db: Path) -> None:
    """Build a new store's schema in a scratch file beside `db` and rename it into place.

    Why: MLflow creates a store by running some fifty migrations one after another; a Ctrl-C,
    SIGKILL or power cut among them would leave a half-migrated database that every later
    command refuses ("out-of-date database schema"). Renaming is atomic, so `db` is either
    absent or complete. Runs under the store lock, so scratch files left by a killed process
    are stale and removed. Later stores copy the first one's template (`store_schema`).
    """
    from mlflow import MlflowClient

    from deepmine.tracking import store_schema

    for stale in db.parent.glob(f".{db.name}.creating-*"):
        stale.unlink(missing_ok=True)
    scratch = db.with_name(f".{db.name}.creating-{os.getpid()}")
    # MLflow announces each step of the creation at INFO on stderr; a refusal printed after
    # it must still be the only line there
    quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in quiet]
    try:
        if store_schema.copy_template(scratch):
            os.replace(scratch, db)
            return
        for logger in quiet:
            logger.setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=f"sqlite:///{scratch}")
        client.search_experiments(max_results=1)
        _retire_mlflow_default(client)
        engine = getattr(getattr(client._tracking_client, "store", None), "engine", None)
        if engine is not None:  # release the file before it is renamed (private attribute)
            engine.dispose()
            store_schema.save_template(scratch)
        os.replace(scratch, db)
    finally:
        scratch.unlink(missing_ok=True)
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _retire_mlflow_default(client) -> None:
    """Soft-delete the empty `Default` experiment (id 0) MLflow puts in every new store.

    Why: beside deepmine's own `default` it looks like a second, empty home for the same runs.
    Deleting it, rather than renaming it to `default`, because MLflow fixed its artifact
    location to `<current directory>/mlruns/0` when it made it, and no API moves that: runs
    there would write into whatever folder the store was created from. Deleted, it is hidden
    in the UI and `mlflow experiments restore --experiment-id 0` brings it back. Only stores
    deepmine creates are touched: an existing store's `Default` may hold someone's runs.
    """
    found = client.get_experiment_by_name("Default")
    if found is not None and found.lifecycle_stage == "active":
        client.delete_experiment(found.experiment_id)


def _store_error(tracking_uri: str, exc: Exception) -> DeepmineError:
    """A store that cannot be opened, in one line (MLflow's own errors span a traceback)."""
    from deepmine.errors import first_line

    text = str(exc)
    reason = f"{type(exc).__name__}: {first_line(exc)[:300]}"
    if "out-of-date database schema" in text:
        fix = f"back up the store, then run `mlflow db upgrade {tracking_uri}`"
    elif "database is locked" in text:
        fix = "another process holds the SQLite store: wait for it, or stop it"
    else:
        fix = (
            "check that logger.tracking_uri names an MLflow store this user can read and "
            "write, or point it at a new file"
        )
    return DeepmineError(f"cannot open the MLflow store {tracking_uri} ({reason})", fix)


class _InterruptSafeClient:
    """An MlflowClient whose every call runs inside `deepmine.runtime.interrupts.critical()`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            from deepmine.runtime.interrupts import critical

            with critical():
                return attribute(*args, **kwargs)

        return call


def _check_server(uri: str) -> None:
    """Fail fast: MLflow's own client retries an unreachable server for minutes, and a server
    that refuses our credentials would only fail once a run is open. `/health` is asked through
    MLflow's own request code, so its TLS settings apply (`deepmine.tracking.probe`)."""
    from deepmine.tracking.probe import check_health

    check_health(uri, timeout_s=SERVER_TIMEOUT_S)
    _check_login(uri)


def _check_login(uri: str) -> None:
    """One authenticated request, sent exactly as MLflow's client will send every later one.

    `/health` answers anyone; a server with authentication on (`mlflow server --app-name
    basic-auth`) refuses the API with 401 (no or wrong credentials) or 403 (no permission).
    MLflow's own resolution of credentials is reused, so what is probed is what the run will
    use: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials),
    else MLFLOW_TRACKING_TOKEN, plus MLFLOW_TRACKING_AUTH and the TLS settings. The password
    never appears in a message.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds,
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=SERVER_TIMEOUT_S,
            raise_on_status=False,
        )
    except Exception as exc:
        from deepmine.errors import first_line

        reason = f"{type(exc).__name__}: {first_line(exc)[:300]}"
        raise DeepmineError(
            f"MLflow tracking server {_shown(uri)} did not answer an API request ({reason})",
            "check that logger.tracking_uri names an MLflow tracking server and that it is healthy",
        ) from exc
    if response.status_code in (401, 403):
        raise _refused(uri, response.status_code, creds)


def _refused(uri: str, status: int, creds) -> DeepmineError:
    """The one line for a server that refused the request's credentials (never the secret)."""
    account = (
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"
    )
    server = f"MLflow tracking server {_shown(uri)}"
    basic = bool(creds.username and creds.password)
    if status == 403:
        who = f"user '{creds.username}'" if basic else "these credentials"
        return DeepmineError(
            f"{server} denies {who} access to its experiments (HTTP 403)",
            "ask the server's admin for a permission on the experiments, or " + account,
        )
    if basic:
        return DeepmineError(
            f"{server} refused the credentials of user '{creds.username}' (HTTP 401)", account
        )
    if creds.token:
        return DeepmineError(
            f"{server} refused the token in MLFLOW_TRACKING_TOKEN (HTTP 401)",
            "set MLFLOW_TRACKING_TOKEN to a valid token, or " + account,
        )
    if creds.username or creds.password:
        missing = "MLFLOW_TRACKING_PASSWORD" if creds.username else "MLFLOW_TRACKING_USERNAME"
        return DeepmineError(
            f"{server} requires a login (HTTP 401) and {missing} is not set", account
        )
    return DeepmineError(f"{server} requires a login (HTTP 401)", account)


def _shown(uri: str) -> str:
    """`uri` as printed: a password written into it (http://user:pw@host) is masked."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def end_fluent_runs() -> None:
    """End runs left active on MLflow's fluent stack (KILLED: nobody closed them). deepmine logs
    through explicit clients, but user code (callbacks, autolog) may have used
    `mlflow.start_run`; a run left active would capture the next job's fluent calls. A process
    that never imported mlflow has none."""
    import sys

    if "mlflow" not in sys.modules:
        return
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status="KILLED")


def connect_store(cfg: DictConfig):
    """The store a composed config names (`cfg.logger`; the offline spool where `logger.offline`
    or `logger.failover` say so), or None for `logger=none`: how every command opens its store."""
    if not cfg.get("logger"):
        return None
    from deepmine.tracking.failover import store_for

    return store_for(cfg.logger)
