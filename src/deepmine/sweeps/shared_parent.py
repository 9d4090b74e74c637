"""The MLflow parent run of a shared Optuna study, held by several workers at once.

`deepmine.tracking.run.recorded_run` closes its run when its block ends; a shared parent must
outlive any one worker, so it is opened here without that promise: each worker beats while it
works, and its end decides the run's (see `deepmine.sweeps.shared_study` for who closes it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from deepmine.errors import DeepmineError, first_line
from deepmine.sweeps.record import SweepRecord
from deepmine.sweeps.shared_trials import WORKER, Tally, worker_name
from deepmine.tracking.run import HEARTBEAT_AT, HEARTBEAT_HOST, HEARTBEAT_PID, Heartbeat


class WorkerBeat(Heartbeat):
    """The parent's MLflow heartbeat, beaten by every worker: each beat writes host, pid and
    time in one batch (a plain `Heartbeat` writes host and pid once), so it names a worker that
    beat lately, not the first one, which may be gone."""

    def _beat(self) -> None:
        from deepmine.tracking.run import RecordedRun, utc_now_iso
        from deepmine.tracking.store import Store

        raw = Store(self._store.uri, self._client, None)  # this thread's writes bypass critical()
        while not self._stop.wait(self._every_s):
            with contextlib.suppress(Exception):
                beat = _identity() | {HEARTBEAT_AT: utc_now_iso()}
                RecordedRun(raw, self._run_id, "", "").set_tags(beat)


def _identity(worker: str | None = None) -> dict[str, str]:
    host, _, pid = (worker or worker_name()).rpartition(":")
    return {HEARTBEAT_HOST: host, HEARTBEAT_PID: pid}


class SharedParent:
    """This worker's hold on the study's parent run (`run` None: logger=none). It beats while
    the worker works; at the end the worker either closes it (the last one) or hands it on."""

    def __init__(self, record: SweepRecord, run=None, beat: WorkerBeat | None = None):
        self.record, self.run, self.beat = record, run, beat
        self.run_id = run.run_id if run is not None else None
        self.done = False

    def ensure_open(self) -> None:
        """Reopen a parent closed by a worker that stopped while this one was between trials."""
        if self.run is None:
            return
        client = self.record.store.client
        status = client.get_run(self.run_id).info.status
        if status != "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
            print(f"parent run     {self.run_id} was {status}: reopened", flush=True)

    def close(self, count: Tally) -> None:
        """The last worker: the summary is written (`record.finish`); the run ends FINISHED, or
        FAILED when trials failed."""
        self._stop_beat()
        if self.run is None:
            return
        client = self.record.store.client
        workers = sorted({t.user_attrs.get(WORKER, "?") for t in count.finished})
        self.run.set_tags({"deepmine.optuna.workers": " ".join(workers)})
        if self.run.end_status == "FINISHED":  # a stopped worker's KILLED is history now
            tags = client.get_run(self.run_id).data.tags
            for key in ("deepmine.status_reason", "deepmine.error"):
                if key in tags:
                    client.delete_tag(self.run_id, key)
        self.run.flush()
        client.set_terminated(self.run_id, self.run.end_status)

    def close_dead_children(self) -> None:
        """With no trial running, a child still RUNNING is a trial of a worker that died
        mid-trial (failed as stale and run again since): closed KILLED, as `deepmine runs
        doctor --fix` would close it."""
        if self.run is None:
            return
        from deepmine.tracking.sweep import set_tags

        store = self.record.store
        for child in self.record.children().values():
            if child.status == "RUNNING":
                reason = "its worker stopped beating; the trial was queued again"
                tags = {"deepmine.status_reason": "KILLED", "deepmine.error": reason}
                set_tags(store, child.run_id, tags)
                store.client.set_terminated(child.run_id, "KILLED")

    def leave(self, workers: list[str], why: str = "is done") -> None:
        """Others still work: the run stays RUNNING, its heartbeat naming one of them."""
        self._stop_beat()
        if self.run is not None and ":" in workers[0]:
            with contextlib.suppress(Exception):
                self.run.set_tags(_identity(workers[0]))
        print(
            f"this worker {why}; trials still run in {', '.join(workers)}: the last of them "
            f"closes the parent run {self.run_id or '(none: logger=none)'}",
            flush=True,
        )

    def stop(self, exc: BaseException, others: list[str]) -> None:
        """This worker stops on an error or Ctrl-C: the parent is closed KILLED (FAILED) as a
        single process would close it, unless others still work on the study."""
        self._stop_beat()
        from deepmine.runtime.interrupts import interrupted

        killed = interrupted(exc)
        if others:
            self.leave(others, why=f"stops ({'interrupted' if killed else type(exc).__name__})")
            return
        if self.run is None:
            return
        status = "KILLED" if killed else "FAILED"
        error = self.record.mask(f"{type(exc).__name__}: {first_line(exc)}")
        with contextlib.suppress(Exception):
            self.run.set_tags({"deepmine.status_reason": status, "deepmine.error": error})
        self.record.store.client.set_terminated(self.run_id, status)

    def _stop_beat(self) -> None:
        self.done = True
        if self.beat is not None:
            self.beat.stop()


@contextlib.contextmanager
def shared_parent(
    record: SweepRecord, reopen_run_id: str | None, others: Callable[[], list[str]]
) -> Iterator[SharedParent]:
    """The study's parent run, open for the block without being closed by it: unlike
    `deepmine.tracking.run.recorded_run`, its end is decided by the block (`close`, `leave`)
    or, on an exception, by whether `others()` still work."""
    from deepmine.runtime import interrupts

    Path(record.info.sweep_dir).mkdir(parents=True, exist_ok=True)
    if not record.config.get("logger"):
        record.info.save()
        with interrupts.installed():
            yield SharedParent(record)
        return
    held = None
    with interrupts.installed():
        try:
            # a Ctrl-C during the opening is held until the run is known, then raised in here
            with interrupts.critical():
                held = _open_parent(record, reopen_run_id)
            yield held
        except BaseException as exc:
            if held is None or held.done:
                raise
            record.close_orphans()
            try:
                still = others()
            except Exception:  # the study unreachable: nobody is known to work on
                still = []
            held.stop(exc, still)
            raise
        if not held.done:
            held._stop_beat()


def _open_parent(record: SweepRecord, reopen_run_id: str | None) -> SharedParent:
    from deepmine.tracking.run import RecordedRun
    from deepmine.tracking.store import connect_store

    store = record.store = connect_store(record.config)
    experiment = record.config.experiment_name
    experiment_id = store.experiment_id(experiment)
    if reopen_run_id:
        try:
            found = store.client.get_run(reopen_run_id)
        except Exception:  # MLflow's "run not found"
            found = None
        if found is None or found.info.lifecycle_stage == "deleted":
            raise DeepmineError(
                f"the study's parent run {reopen_run_id} is missing or deleted in "
                f"{record.mask(store.uri)}",
                "give every worker the same logger.tracking_uri as the first one",
            )
        if found.info.experiment_id != experiment_id:
            raise DeepmineError(
                f"the study's parent run {reopen_run_id} belongs to another experiment "
                f"({found.info.experiment_id})",
                "give every worker the same experiment_name as the first one",
            )
        if found.info.status != "RUNNING":
            store.client.update_run(reopen_run_id, status="RUNNING")
        run_id = reopen_run_id
    else:
        tags = record.parent_tags()
        created = store.client.create_run(experiment_id, run_name=record.run_name(), tags=tags)
        run_id = created.info.run_id
    run = RecordedRun(store, run_id, experiment, experiment_id, record.secrets)
    run.name = record.run_name()
    record.attach(run)
    beat = WorkerBeat(store, run_id)
    beat.start()
    return SharedParent(record, run, beat)
