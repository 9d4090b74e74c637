"""A Lightning logger that writes metrics into an MLflow run opened by deepmine.

Why not Lightning's `MLFlowLogger`: it owns the run's lifecycle (its `finalize` ends the run
when `fit` returns, before `test` and the artifacts), truncates params to 250 characters, and
resolves the tracking URI from the environment at import time. Here the run belongs to
`deepmine.tracking.run`; this logger only streams metrics into it and remembers what it sent,
so learning curves can be drawn without reading the store back.

Metrics never block training: they are buffered in memory and handed to a background thread
as one batch every `flush_every_s` seconds. A synchronous `log_batch` into SQLite took 5-20 ms
here, as long as 10-60 training steps of a small net. `flush()` sends the rest and waits for
every batch, raising if one failed; the run calls it before it closes, whatever status it closes
with, so no metric is lost.

The thread is this logger's own (one worker, stopped by `flush`), not MLflow's asynchronous
logging (`log_batch(synchronous=False)`): closing a run shuts MLflow's queue down, and its
thread only sees that after its one-second poll of an empty queue, so every run waited 0.5 s
on average at its end (measured: a quarter of each further job of a small sweep). Clients that
are not a plain MlflowClient (the failover client, which must see a lost server at once) get
their `log_batch` calls as before.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

#: MLflow's cap on metrics per `log_batch`.
MAX_METRICS_PER_BATCH = 1000


class MlflowRunLogger(Logger):
    """Streams `self.log` metrics into one existing MLflow run, in the background."""

    def __init__(self, client, run_id: str, experiment_name: str, flush_every_s: float = 5.0):
        super().__init__()
        if flush_every_s < 0:
            raise ValueError(f"flush_every_s must be >= 0, got {flush_every_s}")
        self._client = client
        self._run_id = run_id
        self._experiment_name = experiment_name
        self.flush_every_s = flush_every_s
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        #: points a resumed run had already stored, (key, step, value) -> count
        self.stored: Counter = Counter()
        self._pending: list = []
        self._in_flight: list = []  # futures (or MLflow RunOperations) not yet waited for
        self._sender = None  # the worker thread's executor, from the first send to a flush
        self._last_send = time.monotonic()

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
        for key, value in metrics.items():
            value = float(value)
            if self.stored and self.stored[(key, step, value)] > 0:
                # a resumed run replaying steps it had logged before its interruption: the
                # same point again is not a new one (a different value still is logged)
                self.stored[(key, step, value)] -= 1
                continue
            self.history[key].append((step, value))
            self._pending.append(Metric(key=key, value=value, timestamp=now, step=step))
        if (
            len(self._pending) >= MAX_METRICS_PER_BATCH
            or time.monotonic() - self._last_send >= self.flush_every_s
        ):
            self._send()

    def _send(self) -> None:
        """Hand the buffered metrics to MLflow's background thread, in batches it accepts."""
        pending, self._pending = self._pending, []
        raw = _plain_client(self._client)
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            if raw is None:
                operation = self._client.log_batch(self._run_id, metrics=chunk, synchronous=False)
            else:
                if self._sender is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._sender = ThreadPoolExecutor(1, thread_name_prefix="deepmine-metrics")
                operation = self._sender.submit(raw.log_batch, self._run_id, metrics=chunk)
            self._in_flight.append(operation)
        self._last_send = time.monotonic()

    def flush(self) -> None:
        """Send what is buffered and wait until the store has every metric logged so far;
        raises the error of a batch that failed. The worker thread is stopped (it is idle:
        that returns at once) and started again by the next send."""
        self._send()
        in_flight, self._in_flight = self._in_flight, []
        waited = False
        try:
            for operation in in_flight:
                if operation is None:
                    continue
                if hasattr(operation, "result"):
                    operation.result()
                else:
                    operation.wait()
            waited = True
        finally:
            sender, self._sender = self._sender, None
            if sender is not None:  # an interrupted wait does not wait for the thread either
                sender.shutdown(wait=waited)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush at the end of fit and test (the run itself is ended by
        `deepmine.tracking.run`, after test and artifacts)."""
        self.flush()


def _plain_client(client):
    """The MlflowClient under deepmine's interrupt-safe wrapper, or None for any other client.
    The worker thread calls it unwrapped: the wrapper's `critical()` belongs to the main thread
    (signals are delivered there), as for the heartbeat's thread."""
    from mlflow import MlflowClient

    raw = getattr(client, "_client", client)
    return raw if type(raw) is MlflowClient else None
