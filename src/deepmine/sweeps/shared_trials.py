"""The trials of a shared Optuna study, seen from one worker: what counts towards the study's
budget, which trial is past it, and Optuna's heartbeat for the trials this worker runs.

The design is told in `deepmine.sweeps.shared_study`; this is its bookkeeping against the
storage, where every worker's trials are.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deepmine.errors import DeepmineError, first_line
from deepmine.sweeps.optuna_search import (
    RETRY_OF,
    SURPLUS,
    Search,
    is_interrupted,
    retried,
    storage_url,
)

#: the worker that asked a trial (trial user attr) and ran a child run (tag): host:pid
WORKER = "deepmine.optuna.worker"
#: a fresh database's tables created by several workers at once collide; tries, 1 s apart
STORAGE_TRIES = 5


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Tally:
    """The trials of a study that count towards its budget, by state: interrupted trials (their
    retry counts instead) and surplus ones are left out."""

    finished: list = field(default_factory=list)  # COMPLETE, PRUNED, FAIL
    running: list = field(default_factory=list)
    waiting: list = field(default_factory=list)

    @classmethod
    def of(cls, study) -> Tally:
        return cls.of_trials(study.get_trials(deepcopy=False))

    @classmethod
    def of_trials(cls, trials) -> Tally:
        count, redone = cls(), retried(trials)
        for trial in trials:
            if trial.user_attrs.get(SURPLUS) or is_interrupted(trial, redone):
                continue
            if trial.state.name in ("COMPLETE", "PRUNED", "FAIL"):
                count.finished.append(trial)
            elif trial.state.name == "RUNNING":
                count.running.append(trial)
            elif trial.state.name == "WAITING":
                count.waiting.append(trial)
        return count

    @property
    def counted(self) -> int:
        return len(self.finished) + len(self.running) + len(self.waiting)

    def complete(self, n_trials: int) -> bool:
        return len(self.finished) >= n_trials and not self.running and not self.waiting

    def workers(self) -> list[str]:
        """The workers of the running trials, in the order of their trials."""
        return list(dict.fromkeys(t.user_attrs.get(WORKER, "?") for t in self.running))


def is_surplus(study, number: int, n_trials: int) -> bool:
    """Trial `number` comes after `n_trials` trials that count: it is past the budget. Trials
    are numbered in the order the storage creates them, so of two workers racing for the last
    slot exactly the later one is surplus."""
    count = Tally.of(study)
    counted = (*count.finished, *count.running, *count.waiting)
    return sum(1 for t in counted if t.number < number) >= n_trials


def given_back(study, trial, n_trials: int, beats: TrialBeats) -> bool:
    """A trial past the budget (see `is_surplus`) is told FAIL, marked surplus, and not run."""
    if not is_surplus(study, trial.number, n_trials):
        return False
    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=_state("FAIL"))
    beats.discard(trial._trial_id)
    print(
        f"trial {trial.number} is past the study's {n_trials} trials: given back, not run",
        flush=True,
    )
    return True


def ask(study, search: Search, beats: TrialBeats):
    """A trial for this worker: marked as its own and beating from the start (a trial without
    a beat is never taken for stale)."""
    with quiet():  # "heartbeat is supposed to be used with Study.optimize": beats does it
        trial = study.ask(search.space.distributions)
    beats.add(trial._trial_id)
    trial.set_user_attr(WORKER, worker_name())
    return trial


def open_storage(url: str, stale_after_s: int, shown: str):
    """The RDB storage with Optuna's trial heartbeat. The tables of a fresh database created by
    several workers at once collide (PostgreSQL: a duplicate type or relation; SQLite: a table
    that already exists), so such a failed opening is tried again; any other is one line."""
    import optuna

    if "://" not in url:
        raise DeepmineError(
            f"hydra.sweeper.storage={shown} is not a database URL",
            "a shared study lives in a database every worker reaches: "
            "postgresql://user@host:5432/optuna (or sqlite:////abs/path.db on one machine)",
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {
        "heartbeat_interval": max(1, stale_after_s // 4),
        "grace_period": stale_after_s,
    }
    # Optuna 4.9 renamed failed_trial_callback (deprecated, removed in 6)
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in params
        else "failed_trial_callback"
    )
    kwargs[callback] = _requeue_stale
    for attempt in range(1, STORAGE_TRIES + 1):
        try:
            with quiet():
                return optuna.storages.RDBStorage(storage_url(url), **kwargs)
        except Exception as exc:
            if attempt == STORAGE_TRIES or not _collided(exc):
                from deepmine.provenance.secrets import mask_values, secret_values

                reason = mask_values(first_line(exc), secret_values({"storage": url}))
                raise DeepmineError(
                    f"cannot open the Optuna storage {shown}: {reason}",
                    "check the URL, that the database exists, and that its user may create "
                    "tables in it",
                ) from exc
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _collided(exc: BaseException) -> bool:
    """Another process created the same table or row at the same instant."""
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "duplicate key", "unique constraint"))


def _requeue_stale(study, trial) -> None:
    """Optuna's callback for a trial failed for lack of heartbeat: queue its params again."""
    worker = trial.user_attrs.get(WORKER, "?")
    with quiet():
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
    print(f"trial {trial.number} of worker {worker} stopped beating: queued again", flush=True)


def fail_stale(study) -> None:
    import optuna

    with quiet():
        optuna.storages.fail_stale_trials(study)


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's experimental-feature warnings about the heartbeat, which is used on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class TrialBeats:
    """Optuna's heartbeat for the trials this worker runs, from one daemon thread (RDBStorage
    sessions are thread-local). A failed beat is ignored: a worker's trials are only taken for
    dead after `stale_after_s` without any."""

    def __init__(self, storage, every_s: float):
        self._storage = storage
        self._every_s = every_s
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deepmine-optuna-beat", daemon=True)

    def __enter__(self) -> TrialBeats:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def add(self, trial_id: int) -> None:
        self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                ids = list(self._ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):
                    self._storage.record_heartbeat(trial_id)
