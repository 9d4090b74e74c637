"""The sweeper's side of a recorded sweep: the parent run, the note jobs read, the summary.

Before any job starts, the sweeper (one process) connects to the store, which creates and
migrates a fresh SQLite DB and the experiment exactly once (parallel jobs racing to migrate a new
DB is a known MLflow failure), opens the parent run and writes `deepmine-sweep.json` into the
sweep folder. Each job, in whatever process or machine the launcher puts it, reads that file to
open its run as a child of the parent (see `deepmine.sweeps.job`).

The parent is named by its space (`grid lr×seed`), and it records the base config with the
swept keys marked: `optimizer.lr = swept: 1e-3,1e-2`, not the base value `0.001` the sweep never
ran at (a swept config group, `net=mlp,cnn`, drops the base choice's `net.*` params too).

Secrets (`provenance.secrets`) are masked in everything the parent records: its tags, params,
`sweep/multirun.yaml`, the summary, and the errors of failed jobs. Each job masks its own run.

It is one module on purpose: the parent run's life, from its opening through the jobs' note to
the summary it closes with, is one story that the grid, the Optuna search and a shared Optuna
study (`deepmine.sweeps.shared_parent`, which opens and closes its parent itself) all tell.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deepmine.errors import EXIT_FAILED, DeepmineError, first_line
from deepmine.sweeps.summary import JobRow, Summary

SWEEP_FILE = "deepmine-sweep.json"


class SweepFailed(DeepmineError):
    """Some jobs of a sweep failed; the others ran and everything is recorded."""

    exit_code = EXIT_FAILED


@dataclass
class SweepInfo:
    """What a job needs to know about the sweep it belongs to."""

    sweep_id: str
    kind: str  # grid | optuna
    sweep_dir: str
    swept: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment_name: str | None = None
    study: dict | None = None  # optuna: storage, study_name, pruning_metric
    worker: str | None = None  # a shared Optuna study: the worker (host:pid) launching the jobs

    def save(self) -> None:
        path = Path(self.sweep_dir) / SWEEP_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(self), indent=2))
        os.replace(partial, path)  # a job never reads half a file

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepInfo | None:
        path = Path(sweep_dir) / SWEEP_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def task_config(config: DictConfig) -> dict:
    """The sweep's base config as plain data: everything but the `hydra` node, resolved, with
    the per-job output folder replaced by the sweep folder, and its secrets masked."""
    from deepmine.provenance.secrets import mask_config

    return mask_config(_task(config))


def _task(config: DictConfig) -> DictConfig:
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    OmegaConf.set_readonly(task, False)
    with contextlib.suppress(Exception):
        task.paths.output_dir = config.hydra.sweep.dir
    return task


def honest_params(config: dict, swept: dict[str, str]) -> dict[str, str]:
    """The base config as flat params, each swept key (and everything under it, for a swept
    config group) replaced by one param saying what was swept."""
    from deepmine.sweeps.names import bare_key
    from deepmine.tracking.params import flatten

    params = flatten(config)
    for key, values in swept.items():
        name = bare_key(key)
        params = {k: v for k, v in params.items() if k != name and not k.startswith(name + ".")}
        params[name] = values
    return params


def sweep_secrets(config: DictConfig) -> set[str]:
    """The secret values of a sweep: in its base config, on its command line, and the password
    in its Optuna storage URL (`postgresql://user:pw@host/db`, given as a `hydra.` override,
    which the task config does not hold)."""
    from deepmine.provenance.secrets import secret_values

    overrides = [*OmegaConf.select(config, "hydra.overrides.task", default=[]), *sys.argv[1:]]
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    return secret_values(_task(config), overrides) | secret_values({"storage": str(storage)})


def forget_job_pickles(config: DictConfig) -> None:
    """Delete the pickles a submitit launcher left for jobs it has returned: `*_submitted.pkl`
    is the job's whole config and `*_result.pkl` its Hydra JobReturn, both with the secrets in
    clear (the job needs the real values). Once `launch` returned, nothing reads them again;
    the jobs' logs (`*_log.out`, `*_log.err`) stay. Only this sweep's own folder is touched."""
    folder = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    if not folder or "%j" not in str(folder):
        return
    root = Path(str(folder).split("%j", 1)[0])
    for path in root.glob("*/*.pkl"):
        path.unlink(missing_ok=True)


class SweepRecord:
    """Opens the parent run, lets the sweeper launch, and closes it with the summary."""

    def __init__(
        self, config: DictConfig, info: SweepInfo, space: list[str], trials: int | None = None
    ):
        self.config = config
        self.info = info
        self.space = space
        self.trials = trials  # an Optuna search's n_trials, for the parent's name
        self.store = None
        self.parent = None
        self.secrets = sweep_secrets(config)
        #: a worker of a shared Optuna study: the job numbers it launched, the only children
        #: it may close after Ctrl-C (None: every child is this process's)
        self.own_jobs: set[int] | None = None

    def mask(self, text: str) -> str:
        """`text` with the sweep's secret values masked (free text: errors, tracebacks)."""
        from deepmine.provenance.secrets import mask_values

        return mask_values(text, self.secrets)

    @contextlib.contextmanager
    def opened(self, reopen_run_id: str | None = None) -> Iterator[SweepRecord]:
        """The parent run is open for the block (no run at all with `logger=none`); it is
        closed FINISHED, FAILED (jobs failed) or KILLED (Ctrl-C/SIGTERM)."""
        from deepmine.runtime import interrupts

        logger = self.config.get("logger")
        Path(self.info.sweep_dir).mkdir(parents=True, exist_ok=True)
        if not logger:
            self.info.save()
            with interrupts.installed():
                yield self
            return
        from deepmine.tracking.run import recorded_run
        from deepmine.tracking.store import connect_store

        self.store = connect_store(self.config)
        experiment = self.config.experiment_name
        with (
            interrupts.installed(),
            recorded_run(
                self.store,
                experiment,
                self.run_name(),
                self.parent_tags(),
                reopen_run_id,
                secret_values=self.secrets,
            ) as parent,
        ):
            self.attach(parent)
            if reopen_run_id:
                self.store.client.update_run(parent.run_id, name=self.run_name())
            else:
                self.describe(parent)
            try:
                yield self
            except BaseException:
                self.close_orphans()
                raise

    def attach(self, parent) -> None:
        """`parent` (open) is this sweep's parent run: the note jobs read names it."""
        self.parent = parent
        self.info.parent_run_id = parent.run_id
        self.info.tracking_uri = self.store.uri
        self.info.experiment_name = parent.experiment_name
        self.info.save()

    def describe(self, parent) -> None:
        """What a new parent records once: the base config with the swept keys as swept, the
        space, and the whole multirun config (secrets masked)."""
        from deepmine.provenance.secrets import mask_text

        space = self._space()
        parent.log_params(honest_params(task_config(self.config), self.swept_params()))
        from deepmine.sweeps.names import bare_key

        # `+x.api_token=a,b` sweeps a new key: MLflow refuses a `+` in a param's name
        parent.log_params({f"sweep.space.{bare_key(line.split('=')[0])}": line for line in space})
        parent.log_text("\n".join(space) + "\n", "sweep/space.txt")
        multirun = mask_text(OmegaConf.to_yaml(self.config), self.secrets)
        parent.log_text(multirun, "sweep/multirun.yaml")

    def run_name(self) -> str:
        from deepmine.sweeps.names import sweep_run_name

        return sweep_run_name(self.info.kind, self.info.swept, self.trials)

    def swept_params(self) -> dict[str, str]:
        """Each swept key -> `swept: <its values as written>` (the last entry for a key wins,
        as in the search itself; secret values masked)."""
        found = {}
        for line in self._space():
            key, _, values = line.partition("=")
            if key.strip() in self.info.swept:
                found[key.strip()] = f"swept: {values.strip()}"
        return found

    def _space(self) -> list[str]:
        """The search space as recorded: a secret key's values are masked (an Optuna space
        holds every command-line override)."""
        from deepmine.provenance.secrets import mask_overrides

        return mask_overrides(self.space, self.secrets)

    def parent_tags(self) -> dict[str, str]:
        from deepmine.provenance.lineage import git_state, source_tags
        from deepmine.provenance.secrets import mask_overrides

        git = git_state(Path(self.config.paths.root_dir))
        argv = mask_overrides(sys.argv, self.secrets)
        tags = {
            **source_tags(git),
            "deepmine.argv": " ".join(argv),
            "mlflow.source.name": "deepmine train -m",
            "deepmine.command": " ".join(["deepmine", "train", *argv[1:]]),
            "deepmine.sweep.id": self.info.sweep_id,
            "deepmine.sweep.kind": self.info.kind,
            "deepmine.sweep.dir": self.info.sweep_dir,
            "deepmine.sweep.space": " ".join(self._space()),
            "deepmine.sweep.launcher": str(self.config.hydra.launcher.get("_target_", "")),
        }
        if self.info.study:  # the parent of an Optuna search is keyed by its study's name
            tags["deepmine.optuna.study"] = self.info.study["study_name"]
        return {key: self.mask(value) for key, value in tags.items()}

    # --- jobs -----------------------------------------------------------------------------

    def children(self) -> dict:
        if self.parent is None:
            return {}
        from deepmine.tracking.sweep import child_runs

        return child_runs(self.store, self.parent.experiment_id, self.parent.run_id)

    def record_job_failure(self, job: int, params: dict, exc: BaseException | None) -> str:
        """A FAILED child for a job that returned an error without having opened a run."""
        if self.parent is None:
            return ""
        from deepmine.sweeps.names import job_run_name
        from deepmine.tracking.sweep import JOB_TAG, PARENT_TAG, SWEEP_ID_TAG, record_failed_job

        error = self.mask(error_line(exc))
        text = self.mask("".join(traceback.format_exception(exc))) if exc else error
        tags = {
            PARENT_TAG: self.parent.run_id,
            SWEEP_ID_TAG: self.info.sweep_id,
            JOB_TAG: str(job),
            "deepmine.sweep.kind": self.info.kind,
        }
        return record_failed_job(
            self.store,
            self.parent.experiment_id,
            self.mask(job_run_name(self.info.kind, self.info.swept, job, params)),
            tags,
            {f"sweep.{k}": self.mask(str(v)) for k, v in params.items()},
            error,
            text,
        )

    def close_orphans(self) -> None:
        """After Ctrl-C, children still RUNNING in a launcher that died with this process
        (in-process, joblib or Ray workers: Ray kills a departing driver's tasks) are closed
        KILLED; cluster jobs keep running. A worker of a shared study closes only its own
        (`own_jobs`): the others' are alive."""
        target = str(self.config.hydra.launcher.get("_target_", "")).lower()
        dies_with_us = ("basic", "joblib", "deepmine_launchers.ray")
        if self.parent is None or not any(name in target for name in dies_with_us):
            return
        from deepmine.tracking.sweep import set_tags

        with contextlib.suppress(Exception):
            for child in self.children().values():
                mine = self.own_jobs is None or child.job in self.own_jobs
                if child.status == "RUNNING" and mine:
                    set_tags(self.store, child.run_id, {"deepmine.status_reason": "KILLED"})
                    self.store.client.set_terminated(child.run_id, "KILLED")

    # --- the end ----------------------------------------------------------------------------

    def _masked_row(self, row: JobRow) -> JobRow:
        """A summary row as recorded: a swept secret key's value is `***`, and known secret
        values are masked in the rest (a failed job's error echoes what it was given)."""
        from deepmine.provenance.secrets import MASK, is_secret_key

        params = {
            k: MASK if is_secret_key(k) else (self.mask(v) if isinstance(v, str) else v)
            for k, v in row.params.items()
        }
        return replace(row, params=params, error=self.mask(row.error))

    def finish(self, rows: list[JobRow], objective_name: str, direction: str) -> Summary:
        """Write the summary beside the sweep and into the parent run; mark the parent FAILED
        when jobs failed. The caller raises `SweepFailed` after the parent is closed."""
        from deepmine.sweeps.names import TRIAL_DIGITS

        rows = [self._masked_row(row) for row in rows]
        objective_name = self.mask(objective_name or "objective")
        summary = Summary(
            rows,
            objective_name,
            direction,
            experiment_id=self.parent.experiment_id if self.parent is not None else "",
            title=self.run_name(),
            digits=TRIAL_DIGITS if self.info.kind == "optuna" else None,
        )
        folder = Path(self.info.sweep_dir) / "summary"
        files = summary.write(folder)
        if self.parent is not None:
            for path in files:
                self.parent.log_file(path, "summary")
            best = summary.best
            tags = {
                "deepmine.sweep.jobs": str(len(rows)),
                "deepmine.sweep.failed_jobs": str(len(summary.failed)),
                "mlflow.note.content": f"Sweep `{self.info.sweep_id}`\n\n{summary.markdown()}",
            }
            metrics = {}
            if best:
                tags["deepmine.sweep.best_run_id"] = best.run_id
                tags["deepmine.sweep.best_job"] = str(best.job)
                from deepmine.sweeps.names import bare_key

                best_tags = {
                    f"deepmine.sweep.best.{bare_key(k)}": v for k, v in best.params.items()
                }
                tags.update({k: str(v) for k, v in best_tags.items()})
                metrics[f"best/{objective_name}"] = best.objective
            config = summary.best_config
            if config:
                tags["deepmine.sweep.best_config"] = config.label
                stats = config.stats
                prefix = f"agg/{objective_name}"
                metrics.update(
                    {
                        f"{prefix}/mean": stats.mean,
                        f"{prefix}/std": stats.std,
                        f"{prefix}/n": stats.n,
                    }
                )
            for key, value in metrics.items():
                self.store.client.log_metric(self.parent.run_id, key, value, step=len(rows))
            self.parent.set_tags(tags)
            if summary.failed:
                self.parent.fail(failure_line(summary))
        print(f"sweep summary  {folder / 'trials.md'}", flush=True)
        if self.parent is not None:
            print(f"parent run     {self.parent.run_id}", flush=True)
        return summary


def failure_line(summary: Summary) -> str:
    failed = summary.failed
    first = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"{len(failed)} of {len(summary.rows)} jobs failed; job {first.job}: {first.error}{more}"


def error_line(exc: BaseException | None) -> str:
    if exc is None:
        return "the job returned no result"
    return (
        first_line(exc)
        if isinstance(exc, DeepmineError)
        else f"{type(exc).__name__}: {first_line(exc)}"
    )
