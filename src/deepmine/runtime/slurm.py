"""What deepmine asks SLURM, from inside a job or beside one: which job and attempt this is,
which rank, where the main rank's node is, whether a job is still queued, and "requeue me".

Everything goes through SLURM's own commands (`scontrol`, `squeue`), which read `SLURM_CONF`
like any client; nothing here parses SLURM's files.
"""

from __future__ import annotations

import os
import signal
import subprocess

from deepmine.errors import DeepmineError

#: states in which a job still has a future: its run is not an orphan
LIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
}  # fmt: skip
TIMEOUT_S = 30


def job_id() -> str | None:
    """The job's id as `squeue` and `scontrol` know it: `<array job>_<task>` for an array
    task (its own SLURM_JOB_ID is a separate number the queue does not show), else the id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def attempt() -> int:
    """1 for a job's first start, n + 1 after n requeues (SLURM_RESTART_COUNT)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1


def started_ranks() -> bool:
    """True inside a step whose tasks srun started as the ranks of one run (several tasks)."""
    return int(os.environ.get("SLURM_NTASKS") or 1) > 1 and "SLURM_PROCID" in os.environ


def global_rank() -> int:
    return int(os.environ.get("SLURM_PROCID") or 0)


def preemption_signal() -> signal.Signals:
    """The signal a job gets before it is preempted or reaches its time limit: submitit's
    (`--signal=USR2@<signal_delay_s>`, or SUBMITIT_PREEMPT_SIGNAL), which deepmine handles in
    its place (see `deepmine.runtime.interrupts`)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


def main_node_address() -> str:
    """The address of the job's first node, where rank 0 listens for the others: SLURM's
    NodeAddr for it. Lightning resolves the node *name* instead, which need not resolve (nodes
    named apart from their host, as on this project's test cluster); SLURM reaches its nodes
    by NodeAddr, so the ranks do too."""
    nodes = _run("scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]).split()
    fields = _run("scontrol", "show", "node", "-o", nodes[0]).split()
    found = dict(f.split("=", 1) for f in fields if "=" in f)
    return found.get("NodeAddr") or nodes[0]


def requeue(job: str) -> None:
    """Put this job back in the queue; SLURM then ends this attempt's processes."""
    _run("scontrol", "requeue", job)


def job_state(job: str) -> str | None:
    """The job's state in the queue (RUNNING, PENDING, COMPLETED, ...), None when the queue
    has forgotten it (SLURM keeps a finished job for MinJobAge only)."""
    try:
        out = _run("squeue", "--noheader", "--states=all", "--jobs", job, "--format=%T")
    except DeepmineError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    states = out.split()
    return states[0] if states else None


def _run(*command: str) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError as exc:
        raise DeepmineError(
            f"`{command[0]}` is not installed here", "run this on a SLURM node or login node"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DeepmineError(
            f"`{' '.join(command)}` got no answer in {TIMEOUT_S} s",
            "check that slurmctld is up (`scontrol ping`)",
        ) from exc
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise DeepmineError(
            f"`{' '.join(command)}` failed: {message[-1] if message else proc.returncode}",
            "check SLURM_CONF and that slurmctld is up (`scontrol ping`)",
        )
    return proc.stdout
