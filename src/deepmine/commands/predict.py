"""`deepmine predict`: score new data with a logged model and record the scoring as a run.

The model is the run's whole pipeline (`deepmine.run.pipeline`), loaded with
`mlflow.pyfunc.load_model` as any MLflow user would; the input is read, scored and written in
chunks (`deepmine.run.scoring`), so a file larger than memory scores in bounded memory. The
prediction run links the model (tags, model input), records the input as a dataset with context
`prediction`, the output file, rows, time and the drift of each input feature against the
training split (`deepmine.data.drift`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deepmine.config import register_resolvers
from deepmine.errors import DeepmineError
from deepmine.project import config_dir
from deepmine.run.checks import check_override_types
from deepmine.run.errors import report_errors
from deepmine.tracking.store import connect_store

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
@report_errors
def main(cfg: DictConfig) -> dict:
    return predict(cfg)


def predict(cfg: DictConfig) -> dict:
    from deepmine.data.csv_table import resolve
    from deepmine.run.scoring import InputReader, output_path
    from deepmine.tracking.model_source import find_model, load_pipeline_model

    hydra_cfg = HydraConfig.get()
    check_override_types(cfg, hydra_cfg.job.config_name, list(hydra_cfg.overrides.task))
    if bool(cfg.run_id) == bool(cfg.model):
        raise DeepmineError(
            "deepmine predict needs exactly one of run_id and model",
            "pass run_id=<run id>, or model=models:/<name>@<alias>",
        )
    store = connect_store(cfg)
    if store is None:
        raise DeepmineError("deepmine predict reads its model from MLflow", "drop logger=none")
    input_path = resolve(str(cfg.input))
    source = find_model(store, run_id=cfg.run_id, uri=cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_pipeline_model(store, source, Path(tmp))
    kind = source.metadata["input"]
    reader = InputReader(input_path, kind, int(cfg.chunk_rows))
    out_path, fmt = output_path(input_path, cfg.output, cfg.format)
    experiment = cfg.experiment_name or _experiment_of(store, source.run_id)
    result = _scored_run(cfg, store, experiment, source, model, reader, out_path, fmt)
    print(
        f"predictions   {result['output']} ({result['rows']} input rows, {result['seconds']:.1f} s)"
    )
    drifted = [row["feature"] for row in result["drift"] if row["drifted"]]
    if drifted:
        print(f"drift         PSI > {cfg.drift_threshold} in: {', '.join(drifted)}")
    print(f"MLflow run    {result['run_id']} (experiment '{experiment}')")
    return result


def _scored_run(cfg, store, experiment, source, model, reader, out_path, fmt) -> dict:
    from deepmine.data.drift import DriftCounter
    from deepmine.provenance.secrets import MASK, is_secret_key, mask_overrides, secret_values
    from deepmine.run.scoring import OutputWriter
    from deepmine.tracking.datasets import log_prediction_input
    from deepmine.tracking.pyfunc_model import predict_chunk
    from deepmine.tracking.run import recorded_run

    overrides = list(HydraConfig.get().overrides.task)
    secrets = secret_values(cfg, overrides)
    tags = {
        "mlflow.source.name": "deepmine predict",
        "deepmine.command": " ".join(["deepmine predict", *mask_overrides(overrides, secrets)]),
        "deepmine.predict.input": str(reader.path),
        "deepmine.predict.output": str(out_path),
        **source.tags(),
        **{
            str(k): MASK if is_secret_key(k) else str(v) for k, v in (cfg.get("tags") or {}).items()
        },
    }
    name = f"predict-{source.run_id[:8]}"
    drift = DriftCounter(source.metadata["references"], float(cfg.drift_threshold))
    writer = OutputWriter(out_path, fmt)
    rows = 0
    with recorded_run(store, experiment, name, tags, secret_values=secrets) as run:
        run.log_params(
            {k: cfg[k] for k in ("input", "output", "format", "chunk_rows", "on_unseen")}
            | {"model": source.uri}
        )
        started = time.perf_counter()
        try:
            with _progress(reader.path.name) as advance:
                for chunk in reader.chunks():
                    predictions = predict_chunk(
                        model, chunk.frame, {"on_unseen": str(cfg.on_unseen)}, drift
                    )
                    if len(chunk.ids.columns) and len(chunk.ids) == len(predictions):
                        predictions = chunk.ids.join(predictions.reset_index(drop=True))
                    writer.write(predictions)
                    rows += len(chunk.frame)
                    advance(chunk.done)
            seconds = time.perf_counter() - started
            path = writer.commit()
        except BaseException:
            writer.discard()
            raise
        table = drift.table()
        md5, hashed_name = _fingerprint(reader.path)
        log_prediction_input(
            run,
            hashed_name,
            str(reader.path),
            md5,
            {"num_rows": rows, "format": reader.path.suffix.lstrip(".") or "folder"},
            source.model_id,
        )
        metrics = {"rows": rows, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9)}
        metrics["drift/features_drifted"] = int(table["drifted"].sum())
        metrics |= {f"drift/psi/{r.feature}": float(r.psi) for r in table.itertuples()}
        run.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as folder:
            drift_csv = Path(folder) / "drift.csv"
            table.to_csv(drift_csv, index=False)
            run.log_file(drift_csv)
        if cfg.log_output:
            run.log_file(path, "predictions")
        run.set_tags({"deepmine.predict.drifted": ", ".join(table.feature[table.drifted])})
    return {
        "run_id": run.run_id,
        "output": str(path),
        "rows": rows,
        "seconds": seconds,
        "drift": table.to_dict("records"),
    }


def _fingerprint(path: Path) -> tuple[str, str]:
    """The input's MD5 (a folder's: of its images' paths and bytes) and dataset name."""
    if path.is_dir():
        from deepmine.data.image_folder import folder_hash

        return folder_hash(path), path.name
    from deepmine.data.tables import file_md5

    return file_md5(path), path.stem


def _experiment_of(store, run_id: str) -> str:
    run = store.client.get_run(run_id)
    return store.client.get_experiment(run.info.experiment_id).name


class _progress:
    """A progress bar on a terminal (share of the input read); nothing when piped."""

    def __init__(self, name: str):
        self.name = name
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"scoring {self.name}", total=1.0)
        return self.advance

    def advance(self, done: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def run(args: list[str]) -> int:
    """`deepmine predict [overrides]`: Hydra reads the overrides."""
    from deepmine.run.hydra_app import run_hydra_app

    return run_hydra_app(main, "predict", args)
