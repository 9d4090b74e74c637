"""An Optuna search run by deepmine's Hydra sweeper, with a persistent, resumable study.

Why not the PyPI `hydra-optuna-sweeper`: it pins `optuna<3`, and its RDB storage breaks with
SQLAlchemy 2, which MLflow needs, so its studies cannot be stored or resumed next to MLflow.
This one uses Optuna's ask-and-tell API with current Optuna:

- the search space is Hydra sweep syntax (`deepmine.sweeps.space`), from `hydra.sweeper.params`
  plus any sweep overrides on the command line;
- each batch of `n_jobs` trials is asked from the study and handed to the configured launcher
  (basic, joblib, submitit) as ordinary Hydra jobs, whose job number is the trial number;
- jobs report intermediate values through Optuna's Lightning pruning callback into the same
  storage, so hopeless trials stop early (`deepmine.sweeps.job`);
- the study lives in a persistent storage (SQLite beside the sweeps by default); `resume=true`
  (or `resume=<study name>`) continues it, in the same sweep folder and the same MLflow parent
  run. Trials cut short by Ctrl-C, SIGTERM or a crash are marked FAIL with the user attribute
  `interrupted` and queued again, so a resumed search redoes exactly those.

That is a study worked by one process at a time: an existing study without `resume` is refused,
and a resumed one takes every RUNNING trial for a leftover of a dead process. With
`hydra.sweeper.shared=true` a study is worked by several processes at once, on one machine or
many, against one database (Optuna's own model: the same command on N machines): the first
creates it and its MLflow parent run, the others join, and they split `n_trials` between them.
What that changes (election of the parent, the budget, dead workers, who closes the parent)
lives in `deepmine.sweeps.shared_study`; the helpers below (telling a result, interrupting,
the summary's rows) serve both.

It is one module on purpose: a trial's life in a study (asked, launched, told, interrupted and
queued again, summarized) is told once here, for the single-process search and the shared one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from deepmine.errors import DeepmineError
from deepmine.sweeps.record import (
    SweepFailed,
    SweepInfo,
    SweepRecord,
    failure_line,
    forget_job_pickles,
)
from deepmine.sweeps.space import parse
from deepmine.sweeps.summary import JobRow

INTERRUPTED = "interrupted"
#: a trial queued again after an interruption (or a dead worker) names the one it redoes
RETRY_OF = "deepmine.retry_of"
#: a trial asked past the study's budget by a worker of a shared study, never run
SURPLUS = "deepmine.surplus"
#: the study user attr that makes a study shared (see `deepmine.sweeps.shared_study`)
SHARED = "deepmine.shared"
DIRECTIONS = ("maximize", "minimize")


@dataclass
class Search:
    """What the command line asks for, checked: the space, the objective's direction, which
    study in which storage."""

    space: object  # deepmine.sweeps.space.Space
    lines: list[str]  # the space as written: hydra.sweeper.params, then sweep overrides
    direction: str
    study_name: str
    resume: bool
    storage: str  # the URL as configured


def run_search(sweeper, arguments: list[str]) -> list:
    search = _checked(sweeper, arguments)
    if sweeper.settings.get("shared"):
        from deepmine.sweeps.shared_study import run_shared

        return run_shared(sweeper, search)
    return _run_alone(sweeper, search)


def _checked(sweeper, arguments: list[str]) -> Search:
    settings = sweeper.settings
    lines = [f"{k}={v}" for k, v in (settings.get("params") or {}).items()]
    space = parse([*lines, *arguments])
    if not space.distributions:
        raise DeepmineError(
            "the Optuna search space is empty",
            "give ranges in hydra.sweeper.params or as sweep overrides, e.g. "
            "'optimizer.lr=tag(log, interval(1e-4, 1e-2))'",
        )
    _refuse_secret_keys(space)
    direction = settings.direction
    if direction not in DIRECTIONS:
        raise DeepmineError(
            f"hydra.sweeper.direction={direction} is not one of {', '.join(DIRECTIONS)}",
            "use maximize or minimize",
        )
    study_name, resume = _study_name(settings.study_name, sweeper.config.get("resume"))
    return Search(space, [*lines, *arguments], direction, study_name, resume, settings.storage)


def _refuse_secret_keys(space) -> None:
    """A secret key (`+db.password=choice(a,b)`) is refused in the search space before the
    study exists: Optuna's storage keeps each trial's value of it (a float's or int's value as
    is, a categorical's index with the list of choices in the distribution's JSON), in clear,
    for as long as the study lives; masking the stored choices would hand the sampler, and a
    resumed or shared study's jobs, `***` instead of the value. A secret is not something to
    optimize: it takes one value (masked everywhere), or a grid sweeps its values (masked in
    every record)."""
    from deepmine.provenance.secrets import is_secret_key

    secret = [key for key in space.distributions if is_secret_key(key)]
    if secret:
        names = ", ".join(k.lstrip("+~") for k in secret)
        raise DeepmineError(
            f"the secret {names} cannot be searched by Optuna: its study storage would keep "
            "every value of it in clear",
            f"give it one value ({secret[0]}=<value>), or sweep its values with the grid "
            f"sweeper (hparams_search=grid {secret[0]}=<a>,<b>)",
        )


def _run_alone(sweeper, search: Search) -> list:
    """One process works the study (a new one, or a resumed one)."""
    import optuna

    config, settings = sweeper.config, sweeper.settings
    space, lines, direction = search.space, search.lines, search.direction
    study_name, resume = search.study_name, search.resume
    shown = shown_storage(settings.storage)
    storage = _storage(settings.storage)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if resume and study_name not in existing:
        known = ", ".join(sorted(existing)) or "none"
        raise DeepmineError(
            f"no Optuna study '{study_name}' to resume in {shown} (studies: {known})",
            "check the name, or drop resume to start a new search",
        )
    if study_name in existing and SHARED in existing[study_name].user_attrs:
        raise DeepmineError(
            f"Optuna study '{study_name}' in {shown} is shared by several workers "
            f"({existing[study_name].n_trials} trials)",
            "join it with hydra.sweeper.shared=true (and no resume), or pick "
            "hydra.sweeper.study_name=<new name>",
        )
    if not resume and study_name in existing:
        raise DeepmineError(
            f"Optuna study '{study_name}' already exists in {shown} "
            f"({existing[study_name].n_trials} trials)",
            "pass resume=true to continue it, or hydra.sweeper.study_name=<new name> to start "
            "another",
        )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler(settings),
        pruner=pruner(settings),
        direction=direction,
        load_if_exists=resume,
    )
    attrs = study.user_attrs
    if resume and attrs.get("deepmine.direction", direction) != direction:
        raise DeepmineError(
            f"study '{study_name}' was created to {attrs['deepmine.direction']}",
            f"resume it with hydra.sweeper.direction={attrs['deepmine.direction']}",
        )
    _requeue_interrupted(study)

    sweep_dir = Path(attrs.get("deepmine.sweep_dir") or config.hydra.sweep.dir)
    info = sweep_info(settings, search, sweep_dir)
    record = SweepRecord(config, info, lines, trials=int(settings.n_trials))
    pinned = [f"hydra.sweep.dir={sweep_dir}"]  # a resumed search keeps its folder
    pin_sweep_dir(config, sweep_dir)
    returns = []
    from deepmine.provenance.secrets import masked_logs

    reopen = attrs.get("deepmine.parent_run_id") if resume else None
    with record.opened(reopen_run_id=reopen), masked_logs(record.secrets):
        study.set_user_attr("deepmine.sweep_dir", str(sweep_dir))
        study.set_user_attr("deepmine.direction", direction)
        if record.parent is not None:
            study.set_user_attr("deepmine.parent_run_id", record.parent.run_id)
        remaining = int(settings.n_trials) - _finished(study)
        while remaining > 0:
            trials = [
                study.ask(space.distributions) for _ in range(min(settings.n_jobs, remaining))
            ]
            for group in consecutive(trials):
                jobs = [[*space.overrides(t.params), *pinned] for t in group]
                try:
                    results = sweeper.launcher.launch(jobs, initial_job_idx=group[0].number)
                except BaseException:
                    interrupt(study, [t for t in trials if is_running(study, t.number)])
                    raise
                forget_job_pickles(config)
                returns.append(results)
                for trial, result in zip(group, results, strict=True):
                    tell(study, trial, result, record.mask)
            remaining -= len(trials)
        rows = trial_rows(record, study)
        summary = record.finish(rows, config.get("optimized_metric"), direction)
        print(f"optuna study   {study_name} in {shown}", flush=True)
    if summary.failed:
        raise SweepFailed(
            failure_line(summary), f"see {Path(info.sweep_dir) / 'summary' / 'trials.md'}"
        )
    return returns


def sweep_info(settings, search: Search, sweep_dir: Path, worker: str | None = None) -> SweepInfo:
    """The note the jobs read (`deepmine-sweep.json`): the study and how to prune."""
    return SweepInfo(
        sweep_id=search.study_name,
        kind="optuna",
        sweep_dir=str(sweep_dir),
        swept=list(search.space.distributions),
        study={
            "storage": storage_url(settings.storage),
            "study_name": search.study_name,
            "pruning_metric": settings.get("pruning_metric") if settings.get("pruner") else None,
            # the storage keeps no pruner: each job builds the same one to decide
            "pruner": OmegaConf.to_container(settings.pruner) if settings.get("pruner") else None,
            "direction": search.direction,
        },
        worker=worker,
    )


def sampler(settings, seeded: bool = True):
    """The configured sampler; `seeded=False` drops its seed (the workers of a shared study:
    seeded alike, they would all propose the same trials)."""
    from hydra.utils import instantiate

    config = settings.get("sampler")
    if not config:
        return None
    if not seeded and "seed" in config:
        return instantiate(config, seed=None)
    return instantiate(config)


def pruner(settings):
    import optuna
    from hydra.utils import instantiate

    return instantiate(settings.pruner) if settings.get("pruner") else optuna.pruners.NopPruner()


def _study_name(configured: str, resume) -> tuple[str, bool]:
    """`resume=true` continues the configured study; `resume=<name>` that study."""
    if resume in (None, False):
        return configured, False
    if resume is True:
        return configured, True
    return str(resume), True


def _storage(url: str):
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in url:
        return optuna.storages.get_storage(url)
    return optuna.storages.RDBStorage(storage_url(url))


def storage_url(url: str) -> str:
    """The URL Optuna opens: a bare postgresql:// names the driver deepmine installs, psycopg2
    (SQLAlchemy 2.1 made psycopg 3 the default for it, 2.0 psycopg2; named, it works with
    either), as `deepmine server` does for MLflow's database."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def shown_storage(url: str) -> str:
    """The storage URL as printed: a password in it (postgresql://user:pw@host/db) masked."""
    from deepmine.provenance.secrets import mask_values, secret_values

    return mask_values(url, secret_values({"storage": url}))


