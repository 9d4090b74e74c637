"""The life of one MLflow run: open, record, close with the status that really happened.

`recorded_run` ends the run FINISHED when its block returns, KILLED on Ctrl-C or SIGTERM
(Lightning turns Ctrl-C into `sys.exit(1)`; the KeyboardInterrupt is still its context), and
FAILED on any other exception, with the error as a tag and the traceback as an artifact (known
secret values masked in both, see `deepmine.provenance.secrets`). No path leaves a run RUNNING.

No path but one: a process killed by SIGKILL (or the OOM killer, or a lost machine) runs no
code, so its run stays RUNNING. While a run is open it therefore carries a heartbeat: the host
and pid of its process, and a time refreshed every `HEARTBEAT_EVERY_S` seconds, from which
`deepmine runs doctor` (`deepmine.tracking.doctor`) tells a live run from an orphan.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

from deepmine.errors import first_line
from deepmine.tracking.params import batches, flatten, portable
from deepmine.tracking.store import Store

HEARTBEAT_EVERY_S = 30.0
HEARTBEAT_HOST = "deepmine.heartbeat.host"
HEARTBEAT_PID = "deepmine.heartbeat.pid"
HEARTBEAT_AT = "deepmine.heartbeat.at"


def utc_now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


class Heartbeat:
    """Marks a run as alive: host and pid once, then the time every `every_s` seconds.

    A daemon thread writing one tag through the raw MlflowClient: not through the store's
    interrupt-safe wrapper, whose `critical()` counter belongs to the main thread (a signal
    deferred by this thread would be raised here, not in training). Signals are only delivered
    to the main thread, so this thread's writes are never cut in half. A failed beat is ignored:
    the heartbeat must never break training.
    """

    def __init__(self, store: Store, run_id: str, every_s: float = HEARTBEAT_EVERY_S):
        self._store = store
        self._client = getattr(store.client, "_client", store.client)
        self._run_id = run_id
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from mlflow.entities import RunTag

        tags = {HEARTBEAT_HOST: socket.gethostname(), HEARTBEAT_PID: os.getpid()}
        tags[HEARTBEAT_AT] = utc_now_iso()
        with contextlib.suppress(Exception):  # main thread: the interrupt-safe client
            self._store.client.log_batch(
                self._run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
            )
        if self._every_s > 0:
            self._thread = threading.Thread(
                target=self._beat, name=f"deepmine-heartbeat-{self._run_id[:8]}", daemon=True
            )
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._every_s):
            with contextlib.suppress(Exception):
                self._client.set_tag(self._run_id, HEARTBEAT_AT, utc_now_iso())

    def stop(self) -> None:
        """Stop beating before the run is closed (a beat never lands after its end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class RecordedRun:
    """A handle on one open run; all writes go through the store's client."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        experiment_name: str,
        experiment_id: str,
        secret_values: Iterable[str] = (),
    ):
        self.store = store
        self.client = store.client
        self.run_id = run_id
        self.experiment_name = experiment_name
        self.experiment_id = experiment_id
        self.name = ""  # the run's name, for what the run draws (plot titles)
        self.end_status = "FINISHED"
        self.loggers: list = []
        #: every param logged so far, as stored: what the group key is computed from
        self.params: dict[str, str] = {}
        # masked in the free text the run records on its own (error tag, traceback)
        self.secret_values = set(secret_values)

    def fail(self, reason: str) -> None:
        """Close the run FAILED when its block ends, without an exception (a sweep whose jobs
        failed has itself run to the end)."""
        from deepmine.provenance.secrets import mask_values

        self.end_status = "FAILED"
        reason = mask_values(reason, self.secret_values)
        self.set_tags({"deepmine.status_reason": "FAILED", "deepmine.error": reason})

    def ui_path(self) -> str:
        """The run's page in the MLflow UI, in its model-training view."""
        return (
            f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        )

    def experiment_ui_path(self) -> str:
        """The experiment's runs in the MLflow UI's model-training view (MLflow 3 opens an
        experiment in its GenAI view without `workflowType`)."""
        return f"#/experiments/{self.experiment_id}?workflowType=machine_learning"

    def log_params(self, tree: dict) -> dict[str, str]:
        """Log `tree` (nested or flat) as params without machine paths (`params.portable`);
        returns them as stored."""
        from mlflow.entities import Param

        logged = {}
        for chunk in batches(portable(flatten(tree))):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk.items()])
            logged.update(chunk)
        self.params.update(logged)
        return logged

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Final values (not curves) at `step`, in batches of the store's limit."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[start : start + 1000])

    def set_tags(self, tags: dict[str, object]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)[:8000]) for k, v in tags.items() if v is not None]
        for start in range(0, len(entries), 100):
            self.client.log_batch(self.run_id, tags=entries[start : start + 100])

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)

    def lightning_logger(self, with_history: bool = False, flush_every_s: float = 5.0):
        """A Lightning logger streaming into this run, flushed before the run closes;
        `with_history` preloads the metrics the run already has (a resumed run draws its
        learning curves from the start)."""
        from deepmine.tracking.logger import MlflowRunLogger

        logger = MlflowRunLogger(self.client, self.run_id, self.experiment_name, flush_every_s)
        self.loggers.append(logger)
        if with_history:
            for key in self.client.get_run(self.run_id).data.metrics:
                points = self.client.get_metric_history(self.run_id, key)
                logger.history[key] = [(p.step, p.value) for p in points]
                logger.stored.update((key, p.step, p.value) for p in points)
        return logger

    def flush(self) -> None:
        """Wait until every metric the run's loggers were given is in the store."""
        for logger in self.loggers:
            logger.flush()


