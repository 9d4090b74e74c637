"""Finding a logged model in a store and loading it: by run (`run_id=`), by registry alias or
version (`models:/<name>@<alias>`, `models:/<name>/<version>`), or by logged-model id
(`models:/<model id>`).

The model's files are downloaded through the store's own client and tracking URI (deepmine never
sets MLflow's global one) and loaded with `mlflow.pyfunc.load_model` from the local copy. A model
logged before deepmine logged whole pipelines takes preprocessed tensors; it is refused in one
line with the fix (log it anew with `deepmine eval run_id=...`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deepmine.errors import DeepmineError
from deepmine.tracking.model import MODEL_NAME
from deepmine.tracking.pyfunc_model import PIPELINE_KEY


@dataclass
class ModelSource:
    uri: str  # as the user named it
    run_id: str  # the run that logged it
    model_id: str
    location: str  # the artifact location of the model's files
    registered_name: str | None = None
    version: str | None = None
    metadata: dict = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Run tags linking a prediction run to this model."""
        tags = {
            "deepmine.predict.model_uri": self.uri,
            "deepmine.predict.model_id": self.model_id,
            "deepmine.predict.model_run_id": self.run_id,
        }
        if self.registered_name:
            tags["deepmine.predict.registered_model"] = self.registered_name
            tags["deepmine.predict.model_version"] = str(self.version)
        return tags


def find_model(store, run_id: str | None = None, uri: str | None = None) -> ModelSource:
    """The model of run `run_id`, or the one `uri` (`runs:/`, `models:/`) names."""
    from mlflow.exceptions import MlflowException

    client = store.client
    if uri and uri.startswith("runs:/"):
        run_id, uri = uri[len("runs:/") :].split("/", 1)[0], None
    try:
        if run_id:
            return _of_run(client, run_id)
        if uri and uri.startswith("models:/"):
            return _of_registry(client, uri)
    except MlflowException as exc:
        raise DeepmineError(
            f"no model {uri or 'of run ' + str(run_id)} in {store.uri} "
            f"({str(exc).splitlines()[0]})",
            "check the name, alias or run id (`deepmine runs` lists runs)",
        ) from None
    raise DeepmineError(
        f"model={uri!r} is not a runs:/ or models:/ URI",
        "pass run_id=<run id>, or model=models:/<name>@<alias>",
    )


def load_pipeline_model(store, source: ModelSource, dest: Path):
    """`mlflow.pyfunc.load_model` of the model's files, downloaded into `dest`; a model that
    is not a deepmine pipeline is refused."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    # a bar per file of a five-file model is noise in front of the scoring's own progress
    shown = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source.location, dst_path=str(dest), tracking_uri=store.uri
            )
        )
    finally:
        if shown is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = shown
    described = yaml.safe_load((local / "MLmodel").read_text())
    metadata = (described.get("metadata") or {}).get(PIPELINE_KEY)
    if not metadata:
        raise DeepmineError(
            f"the model of run {source.run_id} was logged before deepmine logged whole "
            "pipelines: it takes preprocessed tensors, not raw rows",
            f"log it anew with `deepmine eval run_id={source.run_id}`, then predict with "
            "run_id=<that evaluation run's id>",
        )
    metadata = dict(metadata)
    metadata["references"] = json.loads(metadata.get("references") or "{}")
    source.metadata = metadata
    return mlflow.pyfunc.load_model(str(local))


def promote(store, name: str, version: str, alias: str) -> None:
    """Point registry alias `alias` of model `name` at `version` (MLflow aliases, which replace
    the deprecated stages)."""
    from mlflow.exceptions import MlflowException

    try:
        store.client.get_model_version(name, str(version))
        store.client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise DeepmineError(
            f"cannot point alias {alias!r} of model {name!r} at version {version} "
            f"({str(exc).splitlines()[0]})",
            "check the name and version (`deepmine models list <name>`)",
        ) from None


def versions(store, name: str) -> list[dict]:
    """The versions of registered model `name`, newest first, with their aliases."""
    from mlflow.exceptions import MlflowException

    try:
        model = store.client.get_registered_model(name)
        found = store.client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise DeepmineError(
            f"no registered model {name!r} in {store.uri} ({str(exc).splitlines()[0]})",
            "register one with `deepmine train logger.register=<name>`",
        ) from None
    aliases: dict[str, list[str]] = {}
    listed = model.aliases or {}
    pairs = listed.items() if isinstance(listed, dict) else ((a.alias, a.version) for a in listed)
    for alias, version in pairs:
        aliases.setdefault(str(version), []).append(alias)
    rows = [
        {
            "version": v.version,
            "run_id": v.run_id,
            "aliases": sorted(aliases.get(str(v.version), [])),
        }
        for v in found
    ]
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def _of_run(client, run_id: str) -> ModelSource:
    run = client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    model_ids = [m.model_id for m in (getattr(outputs, "model_outputs", None) or [])]
    for model_id in reversed(model_ids):
        logged = client.get_logged_model(model_id)
        if logged.name == MODEL_NAME:
            return ModelSource(
                f"runs:/{run_id}/{MODEL_NAME}", run_id, model_id, logged.artifact_location
            )
    raise DeepmineError(
        f"run {run_id} logged no model (logger.log_model=false, or it did not finish)",
        "train with logger.log_model=true, or pick a finished run (`deepmine runs`)",
    )


def _of_registry(client, uri: str) -> ModelSource:
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, number = rest.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:  # a logged model's id
        logged = client.get_logged_model(rest)
        return ModelSource(uri, logged.source_run_id, logged.model_id, logged.artifact_location)
    location = version.source
    if location.startswith("models:/"):  # registered from a logged model's URI
        location = client.get_logged_model(location[len("models:/") :]).artifact_location
    model_id = version.model_id
    if not model_id and version.run_id:  # the SQL registry does not keep it: the run's model
        model_id = _of_run(client, version.run_id).model_id
    return ModelSource(uri, version.run_id, model_id, location, name, str(version.version))
