"""The trained model as an MLflow model: the whole pipeline (`deepmine.run.pipeline`), loadable
with `mlflow.pyfunc.load_model`, servable with `mlflow models serve`, optionally registered.

The flavour is MLflow's `python_function` with a `PythonModel` (`PipelineModel`): a model of the
`pytorch` flavour takes the tensors the net sees and answers with logits or standardized values,
which no user has or wants; the pyfunc takes raw rows (a DataFrame of the training table's
columns, image files or arrays, a series with its time column) and answers in class names,
probabilities, units and timestamps. Its input signature names the columns the pipeline reads
(type `any` and optional: the pipeline checks them itself, so a missing column or a word in a
numeric one is refused in deepmine's one line, which `mlflow models serve` returns as its 400;
MLflow's own enforcement would refuse an integer column where training read floats). Image
models have no input schema, so arrays pass as well as a `path` column. `params` take
`on_unseen` (zeros | refuse: a category never seen in training).

It is logged as MLflow 3 logs a model: a `LoggedModel` of the run's experiment named `model`,
an output of the run, so `runs:/<run id>/model` and `models:/<model id>` both name it; its
`metadata.deepmine.pipeline` marks it as a pipeline (models logged before are refused with the
fix, by `deepmine predict`).

Why by hand rather than `mlflow.pyfunc.log_model`: that function talks to MLflow's global
tracking URI and active run, which deepmine never sets (one explicit client per store); the
steps below are its steps, through the run's client. Why a pickled Python object and not
"models from code": the pipeline is deepmine's own classes, pickled by reference, so loading
needs deepmine importable (`mlflow models serve --env-manager local` from the project's
environment) either way, and the pickle keeps the weights and fitted statistics in one file.
Why explicit pip requirements: MLflow otherwise infers them by loading the model in a
subprocess, which costs seconds per run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: the name of the logged model (so `runs:/<run id>/model`)
MODEL_NAME = "model"
#: the tag of a run whose model was registered: `<registered name>/<version>`
REGISTERED_TAG = "deepmine.model.registered"
#: rows of the input example
EXAMPLE_ROWS = 5
#: what the model needs installed besides deepmine itself
REQUIREMENTS = (
    "torch",
    "lightning",
    "torchmetrics",
    "numpy",
    "pandas",
    "pillow",
    "scikit-learn",
    "mlflow",
)


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    uri: str  # runs:/<run id>/model
    registered: str | None = None  # <name>/<version>


def requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_model(run, pipeline, step: int = 0, register: str | None = None) -> LoggedModel:
    """Log `pipeline` (`deepmine.run.pipeline.Pipeline`) as the run's MLflow model; register it
    as `register` when given."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from deepmine.tracking.pyfunc_model import PipelineModel, model_metadata, signature

    client = run.client
    logged = client.create_logged_model(
        run.experiment_id, name=MODEL_NAME, source_run_id=run.run_id
    )
    mlflow_model = Model(
        artifact_path=logged.artifact_location,
        model_uuid=logged.model_id,
        run_id=run.run_id,
        model_id=logged.model_id,
    )
    with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pyfunc", "mlflow.models"):
        path = Path(tmp) / MODEL_NAME
        mlflow.pyfunc.save_model(
            str(path),
            python_model=PipelineModel(pipeline),
            mlflow_model=mlflow_model,
            signature=signature(pipeline),
            pip_requirements=requirements(),
            metadata=model_metadata(pipeline),
        )
        client.log_model_artifacts(logged.model_id, str(path))
    client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=step)])
    client.finalize_logged_model(logged.model_id, "READY")
    registered = _register(run, logged, register) if register else None
    return LoggedModel(logged.model_id, f"runs:/{run.run_id}/{MODEL_NAME}", registered)


def _register(run, logged, name: str) -> str:
    """A new version of registered model `name` (created if missing) pointing at the logged
    model and the run; the run is tagged with `<name>/<version>`.

    The source is the logged model's artifact location, not `models:/<model id>`: MLflow's
    SQL registry resolves that URI through the global tracking URI (an MLflow TODO), which
    deepmine leaves unset, so it would look in (and create) ./mlflow.db instead."""
    from mlflow.exceptions import MlflowException

    client = run.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # or created meanwhile by a parallel job
            client.create_registered_model(name)
    version = client.create_model_version(
        name, source=logged.artifact_location, run_id=run.run_id, model_id=logged.model_id
    )
    # what `mlflow.register_model` adds after creating the version: the logged model lists its
    # versions in a tag, from which the UI's logged-models table links the registry
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    listed = client.get_logged_model(logged.model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = [*json.loads(listed or "[]"), {"name": name, "version": version.version}]
    client.set_logged_model_tags(logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
    registered = f"{name}/{version.version}"
    run.set_tags({REGISTERED_TAG: registered})
    return registered


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Loggers `names` below ERROR and Python warnings off for the block: MLflow warns on
    every pickled model that unpickling runs code (the README says it once instead of every
    run), and that `predict` has no type hints (the signature is written explicitly)."""
    import warnings

    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
