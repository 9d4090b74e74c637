"""A sweep's jobs as Ray tasks: what each task carries, how it runs, how its result returns.

A Ray worker is not a child of the sweep, as a joblib or submitit worker is: it was started by
the raylet of its node, with the environment, working directory and `sys.argv` of the
`ray start` there. Each job therefore runs inside the sweep's own context (`JobContext`) and
hands the worker back as it found it, since Ray reuses workers from one task to the next; what
the job itself changes (seeds, torch flags, MLflow's active run) `deepmine train` puts back on
its own (`deepmine.runtime.process_state`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)

#: the sweep's environment variables that a job's config and store depend on: DEEPMINE_ROOT
#: (the project), MLFLOW_TRACKING_URI (conf/logger/mlflow.yaml) and an MLflow server's
#: credentials. Not the rest: PATH, CUDA_VISIBLE_DEVICES or OMP_NUM_THREADS belong to the node
#: and to what Ray gave the task.
FORWARDED = ("DEEPMINE_", "MLFLOW_")
#: seconds that interrupted jobs get to close their runs KILLED before the sweep exits
CANCEL_WAIT_S = 30


@dataclass(frozen=True)
class JobContext:
    """The sweep's environment (the `FORWARDED` part), working directory (relative paths in
    overrides) and command line (recorded by each run as `deepmine.argv`)."""

    environ: dict[str, str]
    cwd: str
    argv: list[str]

    @classmethod
    def of_this_process(cls) -> JobContext:
        environ = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
        return cls(environ, os.getcwd(), list(sys.argv))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        environ, cwd, argv = dict(os.environ), os.getcwd(), sys.argv
        try:
            for key in [k for k in os.environ if k.startswith(FORWARDED)]:
                del os.environ[key]  # the node's own MLFLOW_TRACKING_URI must not win
            os.environ.update(self.environ)
            if os.path.isdir(self.cwd):  # the same path on a shared filesystem
                os.chdir(self.cwd)
            sys.argv = list(self.argv)
            yield
        finally:
            os.environ.clear()
            os.environ.update(environ)
            os.chdir(cwd)
            sys.argv = argv


def execute_job(
    num: int, overrides: Sequence[str], shared: tuple[JobContext, Any, Any, Any, Any]
) -> JobReturn:
    """One job in a Ray worker, as Hydra's own launchers run one: the sweep's singletons,
    the job's config composed from its overrides, `run_job` in the sweep folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    context, hydra_context, config, task_function, singleton_state = shared
    with context.applied():
        setup_globals()
        Singleton.set_state(singleton_state)
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
            sweep_config.hydra.job.num = num
        HydraConfig.instance().set_config(sweep_config)
        return run_job(
            hydra_context=hydra_context,
            config=sweep_config,
            task_function=task_function,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def launch(launcher, job_overrides: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
    """Submit every job at once (Ray starts as many as the nodes' CPUs and GPUs hold) and
    collect the results in job order."""
    import ray
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(
        f"Ray launcher: {len(job_overrides)} jobs on {launcher.address}, "
        f"{launcher.num_cpus:g} CPU and {launcher.num_gpus:g} GPU each"
    )
    for num, overrides in enumerate(job_overrides, start=first):
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
    # the parts every job shares go to the object store once
    shared = ray.put(
        (
            JobContext.of_this_process(),
            launcher.hydra_context,
            config,
            launcher.task_function,
            Singleton.get_state(),
        )
    )
    # no retries: a job re-run after its worker died would open a second child run
    task = ray.remote(num_cpus=launcher.num_cpus, num_gpus=launcher.num_gpus, max_retries=0)(
        execute_job
    )
    refs = [
        task.options(name=f"deepmine job {num}").remote(num, list(overrides), shared)
        for num, overrides in enumerate(job_overrides, start=first)
    ]
    try:
        return [
            result(ray, ref, overrides) for ref, overrides in zip(refs, job_overrides, strict=True)
        ]
    except KeyboardInterrupt:
        stop(ray, refs)
        raise


def result(ray, ref, overrides: Sequence[str]) -> JobReturn:
    """The job's JobReturn; a job whose worker died (or whose result cannot be read back) is
    a FAILED job of the sweep, not the end of the sweep."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)


def stop(ray, refs: list) -> None:
    """Ctrl-C or SIGTERM: the jobs of a driver that exits are killed by Ray; cancelled first,
    a running job gets a KeyboardInterrupt and closes its run KILLED, a queued one never
    starts."""
    with contextlib.suppress(Exception):
        for ref in refs:
            ray.cancel(ref)
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
