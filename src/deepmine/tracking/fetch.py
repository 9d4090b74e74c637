"""Read a recorded run back: its config and its best checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from deepmine.errors import DeepmineError
from deepmine.tracking.store import Store


def get_run(
    store: Store,
    run_id: str,
    example: Callable[[str], str] | None = None,
    example_status: str = "FINISHED",
):
    """The MLflow run `run_id`, refused in one line when unknown or deleted; the fix shows
    `example(<the latest run with example_status>)`, the command or override with a real id."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
    except MlflowException as exc:
        latest = latest_run_id(store, example_status)
        shown = (example or (lambda i: f"run_id={i}"))(latest) if latest else None
        raise DeepmineError(
            f"no MLflow run '{run_id}' in {store.uri}",
            "pick one from `deepmine runs`"
            + (f", e.g. {shown}" if shown else "")
            + "; or, if it is in another store, pass --tracking-uri URI "
            "(or logger.tracking_uri=URI, or set MLFLOW_TRACKING_URI)",
        ) from exc
    if run.info.lifecycle_stage == "deleted":
        raise DeepmineError(f"MLflow run '{run_id}' is deleted", "restore it or pick another run")
    return run


def latest_run_id(store: Store, status: str = "FINISHED") -> str | None:
    """The id of the most recent run with `status` in any experiment of the store, if any."""
    experiments = [e.experiment_id for e in store.client.search_experiments()]
    if not experiments:
        return None
    found = store.client.search_runs(
        experiments,
        filter_string=f"attributes.status = '{status}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return found[0].info.run_id if found else None


def recorded_overrides(
    store: Store, run_id: str, dest: Path, given: Iterable[str] = (), fix: str | None = None
) -> list[str]:
    """The command-line overrides run `run_id` was composed with (its config/overrides.yaml).

    A secret override was recorded masked (`key=***`) and cannot be replayed: it is dropped
    when `given` (this command line) sets the key again, otherwise refused in one line naming
    the key (`fix` says how, for commands that take no overrides)."""
    import yaml

    from deepmine.provenance.secrets import unmasked_overrides

    get_run(store, run_id)
    names = {a.path for a in store.client.list_artifacts(run_id, "config")}
    if "config/overrides.yaml" not in names:
        raise DeepmineError(
            f"run '{run_id}' has no config/overrides.yaml artifact (not recorded by deepmine "
            "train?)",
            "pick a run recorded by deepmine train",
        )
    dest.mkdir(parents=True, exist_ok=True)
    path = store.client.download_artifacts(run_id, "config/overrides.yaml", str(dest))
    recorded = [str(o) for o in (yaml.safe_load(Path(path).read_text()) or [])]
    return unmasked_overrides(recorded, run_id, given, fix)


def recorded_config_and_checkpoint(store: Store, run_id: str, dest: Path) -> tuple[Path, Path]:
    """Download `config/config.yaml` and the checkpoint of run `run_id` into `dest`."""
    get_run(store, run_id)
    names = {a.path for a in store.client.list_artifacts(run_id, "config")}
    if "config/config.yaml" not in names:
        raise DeepmineError(
            f"run '{run_id}' has no config/config.yaml artifact (not recorded by deepmine train?)",
            "evaluate its checkpoint with ckpt_path=... and the matching overrides",
        )
    checkpoints = [a.path for a in store.client.list_artifacts(run_id, "checkpoints")]
    if not checkpoints:
        raise DeepmineError(
            f"run '{run_id}' has no checkpoint artifact", "train with logger.log_checkpoint=true"
        )
    dest.mkdir(parents=True, exist_ok=True)
    config = store.client.download_artifacts(run_id, "config/config.yaml", str(dest))
    checkpoint = store.client.download_artifacts(run_id, sorted(checkpoints)[0], str(dest))
    return Path(config), Path(checkpoint)
