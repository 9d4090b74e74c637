"""Runs that never closed: tell a live RUNNING run from one whose process is gone.

A process killed by SIGKILL, the OOM killer or a lost machine cannot close its run, which then
stays RUNNING in MLflow forever. Every run deepmine opens carries a heartbeat
(`deepmine.tracking.run.Heartbeat`: host, pid, and a time refreshed while the run is open):

- on this host, the run is `dead` when its pid is gone, or now belongs to a process started
  after the run (a reused pid);
- on another host, whose processes cannot be seen from here, it is `stale` when its heartbeat
  is older than `stale_after_s`;
- a RUNNING run without a heartbeat (recorded before heartbeats, or by another tool) is
  `unknown` and never touched;
- a sweep's child on this host whose process is alive while the process that launched it (its
  sweep's controller: the parent run's heartbeat pid, or the shared Optuna worker named on the
  child) is gone is `orphaned`: a SIGKILLed `launcher=submitit_local` controller leaves its
  jobs running, each still training (and beating) for a sweep that no longer exists;
- a run of a SLURM job (tag `deepmine.slurm.job_id`) is asked about in the queue first, which
  knows jobs on every node: it is `dead` when its job has left the queue or ended, whatever its
  heartbeat says. That also covers a run parked SCHEDULED by a preempted job whose next
  attempt never came (the job was cancelled while pending). Where `squeue` cannot answer (not
  installed, no SLURM_CONF), the heartbeat decides as for any run.

`fix` closes orphans as KILLED with `deepmine.status_reason` saying why (an orphaned job's
process is first sent SIGTERM, so it closes its run KILLED itself, then SIGKILL if it does not
end in time), and touches nothing else: metrics, artifacts and the checkpoints beside them
stay, so `deepmine train resume=<run id>` continues the run.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deepmine.errors import DeepmineError
from deepmine.runtime import slurm
from deepmine.runtime.placement import SLURM_JOB_TAG
from deepmine.tracking.run import HEARTBEAT_AT, HEARTBEAT_HOST, HEARTBEAT_PID
from deepmine.tracking.store import Store, connect

#: statuses of runs that still expect a process: RUNNING, and SCHEDULED (a preempted SLURM job's
#: run, parked for the job's next attempt)
OPEN_STATUSES = ("RUNNING", "SCHEDULED")
#: A heartbeat is refreshed every 30 s; ten missed beats make a run on another host stale.
STALE_AFTER_S = 300.0
ALIVE, DEAD, STALE, UNKNOWN, ORPHANED = "alive", "dead", "stale", "unknown", "orphaned"
ORPHANS = (DEAD, STALE, ORPHANED)
#: an orphaned job is given this long to close its own run after SIGTERM, before SIGKILL
STOP_GRACE_S = 60.0
#: on a child of a shared Optuna study: the worker (host:pid) that launched it
WORKER_TAG = "deepmine.optuna.worker"
REASON_TAG = "deepmine.status_reason"


@dataclass
class RunState:
    run_id: str
    name: str
    experiment: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    state: str  # for RUNNING runs: alive, dead, stale or unknown; else the status, lowercase
    why: str
    host: str | None = None
    pid: int | None = None
    heartbeat_at: datetime | None = None

    @property
    def orphan(self) -> bool:
        return self.status in OPEN_STATUSES and self.state in ORPHANS


def open_store(tracking_uri: str) -> Store:
    """The store at `tracking_uri`; an SQLite file must already exist (listing runs never
    creates a store)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if db.is_absolute() and not db.is_file():
            raise DeepmineError(
                f"there is no MLflow store at {db}",
                "pass --tracking-uri sqlite:////abs/path/mlflow.db of an existing store",
            )
    return connect(tracking_uri)