def pin_sweep_dir(config, sweep_dir: Path) -> None:
    """Point the launcher's own folder at the (possibly resumed) sweep folder too."""
    from omegaconf import open_dict, read_write

    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(sweep_dir)


def retried(trials) -> set[int]:
    """The numbers of the trials queued again (an interrupted trial, a dead worker's one)."""
    return {t.user_attrs[RETRY_OF] for t in trials if t.user_attrs.get(RETRY_OF) is not None}


def is_interrupted(trial, redone: set[int]) -> bool:
    """Cut short and queued again: marked so by Ctrl-C, or failed for a dead worker (whose
    trial, already FAIL, cannot be marked) and named by its retry."""
    from optuna.trial import TrialState

    failed = trial.state == TrialState.FAIL
    return bool(trial.user_attrs.get(INTERRUPTED)) or (failed and trial.number in redone)


def _finished(study) -> int:
    """Trials that count towards n_trials: everything done, except interrupted ones."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=done)
        if not t.user_attrs.get(INTERRUPTED)
    )


def is_running(study, number: int) -> bool:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING


def interrupt(study, trials) -> None:
    """Mark trials cut short as FAIL/interrupted and queue their params again."""
    from optuna.trial import Trial, TrialState

    for trial in trials:
        frozen = study.get_trials(deepcopy=False)[trial.number]
        Trial(study, frozen._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: trial.number})


def _requeue_interrupted(study) -> None:
    """Trials left RUNNING by a process that died (SIGKILL, crash) are interrupted ones."""
    from optuna.trial import TrialState

    interrupt(study, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def consecutive(trials) -> list[list]:
    """Split asked trials into runs of consecutive numbers (job number == trial number)."""
    groups: list[list] = []
    for trial in trials:
        if groups and trial.number == groups[-1][-1].number + 1:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups


def tell(study, trial, result, mask=str) -> None:
    """Tell the study how a trial's job ended; its error (kept in the study's storage) goes
    through `mask` (the sweep's secret values masked)."""
    from hydra.core.utils import JobStatus
    from optuna import TrialPruned
    from optuna.trial import TrialState

    outcome = result._return_value  # see deepmine.sweeps.grid.job_rows
    if result.status == JobStatus.COMPLETED:
        if isinstance(outcome, int | float) and math.isfinite(outcome):
            study.tell(trial, float(outcome))
        else:
            trial.set_user_attr("error", f"the job returned {outcome!r}, not a number")
            study.tell(trial, state=TrialState.FAIL)
    elif isinstance(outcome, TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
    else:
        from deepmine.sweeps.record import error_line

        trial.set_user_attr("error", mask(error_line(outcome)))
        study.tell(trial, state=TrialState.FAIL)


def trial_rows(record: SweepRecord, study) -> list[JobRow]:
    """One row per trial of the study (resumed ones included, of every worker of a shared one,
    surplus ones left out), joined with the child runs."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    redone = retried(trials)
    children = record.children()
    states = {
        TrialState.COMPLETE: "FINISHED",
        TrialState.PRUNED: "PRUNED",
        TrialState.FAIL: "FAILED",
        TrialState.RUNNING: "RUNNING",
    }
    rows = []
    for trial in trials:
        if trial.state == TrialState.WAITING or trial.user_attrs.get(SURPLUS):
            continue
        child = children.get(trial.number)
        status = states.get(trial.state, trial.state.name)
        if is_interrupted(trial, redone):
            status = "INTERRUPTED"
        run_id = child.run_id if child else ""
        error = trial.user_attrs.get("error", "") or (child.error if child else "")
        if status == "FAILED" and not child:
            run_id = record.record_job_failure(trial.number, trial.params, DeepmineError(error))
        if child and record.parent is not None:
            from deepmine.tracking.sweep import set_tags

            set_tags(record.store, child.run_id, {"deepmine.optuna.state": trial.state.name})
        value = trial.value
        if trial.state == TrialState.PRUNED:
            # Optuna stores a pruned trial's last intermediate value as its value; that is not
            # the objective, so it goes in the note instead
            reported = trial.intermediate_values
            if reported and not error:
                step = max(reported)
                metric = record.info.study.get("pruning_metric")
                error = f"pruned after epoch {step} ({metric} {reported[step]:.6g})"
            value = None
        rows.append(JobRow(trial.number, status, value, dict(trial.params), run_id, error))
    return rows
