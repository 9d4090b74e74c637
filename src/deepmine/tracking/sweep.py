"""MLflow side of a sweep: the parent's children, found by tag, and failed jobs recorded.

A child run is any run whose `mlflow.parentRunId` tag names the sweep's parent run: that tag is
what the MLflow UI nests runs by (and what `mlflow.start_run(parent_run_id=...)` sets). Jobs
create their runs with it themselves, in whatever process the launcher gives them; nothing is
passed through `MLFLOW_RUN_ID`, which would win over the parent link in a reused worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepmine.tracking.store import Store

PARENT_TAG = "mlflow.parentRunId"
SWEEP_ID_TAG = "deepmine.sweep.id"
JOB_TAG = "deepmine.sweep.job"
SWEEP_PARAM_PREFIX = "sweep."


@dataclass
class ChildRun:
    run_id: str
    name: str
    job: int
    status: str
    error: str
    metrics: dict[str, float]


def child_runs(store: Store, experiment_id: str, parent_run_id: str) -> dict[int, ChildRun]:
    """The children of `parent_run_id` by job number (the latest run wins for a job number)."""
    runs = []
    token = None
    while True:
        page = store.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    children: dict[int, ChildRun] = {}
    for run in runs:
        job = run.data.tags.get(JOB_TAG)
        if job is None or not job.isdigit():
            continue
        children[int(job)] = ChildRun(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            job=int(job),
            status=run.info.status,
            error=run.data.tags.get("deepmine.error", ""),
            metrics=dict(run.data.metrics),
        )
    return children


def record_failed_job(
    store: Store,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str],
    error: str,
    traceback_text: str,
) -> str:
    """A FAILED child for a job that failed before it could open its own run (bad overrides,
    a crashed worker), so the sweep shows every job it launched."""
    from deepmine.tracking.run import RecordedRun

    tags = {**tags, "deepmine.status_reason": "FAILED", "deepmine.error": error}
    info = store.client.create_run(experiment_id, run_name=run_name, tags=tags).info
    run = RecordedRun(store, info.run_id, "", experiment_id)
    run.log_params(params)
    run.log_text(traceback_text, "error/traceback.txt")
    store.client.set_terminated(info.run_id, "FAILED")
    return info.run_id


def set_tags(store: Store, run_id: str, tags: dict[str, str]) -> None:
    from deepmine.tracking.run import RecordedRun

    RecordedRun(store, run_id, "", "").set_tags(tags)


def close_abandoned(store: Store, run_id: str, reason: str) -> None:
    """Close KILLED a child whose job ended, as its launcher knows, without closing its run
    (a SLURM job killed outright): nothing else would, until `runs doctor`."""
    store.client.set_tag(run_id, "deepmine.status_reason", reason[:8000])
    store.client.set_terminated(run_id, "KILLED")
