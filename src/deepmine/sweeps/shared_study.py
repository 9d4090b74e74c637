"""Several processes, one Optuna study: `hydra.sweeper.shared=true`.

Optuna's own model for a search across machines is "run the same command on N machines against
one database". A researcher starts `deepmine train -m hparams_search=<name>
hydra.sweeper.shared=true hydra.sweeper.storage=postgresql://...` on each machine and expects
them to split the trials, record one search in MLflow, and stop when `n_trials` are done. How:

- Creation, race-free: every worker calls `create_study`; the storage keeps study names unique,
  so exactly one wins (the creator) and the others get `DuplicatedStudyError` and load it
  (joiners). A fresh database's tables, created by workers at the same instant, collide the
  same way; that is retried.
- One parent run, elected by the same race: only the creator opens an MLflow parent run. It
  then publishes it in the study user attr `deepmine.shared` (parent run id, search space,
  creator, its folder); joiners wait for that attr (`PARENT_WAIT_S`, then one line) and
  reopen that run. The parent is keyed by the study: tag `deepmine.optuna.study`. A study with
  deepmine's attrs but no `deepmine.shared` was made by a single process and is not joined.
- The budget is the study's: before asking, a worker counts every worker's trials that will
  count (finished, running, queued; not interrupted, not surplus). Two workers racing for the
  last slot both get a trial; the storage numbers trials in the order it creates them, so a
  trial preceded by `n_trials` counted ones is surplus: it is told FAIL with the user attr
  `deepmine.surplus`, never run, and left out of every count and of the summary.
- Dead workers, with Optuna's own heartbeat (RDBStorage `heartbeat_interval`/`grace_period`):
  each worker beats for the trials it runs (a thread: `Study.optimize` would, an ask-and-tell
  loop must), and before every ask fails the trials whose beat is older than
  `hydra.sweeper.stale_after_s`; the storage's callback queues each again with
  `deepmine.retry_of`, as Ctrl-C does in a single-process search. Unlike a single process, a
  worker never takes the RUNNING trials it finds at start for leftovers: they are the others'.
- The parent's end: a worker leaves when nothing is left to ask. The last one (no trial running,
  the budget met) writes the summary of every trial of the study and closes the parent
  FINISHED, or FAILED when trials failed (children a dead worker left RUNNING: KILLED).
  Each worker checks after its own last tell, so the worker whose tell came last always sees
  everything done; two that finish at the same instant both write the same summary and
  status. A worker that finishes while others still run leaves the parent RUNNING and says
  who closes it. A process started once the study is complete runs nothing, says so in one
  line, exits 0 and leaves the parent as it is.
- Ctrl-C or SIGTERM of one worker: its running trials are failed as interrupted and queued
  again (whoever asks next redoes them); it closes KILLED only its own children, and the parent
  only when no other worker has a trial running; otherwise the parent stays RUNNING and the
  others finish the study. A worker that finds the parent closed by one that stopped (another
  was between two trials) reopens it before launching.
- The parent's heartbeat (`deepmine runs doctor`) names whichever worker beat last: every beat
  writes host, pid and time, and a worker that leaves hands it to one that still works, so the
  shared parent is never taken for an orphan while a worker lives.
- Folders: each worker writes into `<hydra.sweep.dir>/<host>-<pid>`: its own
  `deepmine-sweep.json` (the jobs it launches tag their runs `deepmine.optuna.worker` from it)
  and its trials' job folders. Workers may share `hydra.sweep.dir` (a shared filesystem) or
  not (other machines, other working directories); the closing worker's folder gets the
  summary.
- The database password: in the URL it is masked in what the parent records and prints, but
  the command line shows it to every user of the machine (`ps`); PostgreSQL's own PGPASSWORD
  (or ~/.pgpass) keeps it off, as `deepmine server` does.
- Each worker's sampler draws its own seed: seeded alike, two workers would propose the same
  startup trials. A shared search is not reproducible trial for trial anyway: who asks first
  depends on timing.

This module is the protocol; `deepmine.sweeps.shared_trials` counts the trials and beats for
them, `deepmine.sweeps.shared_parent` holds the parent run.
"""

from __future__ import annotations

import time
from pathlib import Path