def run_state(
    run,
    experiment: str = "",
    stale_after_s: float = STALE_AFTER_S,
    now: datetime | None = None,
    host: str | None = None,
) -> RunState:
    """What is really going on with MLflow run `run` (an `mlflow.entities.Run`)."""
    tags = run.data.tags
    info = run.info
    found = RunState(
        run_id=info.run_id,
        name=info.run_name or "",
        experiment=experiment,
        status=info.status,
        state=info.status.lower(),
        why="",
        host=tags.get(HEARTBEAT_HOST),
        pid=_int(tags.get(HEARTBEAT_PID)),
        heartbeat_at=_time(tags.get(HEARTBEAT_AT)),
    )
    if info.status not in OPEN_STATUSES:
        return found
    job = tags.get(SLURM_JOB_TAG)
    queued = _slurm_state(job) if job else None
    if queued is not None:
        found.state, found.why = queued
        return found
    if info.status != "RUNNING":
        return found
    now = now or datetime.now(UTC)
    age = f"{(now - found.heartbeat_at).total_seconds():.0f} s ago" if found.heartbeat_at else "?"
    if found.host is None or found.pid is None:
        found.state, found.why = UNKNOWN, "no heartbeat recorded"
    elif found.host == (host or socket.gethostname()):
        gone = _process_gone(found.pid, found.heartbeat_at)
        if gone:
            found.state = DEAD
            found.why = f"process {found.pid} on {found.host} {gone} (last heartbeat {age})"
        else:
            found.state, found.why = ALIVE, f"process {found.pid} is running"
    elif found.heartbeat_at is None or (now - found.heartbeat_at).total_seconds() > stale_after_s:
        found.state = STALE
        found.why = (
            f"process {found.pid} on {found.host}: last heartbeat {age}, "
            f"older than {stale_after_s:.0f} s"
        )
    else:
        found.state, found.why = ALIVE, f"heartbeat from {found.host} {age}"
    return found


def _slurm_state(job: str) -> tuple[str, str] | None:
    """(alive|dead, why) from SLURM's queue for `job`; None when the queue cannot be asked."""
    try:
        state = slurm.job_state(job)
    except DeepmineError:
        return None
    if state is None:
        return DEAD, f"SLURM job {job} is no longer in the queue"
    if state in slurm.LIVE_STATES:
        return ALIVE, f"SLURM job {job} is {state}"
    return DEAD, f"SLURM job {job} ended {state}"


def list_runs(
    store: Store,
    experiment: str | None = None,
    stale_after_s: float = STALE_AFTER_S,
    only_running: bool = False,
) -> list[RunState]:
    """Every run of `experiment` (default: of every active experiment), newest first."""
    if experiment is not None:
        found = store.client.get_experiment_by_name(experiment)
        if found is None:
            raise DeepmineError(
                f"there is no experiment '{experiment}' in {store.uri}",
                "run `deepmine runs` to see the experiments and their runs",
            )
        experiments = [found]
    else:
        experiments = store.client.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return []
    states, parents = [], {}
    for status in OPEN_STATUSES if only_running else (None,):
        token = None
        while True:
            page = store.client.search_runs(
                list(names),
                filter_string=f"attributes.status = '{status}'" if status else "",
                order_by=["attributes.start_time DESC"],
                max_results=1000,
                page_token=token,
            )
            for run in page:
                state = run_state(run, names[run.info.experiment_id], stale_after_s)
                _check_sweep(store, run, state, parents)
                states.append(state)
            token = page.token
            if not token:
                break
    return states


def find_orphans(
    store: Store, experiment: str | None = None, stale_after_s: float = STALE_AFTER_S
) -> list[RunState]:
    """RUNNING runs whose process is gone (dead) or has not beaten for too long (stale), and
    SCHEDULED runs of SLURM jobs that left the queue."""
    running = list_runs(store, experiment, stale_after_s, only_running=True)
    return [state for state in running if state.orphan]