@contextlib.contextmanager
def recorded_run(
    store: Store,
    experiment_name: str,
    run_name: str,
    tags: dict[str, str],
    reopen_run_id: str | None = None,
    heartbeat_every_s: float = HEARTBEAT_EVERY_S,
    secret_values: Iterable[str] = (),
) -> Iterator[RecordedRun]:
    """Open a run, yield it, and always close it with FINISHED, FAILED or KILLED.

    `reopen_run_id` continues an existing run of the experiment instead (a resumed sweep): it is
    set back to RUNNING, its tags updated, and closed the same way. `secret_values` (see
    `deepmine.provenance.secrets.secret_values`) are masked in the error and traceback of a failure.
    """
    from deepmine.runtime.interrupts import Preempted, critical, interrupted

    experiment_id = store.experiment_id(experiment_name)
    # a spool's runs name the store they belong to (`deepmine sync` copies them there)
    tags = {**tags, **(store.run_tags or {})}
    run = heartbeat = None
    try:
        # A Ctrl-C/SIGTERM during the opening is held until the run exists and then raised
        # here, inside the `try`, so the run is closed KILLED; raised as soon as the store
        # call returned (as `critical` alone does) it would leave the new run RUNNING.
        with critical():
            if reopen_run_id:
                run_id = _reopen(store, reopen_run_id, experiment_id, tags)
            else:
                created = store.client.create_run(experiment_id, run_name=run_name, tags=tags)
                run_id = created.info.run_id
            run = RecordedRun(store, run_id, experiment_name, experiment_id, secret_values)
            run.name = (
                store.client.get_run(run_id).info.run_name if reopen_run_id else run_name
            ) or ""
            heartbeat = Heartbeat(store, run_id, heartbeat_every_s)
            heartbeat.start()
        yield run
    except BaseException as exc:
        if run is None:
            raise
        heartbeat.stop()
        if isinstance(exc, Preempted):
            _park(run)
            raise
        killed = interrupted(exc)
        if isinstance(exc, SystemExit) and not killed and exc.code in (0, None):
            run.flush()
            store.client.set_terminated(run.run_id, "FINISHED")
            raise
        status = "KILLED" if killed else "FAILED"
        with contextlib.suppress(Exception):  # recording the failure must not hide it
            run.flush()  # the metrics up to the failure are part of its record
        with contextlib.suppress(Exception):
            _record_error(run, exc, status)
        store.client.set_terminated(run.run_id, status)
        raise
    heartbeat.stop()
    try:
        run.flush()
    except BaseException:
        store.client.set_terminated(run.run_id, "FAILED")
        raise
    store.client.set_terminated(run.run_id, run.end_status)


def _park(run: RecordedRun) -> None:
    """A preempted run waits for its job's next attempt: its metrics so far are flushed and it
    is SCHEDULED (MLflow's status for a run that has yet to run), not closed, so neither the
    UI nor `runs doctor` takes it for a finished or a dead one. The attempt that continues it
    sets it RUNNING again; if none comes, `runs doctor` closes it KILLED."""
    with contextlib.suppress(Exception):
        run.flush()
    run.set_tags({"deepmine.status_reason": "PREEMPTED: waiting for the job's next attempt"})
    run.store.client.update_run(run.run_id, status="SCHEDULED")


def _reopen(store: Store, run_id: str, experiment_id: str, tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    from deepmine.errors import DeepmineError

    try:
        found = store.client.get_run(run_id)
    except MlflowException:
        found = None
    if found is None or found.info.lifecycle_stage == "deleted":
        raise DeepmineError(
            f"MLflow run {run_id} is missing or deleted in {store.uri}",
            "restore it (`mlflow runs restore`) or start a new one",
        )
    if found.info.experiment_id != experiment_id:
        raise DeepmineError(
            f"MLflow run {run_id} belongs to another experiment ({found.info.experiment_id})",
            "resume with the experiment_name it was recorded under",
        )
    store.client.update_run(run_id, status="RUNNING")
    RecordedRun(store, run_id, "", experiment_id).set_tags(tags)
    return run_id


def _record_error(run: RecordedRun, exc: BaseException, status: str) -> None:
    from deepmine.provenance.secrets import mask_values

    # a secret can sit in an error message (a value echoed back, an interpolated option)
    text = mask_values("".join(traceback.format_exception(exc)), run.secret_values)
    error = mask_values(f"{type(exc).__name__}: {first_line(exc)}", run.secret_values)
    run.set_tags({"deepmine.status_reason": status, "deepmine.error": error})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traceback.txt"
        path.write_text(text)
        run.log_file(path, "error")
