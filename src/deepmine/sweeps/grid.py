"""A Hydra grid sweep (`deepmine train -m a=1,2 b=x,y`) recorded as one MLflow parent run.

Jobs are expanded exactly as Hydra's basic sweeper expands them (its `split_arguments` is
reused), every job's config is composed before anything starts (a typo in one option fails the
sweep up front, with no run opened), and then, unlike the basic sweeper, a failed job does not
stop the sweep or hide the others: it is recorded, summarized, and the exit code says so.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from deepmine.sweeps.record import (
    SweepFailed,
    SweepInfo,
    SweepRecord,
    failure_line,
    forget_job_pickles,
)
from deepmine.sweeps.summary import JobRow


def run_grid(sweeper, arguments: list[str]) -> list:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    overrides = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
    batches = BasicSweeper.split_arguments(overrides, sweeper.max_batch_size)
    for batch in batches:
        sweeper.validate_batch_is_legal(batch)

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # Hydra's basic sweeper saves it in clear; the sweep folder keeps it, so it is masked
    from deepmine.provenance.secrets import mask_text, masked_logs
    from deepmine.sweeps.record import sweep_secrets

    multirun = mask_text(OmegaConf.to_yaml(config), sweep_secrets(config))
    (sweep_dir / "multirun.yaml").write_text(multirun)
    info = SweepInfo(
        sweep_id=f"{config.task_name}-grid-{sweep_dir.parent.name}-{sweep_dir.name}",
        kind="grid",
        sweep_dir=str(sweep_dir),
        swept=swept,
    )
    record = SweepRecord(config, info, [o.input_line for o in overrides if o.is_sweep_override()])
    returns, jobs = [], []
    with record.opened(), masked_logs(record.secrets):
        first = 0
        for batch in batches:
            results = sweeper.launcher.launch(batch, initial_job_idx=first)
            forget_job_pickles(config)
            returns.append(results)
            jobs.extend(zip(range(first, first + len(batch)), batch, results, strict=True))
            first += len(batch)
        rows = job_rows(record, jobs)
        summary = record.finish(rows, config.get("optimized_metric"), sweeper.direction)
    if summary.failed:
        raise SweepFailed(
            failure_line(summary), f"see {Path(info.sweep_dir) / 'summary' / 'trials.md'}"
        )
    return returns


def job_rows(record: SweepRecord, jobs) -> list[JobRow]:
    """One row per launched job from its Hydra JobReturn and its child run (created FAILED
    here for a job that failed before opening one)."""
    from hydra.core.utils import JobStatus

    from deepmine.sweeps.job import swept_values
    from deepmine.sweeps.record import error_line

    children = record.children()
    rows = []
    for num, overrides, result in jobs:
        params = swept_values(overrides, record.info.swept)
        child = children.get(num)
        # JobReturn.return_value re-raises a failed job's exception; the exception itself is
        # what the summary needs, so it is read from the private field.
        outcome = result._return_value
        if result.status == JobStatus.COMPLETED:
            objective = outcome if isinstance(outcome, int | float) else None
            status = child.status if child else "FINISHED"
            rows.append(JobRow(num, status, objective, params, child.run_id if child else ""))
            continue
        run_id = child.run_id if child else record.record_job_failure(num, params, outcome)
        error = (child.error if child else "") or error_line(outcome)
        status = child.status if child and child.status != "FINISHED" else "FAILED"
        if child and child.status == "RUNNING":
            # the job is over (its launcher says so) but never closed its run: it died outright
            from deepmine.tracking.sweep import close_abandoned

            close_abandoned(record.store, child.run_id, f"KILLED: {record.mask(error)}")
            status = "KILLED"
        rows.append(JobRow(num, status, None, params, run_id, error))
    return rows