from deepmine.errors import DeepmineError
from deepmine.sweeps.optuna_search import (
    SHARED,
    Search,
    consecutive,
    interrupt,
    is_running,
    pin_sweep_dir,
    pruner,
    sampler,
    shown_storage,
    sweep_info,
    tell,
    trial_rows,
)
from deepmine.sweeps.record import SweepFailed, SweepRecord, failure_line
from deepmine.sweeps.shared_parent import shared_parent
from deepmine.sweeps.shared_trials import (
    Tally,
    TrialBeats,
    ask,
    fail_stale,
    given_back,
    open_storage,
    quiet,
    worker_name,
)

#: how long a joiner waits for the creator to publish the parent run (it opens the MLflow run
#: first: a second or two, more on a loaded machine or a slow server)
PARENT_WAIT_S = 120.0


def run_shared(sweeper, search: Search) -> list:
    """Create or join the study, work it until nothing is left to ask, and close the parent
    when this worker is the last."""
    config, settings = sweeper.config, sweeper.settings
    if search.resume:
        raise DeepmineError(
            "resume=... and hydra.sweeper.shared=true do not go together",
            "drop resume: a shared study is joined (or created) by its name, "
            "hydra.sweeper.study_name",
        )
    n_trials, me = int(settings.n_trials), worker_name()
    shown = shown_storage(search.storage)
    stale_after_s = int(settings.get("stale_after_s") or 0)
    if stale_after_s < 4:
        raise DeepmineError(
            f"hydra.sweeper.stale_after_s={stale_after_s} is too short to tell a dead worker",
            "give it at least 4 seconds (the default 120 suits most clusters)",
        )
    storage = open_storage(search.storage, stale_after_s, shown)
    study, created = _create_or_join(storage, search, settings)
    folder = Path(config.hydra.sweep.dir) / me.replace(":", "-")
    record = SweepRecord(config, sweep_info(settings, search, folder, me), search.lines, n_trials)
    record.own_jobs = set()  # after Ctrl-C, only this worker's children are closed
    if created:
        published = None
    else:
        published = _wait_for_parent(study, search, shown)
        _check_same_search(published, search, study, bool(config.get("logger")))
        fail_stale(study)
        count = Tally.of(study)
        if count.complete(n_trials):
            print(
                f"study {search.study_name} is complete ({len(count.finished)} of {n_trials} "
                "trials); nothing to run",
                flush=True,
            )
            return []
    pin_sweep_dir(config, folder)
    run_id = published.get("parent_run_id") if published else None
    with shared_parent(record, run_id, lambda: _other_workers(study, me)) as parent:
        if created:
            study.set_user_attr(
                SHARED,
                {
                    "parent_run_id": parent.run_id,
                    "creator": me,
                    "sweep_dir": str(folder),
                    "distributions": _distributions(search),
                },
            )
            if parent.run is not None:  # published first: the joiners wait for it
                record.describe(parent.run)
            print(f"optuna study   {search.study_name} created in {shown}, shared", flush=True)
        else:
            print(f"optuna study   {search.study_name} in {shown}: joined", flush=True)
        print(f"worker         {me}, folder {folder}", flush=True)
        returns = _work(sweeper, search, study, storage, record, parent, folder)
        count = Tally.of(study)
        if count.running:
            parent.leave(count.workers())
            _check_own(record, study, n_trials)
            return returns
        parent.close_dead_children()
        rows = trial_rows(record, study)
        summary = record.finish(rows, config.get("optimized_metric"), search.direction)
        parent.close(count)
        closed = " and closed the parent run" if parent.run is not None else ""
        print(
            f"optuna study   {search.study_name} complete: this worker, the last, wrote the "
            f"summary{closed}",
            flush=True,
        )
    if summary.failed:
        raise SweepFailed(failure_line(summary), f"see {folder / 'summary' / 'trials.md'}")
    return returns


