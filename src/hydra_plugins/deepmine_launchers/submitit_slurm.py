"""`launcher=slurm`: hydra-submitit-launcher's SLURM launcher, where one dead job fails one job.

The plugin collects a batch with `[job.results()[0] for job in jobs]`. A job that ended
without writing its result (SIGKILL, the OOM killer, a lost node: SLURM accounting says FAILED)
makes submitit raise there, which ends the whole sweep with a traceback and loses the results
of every other job of the batch, finished or not. The plugin has no hook between submitting and
collecting, so while this launcher's batch is collected, a job's `results()` answers for such a
job with the FAILED `JobReturn` any other failed job gets; deepmine's sweepers then record it
like one (the summary's row, the parent FAILED, exit 1). Everything else is the plugin's.

No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is
in `sys.modules` (see `ray_launcher`).
"""

import contextlib
from collections.abc import Iterator, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        with _dead_jobs_fail_alone():
            return super().launch(job_overrides, initial_job_idx)


@contextlib.contextmanager
def _dead_jobs_fail_alone() -> Iterator[None]:
    from submitit.core.core import Job
    from submitit.core.utils import UncompletedJobError

    results = Job.results

    def results_or_failure(job):
        try:
            return results(job)
        except UncompletedJobError:
            failed = JobReturn()
            failed.status = JobStatus.FAILED
            failed.return_value = RuntimeError(
                f"SLURM job {job.job_id} ended {job.state} without a result (killed outright, "
                f"out of memory, or its node was lost; log: {job.paths.stderr})"
            )
            return [failed]

    Job.results = results_or_failure
    try:
        yield
    finally:
        Job.results = results
