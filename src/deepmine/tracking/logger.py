"""A Lightning logger that writes metrics into an MLflow run opened by deepmine.

Why not Lightning's `MLFlowLogger`: it owns the run's lifecycle (its `finalize` ends the run
when `fit` returns, before `test` and the artifacts), truncates params to 250 characters, and
resolves the tracking URI from the environment at import time. Here the run belongs to
`deepmine.tracking.run`; this logger only streams metrics into it and remembers what it sent,
so learning curves can be drawn without reading the store back.
"""

from __future__ import annotations

import time
from collections import defaultdict

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only


class MlflowRunLogger(Logger):
    """Streams `self.log` metrics into one existing MLflow run."""

    def __init__(self, client, run_id: str, experiment_name: str):
        super().__init__()
        self._client = client
        self._run_id = run_id
        self._experiment_name = experiment_name
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """No-op: deepmine logs the whole resolved config itself, untruncated."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        step = int(step or 0)
        now = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            value = float(value)
            self.history[key].append((step, value))
            entries.append(Metric(key=key, value=value, timestamp=now, step=step))
        # MLflow caps a batch at 1000 metrics; Lightning sends far fewer per call.
        for start in range(0, len(entries), 1000):
            self._client.log_batch(self._run_id, metrics=entries[start : start + 1000])

    def finalize(self, status: str) -> None:
        """No-op: the run is ended by `deepmine.tracking.run`, after test and artifacts."""
