"""Which runs a comparison is about: by experiment, sweep, run id or MLflow filter.

What is selected is not all counted. A sweep's parent run (it carries the sweep's space, or has
children) records the sweep, not a configuration; an earlier `deepmine compare --log` run records
a comparison; neither is a data point and both are skipped. A run that did not finish (FAILED,
KILLED, still RUNNING, or pruned by a search) is listed apart with its error: its metrics stop
wherever it stopped, so mixing them into a mean would be wrong, and hiding it would hide that a
configuration is fragile.

Runs are read through the store's MlflowClient (`deepmine.tracking`), one search per
experiment or parent, paged; every problem with the selection is one `DeepmineError` raised
before anything is written.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deepmine.errors import DeepmineError, first_line

#: The tag `deepmine compare --log` puts on the run it records (and skips when selecting).
COMPARE_TAG = "deepmine.compare"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_SPACE_TAG = "deepmine.sweep.space"
REPRODUCE_TAG = "deepmine.reproduce.claim"
PRUNED_TAG = "deepmine.sweep.pruned"
ERROR_TAG = "deepmine.error"
SWEEP_FILE = "deepmine-sweep.json"


@dataclass(frozen=True)
class RunRecord:
    """What a comparison needs of one MLflow run (plain data, so tables are testable alone)."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run) -> RunRecord:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
        )

    @property
    def seed(self) -> str | None:
        return self.params.get("seed", self.tags.get("deepmine.seed"))

    @property
    def error(self) -> str:
        return self.tags.get(ERROR_TAG, "")

    @property
    def counted_status(self) -> str:
        """FINISHED for a run whose numbers count; else why not (a pruned trial is FINISHED
        in MLflow but stopped early)."""
        if self.status == "FINISHED" and self.tags.get(PRUNED_TAG) == "true":
            return "PRUNED"
        return self.status


@dataclass
class Selection:
    """The runs that count, those listed apart, and what was asked for."""

    runs: list[RunRecord]
    not_counted: list[RunRecord] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # why -> how many
    experiments: list[str] = field(default_factory=list)  # names, in selection order
    described: str = ""


