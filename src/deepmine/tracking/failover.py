"""`logger.failover=true` mid-run: a run whose server goes away continues in the offline spool.

A run that starts while its server answers is recorded there; its client is this
`FailoverClient`. When a call fails because the server cannot be reached any more (after
MLflow's own retries: `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_TIMEOUT`), the
client warns once and opens the spool (`deepmine.tracking.spool`). Each run it was writing gets
a *continuation* there: a run with the same name, start time, params and tags (the client
remembers what it wrote, since the server can no longer be read), tagged
`deepmine.sync.continues=<server run id>`. That call and every later one go to the spool, with
the server's run, experiment and logged-model ids mapped to their continuation's, so nothing
above this module knows: the run keeps its server id everywhere, a metric batch that failed is
written to the spool, and the run is closed there. `deepmine sync` then joins the two parts into
the server's run (`deepmine.tracking.sync`): the missing params, tags, metric points, artifacts,
models and the final status, so the server's run ends complete, with no gap in its histories.

Metric batches go synchronously here (MLflow's background queue would report a lost server only
when the run flushes, long after training moved on); they are sent every
`logger.flush_every_s`, so that costs one call per few seconds. The heartbeat's own client is
not wrapped: its beats to the dead server fail quietly, as heartbeats do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepmine.tracking.store import Store

CONTINUES_TAG = "deepmine.sync.continues"
#: keyword arguments of MlflowClient methods that name a run, and those that name an experiment
RUN_KEYWORDS = ("run_id", "source_run_id")
EXPERIMENT_KEYWORDS = ("experiment_id",)


@dataclass
class _Written:
    """What this client wrote for one run, to open its continuation without the server."""

    experiment_name: str
    name: str | None
    start_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def store_for(logger) -> Store:
    """The store a run with config `logger` records into: the spool (offline, or failed over
    at start), else the configured store, whose client fails over mid-run when
    `logger.failover` asks for it."""
    from deepmine.tracking.spool import open_spool
    from deepmine.tracking.store import connect

    spool = open_spool(logger)
    if spool is not None:
        return spool
    store = connect(logger.tracking_uri, logger.get("artifact_location"))
    if logger.get("failover") and store.uri.startswith(("http://", "https://")):
        store.client = FailoverClient(store, logger.get("spool_dir") or "mlruns-offline")
    return store


def lost_server(exc: BaseException) -> bool:
    """Whether `exc` says the server could not be reached (not that it refused the call)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    text = str(exc)
    return "failed with exception" in text and any(
        sign in text
        for sign in ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out")
    )


class FailoverClient:
    def __init__(self, store: Store, spool_dir: str):
        self._client = store.client
        self._uri = store.uri
        self._spool_dir = spool_dir
        self._spool: Store | None = None
        self._written: dict[str, _Written] = {}
        self._runs: dict[str, str] = {}  # server run id -> continuation run id
        self._experiment_names: dict[str, str] = {}  # server experiment id -> its name

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            if self._spool is None:
                if name == "log_batch":
                    kwargs.pop("synchronous", None)  # a lost server must show here
                try:
                    result = attribute(*args, **kwargs)
                except Exception as exc:
                    if not lost_server(exc):
                        raise
                    self._fail_over(exc)
                else:
                    self._remember(name, args, kwargs, result)
                    return result
            return self._on_spool(name, args, kwargs)

        return call

    # --- while the server answers -------------------------------------------------------------

    def _remember(self, name: str, args: tuple, kwargs: dict, result) -> None:
        if name == "create_run":
            experiment_id = args[0] if args else kwargs["experiment_id"]
            if experiment_id not in self._experiment_names:
                experiment = self._client.get_experiment(experiment_id)
                self._experiment_names[experiment_id] = experiment.name
            self._written[result.info.run_id] = _Written(
                self._experiment_names[experiment_id],
                kwargs.get("run_name"),
                kwargs.get("start_time") or result.info.start_time,
                dict(kwargs.get("tags") or {}),
            )
            return
        run_id = args[0] if args else kwargs.get("run_id")
        written = self._written.get(run_id)
        if written is None:
            return
        if name == "log_batch":
            params = kwargs.get("params") or (args[2] if len(args) > 2 else [])
            tags = kwargs.get("tags") or (args[3] if len(args) > 3 else [])
            written.params.update({p.key: p.value for p in params})
            written.tags.update({t.key: t.value for t in tags})
        elif name == "log_param":
            written.params[str(args[1])] = str(args[2])
        elif name == "set_tag":
            written.tags[str(args[1])] = str(args[2])
        elif name == "update_run" and kwargs.get("name"):
            written.name = kwargs["name"]

    # --- once it is gone ----------------------------------------------------------------------

    def _fail_over(self, exc: BaseException) -> None:
        from mlflow.entities import Param

        from deepmine.tracking.spool import note_failover, open_spool_store

        note_failover(self._uri, self._spool_dir, f"lost the MLflow tracking server ({exc})")
        spool = open_spool_store(self._uri, self._spool_dir)
        for run_id, written in self._written.items():
            experiment_id = spool.experiment_id(written.experiment_name)
            tags = {**written.tags, **(spool.run_tags or {}), CONTINUES_TAG: run_id}
            created = spool.client.create_run(
                experiment_id, start_time=written.start_time, tags=tags, run_name=written.name
            )
            params = [Param(k, v) for k, v in written.params.items()]
            for start in range(0, len(params), 100):
                spool.client.log_batch(created.info.run_id, params=params[start : start + 100])
            self._runs[run_id] = created.info.run_id
        self._spool = spool

    def _on_spool(self, name: str, args: tuple, kwargs: dict):
        spool = self._spool
        args = list(args)
        if name in ("create_run", "create_logged_model", "search_runs", "search_logged_models"):
            if args:
                args[0] = self._experiment(args[0])
        elif args and isinstance(args[0], str):
            args[0] = self._runs.get(args[0], args[0])
        for key in RUN_KEYWORDS:
            if key in kwargs:
                kwargs[key] = self._runs.get(kwargs[key], kwargs[key])
        for key in EXPERIMENT_KEYWORDS:
            if key in kwargs:
                kwargs[key] = self._experiment(kwargs[key])
        if "experiment_ids" in kwargs:
            kwargs["experiment_ids"] = [self._experiment(e) for e in kwargs["experiment_ids"]]
        return getattr(spool.client, name)(*args, **kwargs)

    def _experiment(self, experiment):
        """The spool's id of a server experiment (by name), for a list too."""
        if isinstance(experiment, list | tuple):
            return [self._experiment(e) for e in experiment]
        name = self._experiment_names.get(experiment)
        return self._spool.experiment_id(name) if name else experiment