def _check_sweep(store: Store, run, state: RunState, parents: dict, host: str | None = None):
    """Mark `state` (an alive child of a sweep on this host) orphaned when its sweep's
    controller process is gone. Only what this host can see is judged: a controller on another
    host, a SLURM job (the queue owns it) or a job run inside its controller (same pid) is left
    alone. `parents` caches the parent runs read."""
    from deepmine.tracking.sweep import PARENT_TAG

    tags = run.data.tags
    parent_id = tags.get(PARENT_TAG)
    here = host or socket.gethostname()
    if state.state != ALIVE or not parent_id or state.host != here or tags.get(SLURM_JOB_TAG):
        return
    if tags.get(WORKER_TAG):  # a shared study's worker: the parent's heartbeat names any worker
        where, _, pid = tags[WORKER_TAG].rpartition(":")
        # the worker started before the child did: a later process holds a reused pid
        since = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
    else:
        if parent_id not in parents:
            try:
                parents[parent_id] = store.client.get_run(parent_id)
            except Exception:  # a deleted parent: nothing to judge the controller by
                parents[parent_id] = None
        parent = parents[parent_id]
        if parent is None:
            return
        where, pid = parent.data.tags.get(HEARTBEAT_HOST), parent.data.tags.get(HEARTBEAT_PID)
        since = _time(parent.data.tags.get(HEARTBEAT_AT))
    pid = _int(pid)
    if where != here or pid is None or pid == state.pid:
        return
    gone = _process_gone(pid, since)
    if gone:
        state.state = ORPHANED
        state.why = (
            f"process {state.pid} is running, but its sweep's controller (process {pid}, "
            f"parent run {parent_id}) {gone}"
        )


def stop_orphaned(store: Store, state: RunState, grace_s: float = STOP_GRACE_S) -> str:
    """Stop the process of orphaned run `state` and see its run closed; says how it ended.

    SIGTERM first: the job's own handler closes its run KILLED, with its last metrics. Only the
    process the heartbeat names is signalled, and only while it is still the run's (its create
    time is checked against the heartbeat, as for a dead run: a reused pid is never signalled).
    A process still there after `grace_s` is SIGKILLed, and a run still open is marked KILLED."""
    import psutil

    how = "its process had ended already"
    if state.pid is not None and not _process_gone(state.pid, state.heartbeat_at):
        try:
            process = psutil.Process(state.pid)
            process.terminate()
            try:
                process.wait(grace_s)
                how = f"process {state.pid} stopped by SIGTERM"
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(30)
                how = f"process {state.pid} SIGKILLed ({grace_s:.0f} s after SIGTERM)"
        except psutil.NoSuchProcess:
            pass
    if store.client.get_run(state.run_id).info.status in OPEN_STATUSES:
        mark_killed(store, state)
        return f"{how}; marked KILLED"
    return f"{how}; it closed its run {store.client.get_run(state.run_id).info.status}"


def mark_killed(store: Store, state: RunState) -> None:
    """Close orphan `state` as KILLED, ended at its last heartbeat, with the reason as a tag."""
    reason = f"KILLED by `deepmine runs doctor --fix`: {state.why}"
    store.client.set_tag(state.run_id, REASON_TAG, reason[:8000])
    end_ms = int(state.heartbeat_at.timestamp() * 1000) if state.heartbeat_at else None
    store.client.set_terminated(state.run_id, "KILLED", end_time=end_ms)


def _process_gone(pid: int, heartbeat_at: datetime | None) -> str | None:
    """Why process `pid` on this host is not the run's any more, or None while it is.

    A live run's process started before its own heartbeats; one started after the last
    heartbeat holds a pid reused since the run's process died."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "is gone"
    except PermissionError:
        pass  # another user's process: it exists
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return "is gone (zombie)"
        # heartbeat times are whole seconds: two seconds of slack
        if heartbeat_at and process.create_time() > heartbeat_at.timestamp() + 2:
            return "is gone (its pid now belongs to a newer process)"
    except ImportError:
        return None
    except psutil.NoSuchProcess:
        return "is gone"
    except psutil.Error:
        return None
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _time(text: str | None) -> datetime | None:
    try:
        found = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    if found is not None and found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found