def resolve_tracking_uri(explicit: str | None, sweeps: list[str] = ()) -> str:
    """`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the store a sweep folder was recorded
    in, else the project's default store (`logger.tracking_uri` of conf/train.yaml)."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    for sweep in sweeps:
        info = _sweep_file(sweep)
        if info and info.get("tracking_uri"):
            return info["tracking_uri"]
    from deepmine.tracking.ui import default_tracking_uri

    return default_tracking_uri()


def _sweep_file(value: str) -> dict | None:
    """The contents of `deepmine-sweep.json` when `value` names a sweep folder (or the file)."""
    import json

    path = Path(value)
    if path.is_dir():
        path = path / SWEEP_FILE
    if path.name != SWEEP_FILE or not path.is_file():
        return None
    return json.loads(path.read_text())


def select(
    store,
    experiments: list[str] = (),
    sweeps: list[str] = (),
    run_ids: list[str] = (),
    filter_string: str | None = None,
) -> Selection:
    """The runs named by any of the selectors (their union), narrowed by `filter_string`."""
    if not (experiments or sweeps or run_ids or filter_string):
        raise DeepmineError(
            "nothing to compare: no runs selected",
            "name them, e.g. `deepmine compare --experiment "
            f"{_example_experiment(store)}`, `--sweep <sweep folder or parent run id>`, run ids, "
            "or `--filter \"params.optimizer.lr = '0.01'\"`",
        )
    found: dict[str, RunRecord] = {}
    parents: set[str] = set()  # runs that have children among what was read
    described = []
    experiment_ids = {}
    for name in experiments:
        experiment_ids[name] = _experiment_id(store, name)
        for run in _search(store, [experiment_ids[name]]):
            found.setdefault(run.run_id, run)
        described.append(f"experiment '{name}'")
    for sweep in sweeps:
        parent = _sweep_parent(store, sweep)
        children = _search(
            store, [parent.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'"
        )
        if not children:
            raise DeepmineError(
                f"run {parent.run_id} ('{parent.name}') has no child runs, so it is not a sweep "
                "parent",
                f"compare it as a run: `deepmine compare {parent.run_id} <other run ids>`",
            )
        parents.add(parent.run_id)
        for run in children:
            found.setdefault(run.run_id, run)
        described.append(f"sweep {parent.run_id} ('{parent.name}')")
    for run_id in run_ids:
        run = _get_run(store, run_id)
        found.setdefault(run.run_id, run)
    if run_ids:
        described.append(f"{len(run_ids)} run id(s)")
    if filter_string:
        if found:
            allowed = {r.run_id for r in _filtered(store, _experiments_of(found), filter_string)}
            found = {k: v for k, v in found.items() if k in allowed}
        else:
            every = [e.experiment_id for e in store.client.search_experiments()]
            found = {r.run_id: r for r in _filtered(store, every, filter_string)}
        described.append(f'filter "{filter_string}"')
    parents |= {r.tags[PARENT_TAG] for r in found.values() if PARENT_TAG in r.tags}
    if found and (run_ids or filter_string):
        # a parent picked by id or by a filter whose children were not: ask for every child
        children = _search(store, _experiments_of(found), f"tags.`{PARENT_TAG}` LIKE '%'")
        parents |= {r.tags[PARENT_TAG] for r in children}
    selection = _classify(list(found.values()), parents)
    selection.described = ", ".join(described)
    selection.experiments = _experiment_names(store, found, experiments)
    if not selection.runs:
        raise DeepmineError(*_empty(selection, filter_string))
    return selection


def _classify(runs: list[RunRecord], parents: set[str]) -> Selection:
    selection = Selection(runs=[])
    for run in runs:
        if run.tags.get(COMPARE_TAG) == "true":
            selection.skipped["earlier comparison"] += 1
        elif SWEEP_SPACE_TAG in run.tags or REPRODUCE_TAG in run.tags or run.run_id in parents:
            selection.skipped["sweep parent"] += 1
        elif run.counted_status != "FINISHED":
            selection.not_counted.append(run)
        else:
            selection.runs.append(run)
    return selection


def _empty(selection: Selection, filter_string: str | None) -> tuple[str, str]:
    if selection.not_counted:
        states = Counter(r.counted_status for r in selection.not_counted)
        shown = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        return (
            f"none of the selected runs finished ({shown})",
            "fix the failed runs (their error is in the tag deepmine.error) or select others",
        )
    what = selection.described or "the selection"
    if filter_string:
        return (
            f"no finished run matches {what}",
            "loosen --filter (quote values: params.optimizer.lr = '0.01'; backquote keys "
            "with '/': metrics.`val/acc` > 0.9)",
        )
    skipped = sum(selection.skipped.values())
    extra = f" ({skipped} sweep parent or comparison run(s) skipped)" if skipped else ""
    return (f"{what} holds no runs to compare{extra}", "select an experiment or sweep with runs")


def _search(store, experiment_ids: list[str], filter_string: str = "") -> list[RunRecord]:
    runs: list[RunRecord] = []
    token = None
    while True:
        page = store.client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(RunRecord.of(run) for run in page)
        token = page.token
        if not token:
            return runs


def _filtered(store, experiment_ids: list[str], filter_string: str) -> list[RunRecord]:
    try:
        return _search(store, experiment_ids, filter_string)
    except Exception as exc:
        if not type(exc).__module__.startswith("mlflow"):
            raise
        raise DeepmineError(
            f'MLflow cannot read --filter "{filter_string}" ({first_line(exc)[:200]})',
            "write it in MLflow's search syntax, e.g. --filter \"params.optimizer.lr = '0.01' "
            "AND metrics.`val/acc_best` > 0.9\" (values quoted, keys with '/' backquoted)",
        ) from exc


def _experiments_of(found: dict[str, RunRecord]) -> list[str]:
    return sorted({r.experiment_id for r in found.values()})


def _experiment_names(store, found: dict[str, RunRecord], asked: list[str]) -> list[str]:
    names = list(asked)
    for experiment_id in dict.fromkeys(r.experiment_id for r in found.values()):
        name = store.client.get_experiment(experiment_id).name
        if name not in names:
            names.append(name)
    return names


def _existing(store) -> list[str]:
    return sorted(e.name for e in store.client.search_experiments())


def _example_experiment(store) -> str:
    names = _existing(store)
    return "default" if "default" in names or not names else names[0]


def _experiment_id(store, name: str) -> str:
    found = store.client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        names = _existing(store)
        shown = ", ".join(f"'{n}'" for n in names) if names else "none"
        state = "is deleted" if found is not None else "does not exist"
        raise DeepmineError(
            f"experiment '{name}' {state} in {store.uri} (experiments there: {shown})",
            "pass one of those to --experiment, or point --tracking-uri at the store the runs "
            "were written to",
        )
    return found.experiment_id


def _get_run(store, run_id: str) -> RunRecord:
    try:
        run = store.client.get_run(run_id)
    except Exception as exc:
        if not type(exc).__module__.startswith("mlflow"):
            raise
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        state = "is deleted" if run is not None else "not found"
        raise DeepmineError(
            f"MLflow run '{run_id}' {state} in {store.uri}",
            "check the id (`deepmine runs --tracking-uri URI` lists the runs of a store), or "
            "point --tracking-uri (or MLFLOW_TRACKING_URI) at the store it was recorded in",
        )
    return RunRecord.of(run)


def _sweep_parent(store, value: str) -> RunRecord:
    """The parent run of a sweep named by its folder (`deepmine-sweep.json`) or its run id."""
    path = Path(value)
    if path.exists():
        info = _sweep_file(value)
        if info is None:
            raise DeepmineError(
                f"{value} is not a sweep folder (no {SWEEP_FILE} in it)",
                "pass the sweep's folder (its hydra.sweep.dir, printed by `deepmine train -m`) "
                "or its parent run id",
            )
        if not info.get("parent_run_id"):
            raise DeepmineError(
                f"the sweep in {value} was run without MLflow (logger=none): no runs to compare",
                "run the sweep again with the MLflow logger",
            )
        try:
            return _get_run(store, info["parent_run_id"])
        except DeepmineError as exc:
            recorded = info.get("tracking_uri")
            if recorded and recorded != store.uri:
                raise DeepmineError(
                    f"the sweep in {value} was recorded in {recorded}, not in {store.uri}",
                    f"pass --tracking-uri {recorded}",
                ) from exc
            raise
    if os.sep in value or value.endswith(".json"):
        raise DeepmineError(
            f"no sweep folder {value}",
            "pass the sweep's folder (its hydra.sweep.dir) or its parent run id",
        )
    return _get_run(store, value)
