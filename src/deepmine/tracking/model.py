"""The trained model as an MLflow model: loadable with `mlflow.pytorch.load_model`, servable
with `mlflow models serve`, optionally registered in the model registry.

What is logged is a task module with the best checkpoint's weights (what `trainer.test`
scored; `run.records.log_model` builds it afresh, so nothing of the trainer or the test comes
along), as MLflow 3 logs a model: a `LoggedModel` of the run's experiment named `model`, an
output of the run, so `runs:/<run id>/model` and `models:/<model id>` both name it. Its
signature and input example come from a few rows of a real test batch, as the net sees them
(normalized by the data module); its outputs are the task's raw outputs (class logits;
standardized values for regression and forecasting).

Why by hand rather than `mlflow.pytorch.log_model`: that function talks to MLflow's global
tracking URI and active run, which deepmine never sets (one explicit client per store, no state
leaking between jobs of one process); the steps below are its steps, through the run's client.

Why the pickle format and not MLflow's default `pt2` (`torch.export`): the exported graph fixes
the batch size of the example for the sequence nets and the autoencoders (their reshapes read
`len(x)`), so the served model would refuse any other batch. Loading the pickle needs deepmine
importable (its classes are pickled by reference): `mlflow models serve --env-manager local`
from the project's environment.

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
REQUIREMENTS = ("torch", "lightning", "torchmetrics", "numpy", "mlflow")


@dataclass(frozen=True)
class LoggedModel:
    model_id: str
    uri: str  # runs:/<run id>/model
    registered: str | None = None  # <name>/<version>


def requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_model(run, module, batch, step: int = 0, register: str | None = None) -> LoggedModel:
    """Log `module` (a torch module, moved to the CPU and set to eval mode) as the run's MLflow
    model, with the first rows of `batch` (a tensor of inputs) as its example; register it as
    `register` when given."""
    import mlflow.pytorch
    import torch
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model, infer_signature

    module = module.cpu().eval()
    example = batch[:EXAMPLE_ROWS].detach().cpu()
    with torch.no_grad():
        outputs = module(example)
    signature = infer_signature(example.numpy(), outputs.numpy())
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
    with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pytorch"):
        path = Path(tmp) / MODEL_NAME
        mlflow.pytorch.save_model(
            module,
            str(path),
            mlflow_model=mlflow_model,
            signature=signature,
            input_example=example.numpy(),
            pip_requirements=requirements(),
            serialization_format="pickle",
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
def _quiet(name: str) -> Iterator[None]:
    """Logger `name` below ERROR for the block: MLflow warns on every pickled model that
    unpickling runs code, which the README says once instead of every run."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
