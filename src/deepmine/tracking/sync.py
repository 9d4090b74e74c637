"""`deepmine sync`: copy the runs of an offline spool (or any store) to another store, once.

What travels, through MLflow's client APIs only: a run's name, params, tags, every metric with
its whole history (values, steps, timestamps), dataset inputs, logged models (artifacts,
params, tags, their link to the run; registry versions with `register=True`), run artifacts,
status and start/end times. Parent/child links keep their shape: a tag whose value is the id of
another run of the same source (`mlflow.parentRunId`, a sweep's best run, a retry's original)
is rewritten to that run's id on the target.

Identity: each copy carries `deepmine.sync.source_run_id`, found on the target by a search, so
a run is never created twice (idempotent). Resumable: a copy is created, filled, closed with
the source's status and end time, and only then tagged `deepmine.sync.complete=true`; a copy
found without that tag (a sync killed half way) is completed in place: params and inputs it
has are not sent again, each metric's history is compared point by point and only the missing
points are logged, artifacts are re-uploaded (same paths: overwritten, not doubled), a logged
model is matched by `deepmine.sync.source_model_id`. Runs still RUNNING or SCHEDULED in the
source are left for a later sync. The source is only read.

A spool run that continues a server's run after a mid-run failover
(`deepmine.sync.continues`, see `deepmine.tracking.failover`) is completed into that run the
same way, which joins the two parts. Why this is one module: every step of a copy shares the
resume rule above, and split apart they would each have to restate it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deepmine.tracking.store import Store

SOURCE_RUN_TAG = "deepmine.sync.source_run_id"
SOURCE_MODEL_TAG = "deepmine.sync.source_model_id"
COMPLETE_TAG = "deepmine.sync.complete"
PARENT_TAG = "mlflow.parentRunId"
REGISTERED_TAG = "deepmine.model.registered"
#: statuses of a run that has ended (one still open in the source waits for a later sync)
ENDED = {"FINISHED", "FAILED", "KILLED"}
#: MLflow's batch limits per request
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
TAGS_PER_BATCH = 100


@dataclass
class SyncReport:
    copied: list[str] = field(default_factory=list)  # source ids newly copied
    completed: list[str] = field(default_factory=list)  # copies finished after an interruption
    present: list[str] = field(default_factory=list)  # already complete on the target
    waiting: list[str] = field(default_factory=list)  # still open in the source
    id_map: dict[str, str] = field(default_factory=dict)  # source run id -> target run id


def sync_store(source: Store, target: Store, register: bool = False, echo=print) -> SyncReport:
    """Copy every ended run of `source` that `target` lacks, experiment by experiment."""
    report = SyncReport()
    for experiment in _all(source.client.search_experiments):
        runs = _all(source.client.search_runs, experiment.experiment_id)
        if not runs:
            continue
        target_experiment = target.experiment_id(experiment.name)
        for run in _parents_first(runs):
            if run.info.status not in ENDED:
                report.waiting.append(run.info.run_id)
                continue
            _sync_run(source, target, run, target_experiment, register, report, echo)
        _relink(source, target, runs, report.id_map)
    return report


def _all(search, *experiment_ids: str) -> list:
    """Every page of an MLflow search (of experiments, or of the runs of `experiment_ids`)."""
    found, token = [], None
    while True:
        if experiment_ids:
            page = search(list(experiment_ids), max_results=1000, page_token=token)
        else:
            page = search(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _parents_first(runs: list) -> list:
    """Runs ordered so that a parent is copied before its children (each child then points at
    its parent's copy from the moment it is created), by start time within a depth."""
    by_id = {run.info.run_id: run for run in runs}

    def depth(run) -> int:
        seen, parent = 0, run.data.tags.get(PARENT_TAG)
        while parent in by_id and seen < len(by_id):
            seen += 1
            parent = by_id[parent].data.tags.get(PARENT_TAG)
        return seen

    return sorted(runs, key=lambda run: (depth(run), run.info.start_time or 0))


def find_copy(target: Store, experiment_id: str, source_run_id: str):
    """The target's copy of `source_run_id` (deleted ones count: never copied twice), or None."""
    from mlflow.entities import ViewType

    found = target.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SOURCE_RUN_TAG}` = '{source_run_id}'",
        run_view_type=ViewType.ALL,
        max_results=2,
    )
    return found[0] if found else None


def _sync_run(source, target, run, experiment_id, register, report, echo) -> None:
    source_id = run.info.run_id
    copy = find_copy(target, experiment_id, source_id) or _continued(target, run)
    if copy is not None and copy.data.tags.get(COMPLETE_TAG) == "true":
        report.id_map[source_id] = copy.info.run_id
        report.present.append(source_id)
        return
    tags = _remapped(run.data.tags, report.id_map, register)
    tags[SOURCE_RUN_TAG] = source_id
    if copy is None:
        copy = target.client.create_run(
            experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
        )
        resumed = False
    else:
        resumed = True
    target_id = copy.info.run_id
    report.id_map[source_id] = target_id
    _copy_params(target, run, target_id, copy if resumed else None)
    _set_tags(target, target_id, tags)
    _copy_metrics(source, target, run, target_id, resumed)
    _copy_inputs(target, run, target_id, copy if resumed else None)
    _copy_artifacts(source, target, source_id, target_id)
    _copy_models(source, target, run, target_id, experiment_id, register)
    # MLflow prints two lines of links on every run closed on a server; sync prints its own
    with contextlib.redirect_stdout(io.StringIO()):
        target.client.set_terminated(target_id, run.info.status, end_time=run.info.end_time)
    target.client.set_tag(target_id, COMPLETE_TAG, "true")
    (report.completed if resumed else report.copied).append(source_id)
    echo(f"{'completed' if resumed else 'copied'} {run.info.run_name or source_id} -> {target_id}")


def _continued(target: Store, run):
    """The server run that `run` continues after a mid-run failover
    (`deepmine.tracking.failover`): its copy, to be completed with what the spool holds."""
    from mlflow.exceptions import MlflowException

    from deepmine.tracking.failover import CONTINUES_TAG

    server_run_id = run.data.tags.get(CONTINUES_TAG)
    if not server_run_id:
        return None
    try:
        return target.client.get_run(server_run_id)
    except MlflowException:
        return None  # that server's run is not on this target: copied as a run of its own


def _remapped(tags: dict[str, str], id_map: dict[str, str], register: bool) -> dict[str, str]:
    """The source's tags for the copy: values naming a copied run point at its copy; the
    registry tag is dropped unless the model is registered on the target too (it names a
    version of the source's registry)."""
    kept = {k: id_map.get(v, v) for k, v in tags.items() if not k.startswith("deepmine.sync.")}
    if not register:
        kept.pop(REGISTERED_TAG, None)
    return kept


def _set_tags(target: Store, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    entries = [RunTag(k, v) for k, v in tags.items()]
    for start in range(0, len(entries), TAGS_PER_BATCH):
        target.client.log_batch(run_id, tags=entries[start : start + TAGS_PER_BATCH])


def _copy_params(target: Store, run, target_id: str, copy) -> None:
    """Params the copy lacks (MLflow refuses a param logged twice with another value, and a
    resumed copy may hold some already)."""
    from mlflow.entities import Param

    have = copy.data.params if copy is not None else {}
    missing = [Param(k, v) for k, v in run.data.params.items() if k not in have]
    for start in range(0, len(missing), PARAMS_PER_BATCH):
        target.client.log_batch(target_id, params=missing[start : start + PARAMS_PER_BATCH])


def _copy_metrics(source, target, run, target_id: str, resumed: bool) -> None:
    """Every point of every metric (value, step, timestamp); on a resumed copy, only the
    points its histories lack, so none is logged twice."""
    from mlflow.entities import Metric

    pending: list = []
    for key in run.data.metrics:
        points = source.client.get_metric_history(run.info.run_id, key)
        wanted = Counter(_point(p) for p in points)
        if resumed:
            wanted -= Counter(_point(p) for p in target.client.get_metric_history(target_id, key))
        for step, timestamp, value in wanted.elements():
            pending.append(Metric(key, float(value), timestamp, step))
    for start in range(0, len(pending), METRICS_PER_BATCH):
        target.client.log_batch(target_id, metrics=pending[start : start + METRICS_PER_BATCH])


def _point(metric) -> tuple:
    """A metric point as a comparable value (NaN equals NaN here, unlike in floats)."""
    value = float(metric.value)
    return metric.step, metric.timestamp, "nan" if math.isnan(value) else value


def _copy_inputs(target: Store, run, target_id: str, copy) -> None:
    """The run's dataset inputs (name, digest, source, schema, profile, context tag)."""
    inputs = run.inputs.dataset_inputs if run.inputs else []
    if copy is not None and copy.inputs:
        have = {_input_key(i) for i in copy.inputs.dataset_inputs}
        inputs = [i for i in inputs if _input_key(i) not in have]
    if inputs:
        target.client.log_inputs(target_id, datasets=list(inputs))


def _input_key(dataset_input) -> tuple:
    tags = tuple(sorted((t.key, t.value) for t in dataset_input.tags))
    return dataset_input.dataset.name, dataset_input.dataset.digest, tags


def _copy_artifacts(source, target, source_id: str, target_id: str) -> None:
    """The run's artifact tree, downloaded and uploaded whole (an upload to the same paths
    overwrites, so a resumed copy never holds a file twice)."""
    if not source.client.list_artifacts(source_id):
        return
    with tempfile.TemporaryDirectory(prefix="deepmine-sync-") as tmp:
        local = source.client.download_artifacts(source_id, "", tmp)
        target.client.log_artifacts(target_id, local)


def _copy_models(source, target, run, target_id: str, experiment_id: str, register: bool) -> None:
    """The run's logged models (MLflow 3 keeps their files apart from the run's artifacts):
    each created on the target as an output of the copy, with its files, params and tags,
    then finalized with its status; registered there too with `register`."""
    from mlflow.entities import LoggedModelOutput

    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        return
    existing = {
        model.tags.get(SOURCE_MODEL_TAG): model
        for model in target.client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{target_id}'"
        )
    }
    for output in outputs:
        model = source.client.get_logged_model(output.model_id)
        copy = existing.get(model.model_id)
        if copy is None:
            tags = {k: v for k, v in model.tags.items() if not k.startswith("mlflow.")}
            copy = target.client.create_logged_model(
                experiment_id,
                name=model.name,
                source_run_id=target_id,
                tags={**tags, SOURCE_MODEL_TAG: model.model_id},
                params=dict(model.params),
                model_type=model.model_type,
            )
            target.client.log_outputs(target_id, [LoggedModelOutput(copy.model_id, output.step)])
        if str(copy.status) != "READY":
            _copy_model_files(source, target, model, copy, run.info.run_id, target_id)
            target.client.finalize_logged_model(copy.model_id, str(model.status))
        if register and run.data.tags.get(REGISTERED_TAG):
            _register(target, run.data.tags[REGISTERED_TAG], copy, target_id)


def _copy_model_files(source, target, model, copy, source_run_id: str, target_run_id: str) -> None:
    """The logged model's files, its MLmodel pointing at the copy's run and model ids."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="deepmine-sync-model-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model.artifact_location, dst_path=tmp, tracking_uri=source.uri
            )
        )
        mlmodel = local / "MLmodel"
        if mlmodel.is_file():
            text = mlmodel.read_text()
            text = text.replace(model.model_id, copy.model_id).replace(source_run_id, target_run_id)
            text = text.replace(model.artifact_location, copy.artifact_location)
            mlmodel.write_text(text)
        target.client.log_model_artifacts(copy.model_id, str(local))


def _register(target: Store, registered: str, copy, target_id: str) -> None:
    """A version of the same registered model name on the target (unless the copy has one),
    and the run's registry tag naming it."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    name = registered.rsplit("/", 1)[0]
    client = target.client
    versions = client.search_model_versions(f"run_id = '{target_id}'")
    version = next((v for v in versions if v.name == name), None)
    if version is None:
        try:
            client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):
                client.create_registered_model(name)
        version = client.create_model_version(
            name, source=copy.artifact_location, run_id=target_id, model_id=copy.model_id
        )
        listed = json.dumps([{"name": name, "version": version.version}])
        client.set_logged_model_tags(copy.model_id, {MLFLOW_MODEL_VERSIONS: listed})
    client.set_tag(target_id, REGISTERED_TAG, f"{name}/{version.version}")


def _relink(source, target, runs: list, id_map: dict[str, str]) -> None:
    """Tags naming a run copied later than their own run (a sweep parent's best child) point at
    that run's copy; run on every sync, so an interrupted one is relinked by the next."""
    for run in runs:
        target_id = id_map.get(run.info.run_id)
        if target_id is None:
            continue
        fixes = {
            k: id_map[v]
            for k, v in run.data.tags.items()
            if v in id_map and v != run.info.run_id and not k.startswith("deepmine.sync.")
        }
        if fixes:
            _set_tags(target, target_id, fixes)


def recorded_target(source: Store) -> str | None:
    """The one store the source's runs were meant for (their `deepmine.offline.target` tag),
    None if they name none; several are refused (each needs its own `--to`)."""
    from deepmine.errors import DeepmineError
    from deepmine.tracking.spool import TARGET_TAG

    targets = set()
    for experiment in _all(source.client.search_experiments):
        for run in _all(source.client.search_runs, experiment.experiment_id):
            if run.data.tags.get(TARGET_TAG):
                targets.add(run.data.tags[TARGET_TAG])
    if len(targets) > 1:
        from deepmine.tracking.store import _shown

        shown = ", ".join(sorted(_shown(t) for t in targets))
        raise DeepmineError(
            f"the spool holds runs meant for several stores ({shown})",
            "name the target, e.g. `deepmine sync --to <tracking uri>`",
        )
    return targets.pop() if targets else None
