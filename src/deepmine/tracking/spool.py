"""The offline spool: a local MLflow store that takes a run when the tracking server cannot.

Why a store of its own and not a queue of pending calls: a spooled run is a complete MLflow run
(params, tags, metric histories, datasets, logged model, artifacts, statuses), readable with
`deepmine runs`, `deepmine ui --tracking-uri` and MLflow itself while the server is away, and
`deepmine sync` (`deepmine.tracking.sync`) copies it to the server later with the MLflow client
APIs. The spool is an SQLite store, `<spool_dir>/mlflow.db`, with its artifacts beside it in
`<spool_dir>/mlartifacts/` (`logger.spool_dir`, by default `<project>/mlruns-offline/`).

A run goes there with `logger.offline=true`, or, with `logger.failover=true`, when the server
named by `logger.tracking_uri` cannot be reached at the start: then a warning says so, once per
process, and every later run of the same process (the jobs of a sweep) follows its parent into
the spool instead of splitting the sweep between two stores. Each spooled run is tagged
`deepmine.offline.target` with the store it was meant for, which `deepmine sync` uses when no
`--to` is given.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from deepmine.errors import DeepmineError
from deepmine.tracking.store import Store, _check_server, _shown, connect

SPOOL_DB = "mlflow.db"
#: the store a spooled run was meant for (absent when its URI carries a password)
TARGET_TAG = "deepmine.offline.target"
#: tracking URIs this process found unreachable and failed over from (warned once each)
_FAILED_OVER: set[str] = set()
REACH_TIMEOUT_S = 3.0


def spool_uri(spool_dir: str | Path) -> str:
    """The SQLite URI of the spool in `spool_dir` (absolute, whatever the current directory)."""
    return f"sqlite:///{Path(spool_dir).expanduser().resolve() / SPOOL_DB}"


def source_uri(given: str) -> str:
    """The store `deepmine sync` reads: a spool folder, an SQLite file, or a store URI. A local
    store that does not exist is refused rather than created (sync never writes its source)."""
    if "://" in given:
        if given.startswith("sqlite:///"):
            db = Path(given.removeprefix("sqlite:///"))
            if not db.is_file():
                raise _no_spool(given)
        return given
    path = Path(given).expanduser().resolve()
    db = path / SPOOL_DB if path.is_dir() else path
    if not db.is_file():
        raise _no_spool(str(path))
    return f"sqlite:///{db}"


def _no_spool(where: str) -> DeepmineError:
    return DeepmineError(
        f"no offline spool store at {where} (no {SPOOL_DB} there)",
        "name the folder a run was spooled into (its logger.spool_dir), e.g. `deepmine sync "
        "/path/to/mlruns-offline`; nothing was recorded offline if there is none",
    )


def reachable(uri: str) -> bool:
    """Whether anything accepts a TCP connection at the host and port of `uri`: tells a server
    that is gone (fail over) from one that answers and refuses (a login: never failed over, a
    spool would only hide the wrong password until the sync)."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=REACH_TIMEOUT_S):
            return True
    except OSError:
        return False


def failed_over_before(uri: str) -> bool:
    return uri in _FAILED_OVER


def note_failover(uri: str, spool_dir: str | Path, reason: str) -> None:
    """Warn, once per process and server, that runs go to the spool instead."""
    if uri in _FAILED_OVER:
        return
    _FAILED_OVER.add(uri)
    print(
        f"warning: {reason}; logger.failover=true: recording into the offline spool "
        f"{Path(spool_dir).expanduser().resolve()} instead. "
        f"`deepmine sync --to {_shown(uri)}` copies it to the server once it is back",
        file=sys.stderr,
        flush=True,
    )


def target_tag(uri: str) -> dict[str, str]:
    """The tag naming where a spooled run belongs; none for a URI with a password in it."""
    return {} if urlsplit(uri).password else {TARGET_TAG: uri}


def open_spool(logger) -> Store | None:
    """The spool store for a run with config `logger` (`cfg.logger`): always with
    `logger.offline`; with `logger.failover` only if the server cannot be reached now or this
    process failed over from it before (a sweep's jobs follow their parent); else None."""
    uri = str(logger.tracking_uri)
    spool_dir = logger.get("spool_dir") or "mlruns-offline"
    if not logger.get("offline") and not (
        logger.get("failover") and _failover_needed(uri, spool_dir)
    ):
        return None
    return open_spool_store(uri, spool_dir)


def open_spool_store(uri: str, spool_dir: str | Path) -> Store:
    """The spool at `spool_dir`, its runs tagged with the server `uri` they belong to."""
    store = connect(spool_uri(spool_dir))
    store.run_tags = target_tag(uri)
    return store


def _failover_needed(uri: str, spool_dir: str | Path) -> bool:
    """A server that answers and refuses is not failed over from: its one-line refusal is
    raised as without failover. The probe is the store's own (`store._check_server`)."""
    if not uri.startswith(("http://", "https://")):
        return False
    if failed_over_before(uri):
        return True
    try:
        _check_server(uri)
    except DeepmineError as exc:
        if reachable(uri):
            raise
        note_failover(uri, spool_dir, exc.problem)
        return True
    return False
