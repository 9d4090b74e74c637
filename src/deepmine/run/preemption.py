"""A SLURM job preempted mid-run continues the same MLflow run when SLURM starts it again.

The preemption signal (submitit's `--signal=USR2@<signal_delay_s>`) is raised at a safe point
as `Preempted` (`deepmine.runtime.interrupts`); the run is parked SCHEDULED with its metrics
flushed (`deepmine.tracking.run`), and then this job asks SLURM to requeue it. SLURM ends the
attempt; the next one runs the same job (same command, same sweep job number), finds the run
this job parked (by its `deepmine.slurm.job_id` tag) and resumes it from the last epoch-end
checkpoint, as `resume=<run id>` does, with `deepmine.slurm.attempts` counting the starts.

Why the epoch-end checkpoint and not one written at the signal: a checkpoint cut mid-epoch
restarts the epoch with a different data order (Lightning warns that such a resume is
unreliable), while one at an epoch boundary replays training exactly. The steps run twice are
logged once: the resumed run's logger drops a replayed point equal to one already stored.
"""

from __future__ import annotations

from pathlib import Path

from deepmine.errors import EXIT_INTERRUPTED, DeepmineError, first_line
from deepmine.run.resume import Resumed
from deepmine.runtime import slurm
from deepmine.runtime.placement import SLURM_JOB_TAG


def parked_run(store, experiment_name: str) -> Resumed | None:
    """The run this SLURM job parked in an earlier attempt, with where to continue from; None
    for a first attempt, outside SLURM, or when no run was parked (it was preempted before
    opening one)."""
    job = slurm.job_id()
    if job is None or slurm.attempt() == 1:
        return None
    experiment = store.client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = store.client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{SLURM_JOB_TAG}` = '{job}' and attributes.status = 'SCHEDULED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    run = found[0]
    output_dir = Path(run.data.tags.get("deepmine.output_dir", ""))
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    return Resumed(run.info.run_id, checkpoint if checkpoint.is_file() else None, output_dir)


def requeue(store, run_id: str | None) -> SystemExit:
    """Ask SLURM to run this job again; the exit to raise once it agreed. If it refuses, the
    parked run is closed KILLED with SLURM's answer (nothing would ever continue it) and the
    refusal is raised instead."""
    job = slurm.job_id()
    try:
        slurm.requeue(job)
    except DeepmineError as exc:
        if run_id is not None:
            reason = f"KILLED: preempted, and SLURM refused to requeue job {job}: {first_line(exc)}"
            store.client.set_tag(run_id, "deepmine.status_reason", reason)
            store.client.set_terminated(run_id, "KILLED")
        raise
    print(f"preempted     run {run_id} parked; SLURM job {job} requeued", flush=True)
    # no result for submitit to collect: the job is not over, its next attempt will write one
    return SystemExit(EXIT_INTERRUPTED)