def _work(sweeper, search, study, storage, record, parent, folder: Path) -> list:
    """Ask, launch and tell until the study's budget is taken: every worker's trials count."""
    n_trials, n_jobs = int(sweeper.settings.n_trials), int(sweeper.settings.n_jobs)
    pinned = [f"hydra.sweep.dir={folder}"]
    every_s = max(1, int(sweeper.settings.stale_after_s) // 4)
    returns = []
    with TrialBeats(storage, every_s) as beats:
        while True:
            fail_stale(study)
            count = Tally.of(study)
            wanted = n_trials - count.counted
            if wanted <= 0 and not count.waiting:
                return returns
            parent.ensure_open()
            asked: list = []
            try:
                for _ in range(max(1, min(n_jobs, wanted))):
                    asked.append(ask(study, search, beats))
                kept = [t for t in asked if not given_back(study, t, n_trials, beats)]
                record.own_jobs.update(t.number for t in kept)
                for group in consecutive(kept):
                    jobs = [[*search.space.overrides(t.params), *pinned] for t in group]
                    results = sweeper.launcher.launch(jobs, initial_job_idx=group[0].number)
                    returns.append(results)
                    for trial, result in zip(group, results, strict=True):
                        _tell(study, trial, result, record, beats)
            except BaseException:
                interrupt(study, [t for t in asked if is_running(study, t.number)])
                raise


def _tell(study, trial, result, record: SweepRecord, beats: TrialBeats) -> None:
    beats.discard(trial._trial_id)
    if is_running(study, trial.number):
        tell(study, trial, result, record.mask)
    else:  # another worker took it for dead (no beat within stale_after_s) and queued it again
        print(f"trial {trial.number} was failed as stale meanwhile: its result is not told")


def _other_workers(study, me: str) -> list[str]:
    return [w for w in Tally.of(study).workers() if w != me]


def _check_own(record: SweepRecord, study, n_trials: int) -> None:
    """A worker that leaves before the study is complete answers for its own trials."""
    mine = [
        t
        for t in Tally.of(study).finished
        if t.number in (record.own_jobs or ()) and t.state.name == "FAIL"
    ]
    if mine:
        error = mine[0].user_attrs.get("error", "failed")
        raise SweepFailed(
            f"{len(mine)} of this worker's {len(record.own_jobs)} trials failed; "
            f"trial {mine[0].number}: {error}",
            "the summary is written by the last worker to finish (see the parent run)",
        )


def _create_or_join(storage, search: Search, settings) -> tuple[object, bool]:
    """(study, created): the storage keeps names unique, so of workers starting at the same
    instant exactly one creates it."""
    import optuna

    kwargs = {
        "study_name": search.study_name,
        "storage": storage,
        "sampler": sampler(settings, seeded=False),
        "pruner": pruner(settings),
    }
    try:
        with quiet():
            return optuna.create_study(direction=search.direction, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def _wait_for_parent(study, search: Search, shown: str) -> dict:
    """The creator's `deepmine.shared` attr, once it has opened the parent run."""
    deadline = time.monotonic() + PARENT_WAIT_S
    storage, study_id = study._storage, study._study_id
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if SHARED in attrs:
            return attrs[SHARED]
        if "deepmine.direction" in attrs:  # what a single-process search records
            raise DeepmineError(
                f"Optuna study '{search.study_name}' in {shown} was started by a single process, "
                "without hydra.sweeper.shared=true",
                "continue it with resume=true (one process), or give the shared search "
                "hydra.sweeper.study_name=<new name>",
            )
        if time.monotonic() > deadline:
            raise DeepmineError(
                f"Optuna study '{search.study_name}' in {shown} got no parent run within "
                f"{PARENT_WAIT_S:.0f} s: the worker that created it did not open one",
                "see that worker's error; if it died, delete the study (`optuna delete-study "
                f"--study-name {search.study_name} --storage <url>`) and start again",
            )
        time.sleep(0.5)


def _distributions(search: Search) -> dict[str, str]:
    from optuna.distributions import distribution_to_json

    return {k: distribution_to_json(d) for k, d in search.space.distributions.items()}


def _check_same_search(published: dict, search: Search, study, logged: bool) -> None:
    """A joiner runs the same search as the creator: space, direction, MLflow or not."""
    name = search.study_name
    theirs = published.get("distributions") or {}
    mine = _distributions(search)
    if theirs != mine:
        differ = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
        raise DeepmineError(
            f"this worker's search space differs from study '{name}' in {', '.join(differ)}",
            "run every worker of a shared study with the same command",
        )
    direction = study.direction.name.lower()
    if direction != search.direction:
        raise DeepmineError(
            f"study '{name}' was created to {direction}, this worker would {search.direction}",
            f"use hydra.sweeper.direction={direction}, as its other workers do",
        )
    if logged != (published.get("parent_run_id") is not None):
        first = "without MLflow (logger=none)" if logged else "with an MLflow parent run"
        raise DeepmineError(
            f"study '{name}' was started {first}, unlike this worker",
            "run every worker of a shared study with the same logger",
        )
