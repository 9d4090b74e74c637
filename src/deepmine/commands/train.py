"""`deepmine train`: compose -> check -> seed -> build -> open run -> fit -> test -> record.

Every check a user can fail (config types, seed, data version, tracking store) runs before the
MLflow run is opened (`deepmine.run.checks`), so bad input leaves no run behind; from the moment
the run is open, it is closed FINISHED, FAILED or KILLED whatever happens. Returns the objective
(`optimized_metric`) for sweepers. What is recorded, named and printed lives in `deepmine.run`;
this module only orders the steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from deepmine.config import register_resolvers
from deepmine.errors import DeepmineError, first_line
from deepmine.project import config_dir
from deepmine.run.checks import (
    check_override_types,
    check_register,
    check_seed,
    check_values,
    verify_data,
)
from deepmine.run.errors import report_errors
from deepmine.runtime import interrupts, quiet, slurm, timeline
from deepmine.tracking.store import connect_store

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@report_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


def train(cfg: DictConfig) -> float | None:
    """One run (or one job of a sweep); the process is left as it was found (see
    `deepmine.runtime.process_state`), so the next job in the same process starts clean."""
    from deepmine.runtime.process_state import isolated
    from deepmine.tracking.store import end_fluent_runs

    timeline.start_job()
    timeline.mark("composed")
    quiet.silence_lightning_tips()  # before any Trainer is built
    with isolated(end_fluent_runs):
        return _train(cfg)


def _train(cfg: DictConfig) -> float | None:
    from deepmine.run.console import print_config, print_summary
    from deepmine.run.resume import resumed_config
    from deepmine.sweeps.job import current_job

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    check_override_types(cfg, hydra_cfg.job.config_name, overrides)
    resumed = None
    if cfg.get("resume") not in (None, False) and hydra_cfg.mode != RunMode.MULTIRUN:
        cfg, resumed = resumed_config(cfg, hydra_cfg, cfg.resume, overrides)
    seed = check_seed(cfg)
    check_values(cfg)
    check_register(cfg)
    if slurm.started_ranks() and slurm.global_rank() > 0:
        # srun started every rank of this run as a task; rank 0's task owns the run
        from deepmine.run.rank import train_rank
        from deepmine.runtime.distributed import adopt_slurm_ranks

        adopt_slurm_ranks()
        train_rank(cfg)
        return None
    job = current_job()
    data_tags = verify_data(cfg)
    timeline.mark("data_checked")
    store = connect_store(cfg)
    timeline.mark("store_ready")
    if resumed is None and store is not None:
        resumed = _parked_by_this_job(cfg, store)
    if cfg.get("print_config"):
        print_config(cfg)

    from deepmine.run.build import build, build_datamodule
    from deepmine.run.fit import fit_and_test
    from deepmine.runtime import distributed
    from deepmine.runtime.seeding import seed_everything

    seed_everything(seed, deterministic=bool(cfg.trainer.get("deterministic")))
    output_dir = Path(cfg.paths.output_dir)
    # Optuna's pruning hook broadcasts its decision from rank 0; the ranks deepmine starts
    # build their parts from the config alone, so searches over DDP runs do not prune.
    pruning = job.callbacks() if job and not distributed.is_ddp(cfg) else []
    pruned_errors = job.pruned_errors() if pruning else ()
    # The data fills the config's null shape keys before DDP ranks get the resolved config.
    datamodule = build_datamodule(cfg)
    data_tags.update(getattr(datamodule, "read_tags", dict)())  # e.g. the delimiter sep=auto found
    with distributed.ranks(cfg, output_dir):
        parts = build(cfg, extra_callbacks=pruning, datamodule=datamodule)
        timeline.mark("built")
        if store is None:
            result = fit_and_test(cfg, parts, output_dir)
            print_summary(result, parts.task, None, None)
            return result["objective"]
        return _recorded(cfg, parts, store, overrides, seed, data_tags, job, pruned_errors, resumed)


def _parked_by_this_job(cfg: DictConfig, store):
    """A requeued SLURM job's earlier attempt parked its run: continue that one, in its own
    output folder (a single run's next attempt would otherwise get a new timestamped one)."""
    from omegaconf import open_dict

    from deepmine.run.preemption import parked_run

    parked = parked_run(store, cfg.experiment_name)
    if parked is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(parked.output_dir)
        print(f"resuming      run {parked.run_id} (SLURM attempt {slurm.attempt()})", flush=True)
    return parked


def _recorded(
    cfg, parts, store, overrides, seed, data_tags, job, pruned_errors, resumed=None
) -> float | None:
    """Fit and test inside an MLflow run that is closed FINISHED, FAILED or KILLED."""
    from deepmine.provenance.lineage import git_state, start_pip_freeze
    from deepmine.provenance.secrets import mask_overrides, mask_values, secret_values
    from deepmine.run import records
    from deepmine.run.console import print_summary
    from deepmine.run.fit import RunFailed, failure_fix, fit_and_test
    from deepmine.run.names import run_name
    from deepmine.runtime.placement import placement_tags
    from deepmine.tracking.run import recorded_run

    output_dir = Path(cfg.paths.output_dir)
    # the secret values, found once: masked in every tag, param, artifact, name and error
    secrets = secret_values(cfg, overrides)
    git = git_state(Path(cfg.paths.root_dir))
    pip_freeze = start_pip_freeze(Path(cfg.paths.cache_dir), git)
    if resumed:  # the run keeps the tags of its start; the resume adds its own
        tags = {
            "deepmine.resumed.checkpoint": str(resumed.checkpoint or "none: from the start"),
            "deepmine.resumed.argv": " ".join(mask_overrides(sys.argv, secrets)),
            "deepmine.resumed.git.commit": git.commit or "unknown",
            **placement_tags(),  # a requeued SLURM job counts its attempts
        }
    else:
        tags = records.start_tags(cfg, overrides, seed, data_tags, git, secrets)
    if job:
        tags.update(job.tags())
    if cfg.logger.run_name:
        name = cfg.logger.run_name
    elif job and hasattr(job, "run_name"):
        name = job.run_name()
    else:
        name = run_name(HydraConfig.get(), overrides, secrets)
    run = None
    pruned = None
    # inside a SLURM job, the preemption signal parks the run for the job's next attempt
    preemption = slurm.preemption_signal() if slurm.job_id() else None
    try:
        with (
            interrupts.installed(preemption),
            recorded_run(
                store,
                cfg.experiment_name,
                name,
                tags,
                reopen_run_id=resumed.run_id if resumed else None,
                secret_values=secrets,
            ) as run,
        ):
            if not resumed:
                records.record_start(run, cfg, output_dir, git, secrets)
            timeline.mark("run_opened")
            if job:
                run.log_params(job.params())
            if not resumed:
                records.record_data_and_group(run, cfg, parts.datamodule, data_tags)
            parts.trainer.loggers = [
                run.lightning_logger(
                    with_history=bool(resumed), flush_every_s=cfg.logger.flush_every_s
                )
            ]
            try:
                checkpoint = resumed.checkpoint if resumed else None
                result = fit_and_test(cfg, parts, output_dir, checkpoint)
            except pruned_errors as exc:
                pruned = exc
                records.record_pruned(run, parts, exc, output_dir)
            else:
                records.record_end(run, cfg, parts, result, output_dir, pip_freeze)
    except interrupts.Preempted:
        from deepmine.run.preemption import requeue

        raise requeue(store, run.run_id if run else None) from None
    except DeepmineError:
        raise
    except Exception as exc:
        if run is None:
            raise
        raise RunFailed(
            mask_values(
                f"run {run.run_id} FAILED: {type(exc).__name__}: {first_line(exc)}", secrets
            ),
            failure_fix(exc, cfg),
        ) from exc
    finally:
        pip_freeze.cancel()  # when the run ended before its environment was recorded
    if pruned is not None:
        print(f"pruned        {first_line(pruned)} (run {run.run_id})", flush=True)
        raise pruned
    print_summary(result, parts.task, run, store)
    return result["objective"]


def run(args: list[str]) -> int:
    """`deepmine train [overrides]`: Hydra reads the overrides (and -m, --cfg, --help)."""
    from deepmine.run.hydra_app import run_hydra_app

    return run_hydra_app(main, "train", args)
