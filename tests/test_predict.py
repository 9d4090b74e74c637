"""The logged model as a whole pipeline: trained on tiny data, then scored on raw inputs (a
table's rows, image files, a series' history) through `mlflow.pyfunc.load_model` in a fresh
process and through `deepmine predict`; the predictions must equal the run's own test-set
outputs on the same rows (the recorded config and checkpoint rebuilt here, fed the
datamodule's test split as training prepared it).

Also: the prediction run's record (model link, dataset with context `prediction`, drift table,
output artifact), registry aliases, a model logged before pipelines (explained, then re-logged
by `deepmine eval`), bad input in one line with no partial output and no RUNNING run, and
`mlflow models serve` answering raw rows over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from conftest import Sandbox, deepmine_env, one_line_error, run_cli

CLASSES = np.array(["barolo", "grignolino", "barbera"])


# --- helpers ---------------------------------------------------------------------------------


def wine_table(path: Path) -> Path:
    """scikit-learn's wine as a user's CSV: a text target, a categorical column, a gap, and a
    split column, so the test rows are known here."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame["cultivar"] = CLASSES[frame.pop("target")]
    frame["alcohol_level"] = np.where(frame.alcohol > 13, "high", "low")
    frame.loc[3, "magnesium"] = np.nan
    frame["split"] = np.where(np.arange(len(frame)) % 5 == 0, "test", "train")
    frame.loc[np.arange(len(frame)) % 5 == 1, "split"] = "val"
    frame.to_csv(path, index=False)
    return path


def recorded_model(box: Sandbox, run_id: str, tmp: Path):
    """The run's task (best checkpoint) and datamodule, rebuilt from its recorded config."""
    from omegaconf import OmegaConf

    from deepmine.config import register_resolvers
    from deepmine.run.build import build_datamodule, build_task
    from deepmine.runtime.checkpoints import load_weights
    from deepmine.tracking.fetch import recorded_config_and_checkpoint
    from deepmine.tracking.store import connect

    register_resolvers()
    config, checkpoint = recorded_config_and_checkpoint(connect(box.uri), run_id, tmp)
    cfg = OmegaConf.load(config)
    task = build_task(cfg)
    load_weights(task, checkpoint)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    return task.eval(), datamodule


def outputs_on_test_split(task, datamodule) -> dict[str, np.ndarray]:
    """The task's outputs on the test split as the datamodule prepared it for training."""
    x, _ = datamodule.normalized("test")
    with torch.no_grad():
        return {k: v.numpy() for k, v in task.predict_outputs(x).items()}


def pyfunc_in_fresh_process(box: Sandbox, uri: str, data, tmp: Path) -> pd.DataFrame:
    """`mlflow.pyfunc.load_model(uri).predict(data)` in a new interpreter, the MLflow way: the
    store named by MLFLOW_TRACKING_URI, nothing of deepmine imported by hand."""
    source = tmp / "input.pkl"
    pd.to_pickle(data, source)
    out = tmp / "predicted.pkl"
    script = textwrap.dedent(
        f"""
        import mlflow.pyfunc, pandas as pd
        model = mlflow.pyfunc.load_model({uri!r})
        pd.to_pickle(model.predict(pd.read_pickle({str(source)!r})), {str(out)!r})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=box.cwd,
        env=deepmine_env(MLFLOW_TRACKING_URI=box.uri),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_pickle(out)


def predict_cli(box: Sandbox, *args: str):
    return run_cli(
        "predict", f"logger.tracking_uri={box.uri}", f"paths.log_dir={box.logs}", *args, cwd=box.cwd
    )


def trained(box: Sandbox, *overrides: str) -> str:
    proc = box.train("debug=fast", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return box.runs()[-1].info.run_id


def prediction_runs(box: Sandbox) -> list:
    """The prediction runs, oldest first, as `get_run` gives them (with their model inputs,
    which `search_runs` leaves out)."""
    client = box.client()
    return [
        client.get_run(r.info.run_id)
        for r in box.runs()
        if r.data.tags.get("mlflow.source.name") == "deepmine predict"
    ]


# --- a user's table: classification ----------------------------------------------------------


def wine_data(table: Path) -> list[str]:
    """The data overrides of a run on `wine_table`."""
    return [
        "data=csv",
        f"data.path={table}",
        "data.target=cultivar",
        "data.categorical=[alcohol_level]",
        "data.impute=median",
        "data.split_column=split",
    ]


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("wine"))
    table = wine_table(box.path / "wine.csv")
    run_id = trained(
        box,
        *wine_data(table),
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=null",
        "logger.register=wine",
    )
    frame = pd.read_csv(table)
    return box, run_id, frame


def test_csv_model_scores_raw_rows_as_the_run_scored_its_test_rows(wine, tmp_path):
    box, run_id, frame = wine
    task, datamodule = recorded_model(box, run_id, tmp_path / "rec")
    expected = outputs_on_test_split(task, datamodule)["probabilities"]
    names = datamodule.class_names
    raw = frame[frame.split == "test"].drop(columns=["cultivar"])  # extra columns: ignored
    raw = raw[list(reversed(raw.columns))]  # found by name, whatever the order

    fresh = pyfunc_in_fresh_process(box, f"runs:/{run_id}/model", raw, tmp_path)
    assert list(fresh.predicted) == [names[k] for k in expected.argmax(1)]
    probabilities = fresh[[f"probability_{n}" for n in names]].to_numpy()
    assert np.abs(probabilities - expected).max() < 1e-6
    assert set(fresh.predicted) <= set(CLASSES)

    new = box.cwd / "new.csv"
    raw.to_csv(new, index=False)
    proc = predict_cli(box, f"run_id={run_id}", "input=new.csv", "chunk_rows=7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.read_csv(box.cwd / "new.predictions.csv")
    assert list(written.row) == list(range(len(raw)))
    assert list(written.predicted) == list(fresh.predicted)
    assert np.abs(written[probabilities_columns(names)].to_numpy() - expected).max() < 1e-6
    assert not list(box.cwd.glob("*.partial-*"))

    (record,) = prediction_runs(box)
    assert record.info.status == "FINISHED"
    tags = record.data.tags
    assert tags["deepmine.predict.model_run_id"] == run_id
    model_id = tags["deepmine.predict.model_id"]
    assert [m.model_id for m in record.inputs.model_inputs] == [model_id]
    (dataset_input,) = record.inputs.dataset_inputs
    assert dataset_input.tags[0].value == "prediction"
    from deepmine.data.tables import file_md5

    assert dataset_input.dataset.digest == file_md5(new)
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == len(raw)
    assert record.data.metrics["rows"] == len(raw)
    client = box.client()
    artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert {"drift.csv", "predictions"} <= artifacts
    drift = pd.read_csv(client.download_artifacts(record.info.run_id, "drift.csv", str(tmp_path)))
    assert set(drift.feature) == set(raw.columns) - {"split"}
    assert record.data.metrics["drift/features_drifted"] == drift.drifted.sum()


def probabilities_columns(names) -> list[str]:
    return [f"probability_{n}" for n in names]


def test_drift_is_flagged_on_a_shifted_input_and_not_on_training_rows(wine):
    box, run_id, frame = wine
    train = frame[frame.split == "train"].drop(columns=["cultivar"])
    train.to_csv(box.cwd / "same.csv", index=False)
    shifted = train.assign(proline=train.proline * 3, alcohol_level="high")
    shifted.to_csv(box.cwd / "shifted.csv", index=False)
    for name in ("same", "shifted"):
        proc = predict_cli(box, f"run_id={run_id}", f"input={name}.csv", "format=parquet")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (box.cwd / f"{name}.predictions.parquet").is_file()
    same, shifted_run = prediction_runs(box)[-2:]
    assert same.data.metrics["drift/features_drifted"] == 0
    assert shifted_run.data.tags["deepmine.predict.drifted"] == "proline, alcohol_level"
    assert shifted_run.data.metrics["drift/psi/proline"] > 0.2


def test_registry_alias_promote_and_predict(wine):
    box, run_id, frame = wine
    promoted = run_cli(
        "models",
        "promote",
        "wine",
        "1",
        "--alias",
        "champion",
        f"--tracking-uri={box.uri}",
        cwd=box.cwd,
    )
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    listed = run_cli("models", "list", "wine", f"--tracking-uri={box.uri}", cwd=box.cwd)
    assert f"version 1  run {run_id}  @champion" in listed.stdout
    frame.head(5).to_csv(box.cwd / "five.csv", index=False)
    proc = predict_cli(box, "model=models:/wine@champion", "input=five.csv", "output=out/p.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_csv(box.cwd / "out" / "p.csv")) == 5
    tags = prediction_runs(box)[-1].data.tags
    assert tags["deepmine.predict.registered_model"] == "wine"
    assert tags["deepmine.predict.model_version"] == "1"
    assert tags["deepmine.predict.model_uri"] == "models:/wine@champion"
    # the run's own options: experiment, tags, no output artifact, a drift threshold
    shifted = frame.head(20).assign(proline=frame.proline.head(20) * 3)
    shifted.to_csv(box.cwd / "shifted20.csv", index=False)
    proc = predict_cli(
        box,
        f"run_id={run_id}",
        "input=shifted20.csv",
        "experiment_name=scored",
        "+tags.team=ops",
        "log_output=false",
        "drift_threshold=1000",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (scored,) = box.runs("scored")
    assert scored.data.tags["team"] == "ops"
    assert scored.data.tags["deepmine.predict.drifted"] == ""
    assert scored.data.metrics["drift/psi/proline"] > 0.2
    assert "predictions" not in {a.path for a in box.client().list_artifacts(scored.info.run_id)}
    missing = run_cli(
        "models",
        "promote",
        "wine",
        "9",
        "--alias",
        "champion",
        f"--tracking-uri={box.uri}",
        cwd=box.cwd,
    )
    assert missing.returncode == 2 and "version 9" in one_line_error(missing)


def test_bad_input_one_line_no_partial_file_no_running_run(wine):
    box, run_id, frame = wine
    rows = frame.drop(columns=["cultivar"]).head(20)
    cases = {
        "missing.csv": (rows.drop(columns=["proline"]), "no column(s) 'proline'"),
        "word.csv": (rows.assign(ash=["x", *list(rows.ash[1:])]), "'ash' has 1 non-numeric"),
        "unseen.csv": (rows.assign(alcohol_level="medium"), "never seen in training"),
    }
    before = len(prediction_runs(box))
    for name, (data, problem) in cases.items():
        data.to_csv(box.cwd / name, index=False)
        (box.cwd / f"{Path(name).stem}.predictions.csv").write_text("an older complete file\n")
        proc = predict_cli(box, f"run_id={run_id}", f"input={name}", "on_unseen=refuse")
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = one_line_error(proc)
        assert problem in line and "Fix:" in line, line
        kept = (box.cwd / f"{Path(name).stem}.predictions.csv").read_text()
        assert kept == "an older complete file\n", "the older output stays as it was"
    assert not list(box.cwd.glob("*.partial-*"))
    runs = prediction_runs(box)[before:]
    assert [r.info.status for r in runs] == ["FAILED"] * len(cases)
    # without refuse, an unseen category is encoded as zeros, with a warning
    proc = predict_cli(box, f"run_id={run_id}", "input=unseen.csv")
    assert proc.returncode == 0 and "never seen in training" in proc.stderr
    proc = predict_cli(box, f"run_id={run_id}")
    assert proc.returncode != 0 and "input" in proc.stderr


def test_a_model_logged_before_pipelines_is_explained_and_eval_relogs_it(wine, tmp_path):
    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput

    box, _, frame = wine
    proc = box.train("debug=fast", *wine_data(box.path / "wine.csv"), "logger.log_model=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    old = box.runs()[-1]
    client = box.client()
    # the model as deepmine logged it before: the pytorch flavour of the bare net
    logged = client.create_logged_model(
        old.info.experiment_id, name="model", source_run_id=old.info.run_id
    )
    folder = tmp_path / "model"
    mlflow.pytorch.save_model(torch.nn.Linear(16, 3), str(folder), serialization_format="pickle")
    client.log_model_artifacts(logged.model_id, str(folder))
    client.log_outputs(old.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    frame.head(3).to_csv(box.cwd / "three.csv", index=False)
    proc = predict_cli(box, f"run_id={old.info.run_id}", "input=three.csv")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "logged before deepmine logged whole pipelines" in line
    assert f"`deepmine eval run_id={old.info.run_id}`" in line
    # the fix, followed literally
    proc = run_cli(
        "eval",
        f"run_id={old.info.run_id}",
        f"logger.tracking_uri={box.uri}",
        f"paths.log_dir={box.logs}",
        cwd=box.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluation = next(
        r for r in box.runs() if r.data.tags.get("deepmine.evaluated_run") == old.info.run_id
    )
    proc = predict_cli(box, f"run_id={evaluation.info.run_id}", "input=three.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pd.read_csv(box.cwd / "three.predictions.csv")) == 3


# --- serving --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_mlflow_models_serve_answers_raw_rows_on_loopback(wine, tmp_path):
    import mlflow.artifacts

    box, run_id, frame = wine
    (output,) = box.client().get_run(run_id).outputs.model_outputs
    location = box.client().get_logged_model(output.model_id).artifact_location
    model_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=str(tmp_path), tracking_uri=box.uri
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            model_dir,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        cwd=box.cwd,
        # as from the activated environment: MLflow execs `uvicorn` by name
        env=deepmine_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
        start_new_session=True,  # its own process group, stopped whole below
    )
    tree: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/ping", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the scoring server did not answer /ping"
            time.sleep(0.5)
        tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        listening = [
            c.laddr.ip
            for p in tree
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and set(listening) <= {"127.0.0.1", "::1"}, listening
        rows = frame[frame.split == "test"].drop(columns=["cultivar", "split"]).head(4)
        split = json.loads(rows.to_json(orient="split", index=False))
        status, answer = post(f"{url}/invocations", {"dataframe_split": split})
        assert status == 200, answer
        predicted = pd.DataFrame(answer["predictions"])
        assert set(predicted.predicted) <= set(CLASSES) and len(predicted) == 4
        sums = predicted[[f"probability_{c}" for c in sorted(CLASSES)]].sum(axis=1)
        assert np.allclose(sums, 1.0, atol=1e-5)
        wrong = json.loads(rows.drop(columns=["hue"]).to_json(orient="split", index=False))
        status, answer = post(f"{url}/invocations", {"dataframe_split": wrong})
        assert status == 400
        assert "no column(s) 'hue', which the model was trained on" in answer["message"]
        assert "Fix: add the column(s) to the input" in answer["message"]
    finally:
        if not tree:
            with contextlib.suppress(psutil.Error):
                tree = [psutil.Process(server.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        server.wait(timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)


# --- images ---------------------------------------------------------------------------------


def test_image_folder_model_scores_image_files(tmp_path):
    from deepmine.data.digits import DigitsDataModule
    from deepmine.data.image_export import export_images

    box = Sandbox(tmp_path)
    digits = DigitsDataModule(num_classes=10, input_shape=[1, 8, 8])
    root = box.path / "digits"
    export_images(digits, "train", root / "train", limit_per_class=12)
    export_images(digits, "test", root / "test", limit_per_class=4)
    run_id = trained(
        box,
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=[8,8]",
        "data.cache_dir=null",
    )
    task, datamodule = recorded_model(box, run_id, tmp_path / "rec")
    expected = outputs_on_test_split(task, datamodule)["probabilities"]
    files = sorted(str(p) for p in (root / "test").rglob("*.png"))
    assert len(files) == len(expected)

    fresh = pyfunc_in_fresh_process(
        box, f"runs:/{run_id}/model", pd.DataFrame({"path": files}), tmp_path
    )
    names = datamodule.class_names
    assert list(fresh.predicted) == [names[k] for k in expected.argmax(1)]
    assert np.abs(fresh[probabilities_columns(names)].to_numpy() - expected).max() < 1e-6

    proc = predict_cli(
        box, f"run_id={run_id}", f"input={root / 'test'}", f"output={box.path / 'scores.csv'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.read_csv(box.path / "scores.csv")
    assert list(written.path) == files
    assert list(written.predicted.astype(str)) == list(fresh.predicted.astype(str))

    # arrays of another size are resized as files are; an unreadable file is one line
    from deepmine.tracking.model_source import find_model, load_pipeline_model
    from deepmine.tracking.store import connect

    store = connect(box.uri)
    model = load_pipeline_model(store, find_model(store, run_id=run_id), tmp_path / "model")
    assert len(model.predict(np.zeros((2, 16, 16), dtype=np.uint8))) == 2
    one = predict_cli(
        box, f"run_id={run_id}", f"input={files[0]}", f"output={box.path / 'one.csv'}"
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert list(pd.read_csv(box.path / "one.csv").predicted.astype(str)) == [
        str(fresh.predicted[0])
    ]
    bad = root / "test" / "0" / "broken.png"
    bad.write_bytes(b"not an image")
    proc = predict_cli(box, f"run_id={run_id}", f"input={root / 'test'}")
    assert proc.returncode == 2 and "cannot read image" in one_line_error(proc)


# --- regression, forecasting, clustering, anomaly --------------------------------------------


def test_regression_model_answers_in_the_targets_units(tmp_path):
    from sklearn.datasets import load_diabetes

    box = Sandbox(tmp_path)
    run_id = trained(box, "task=regression", "data=diabetes")
    task, datamodule = recorded_model(box, run_id, tmp_path / "rec")
    expected = outputs_on_test_split(task, datamodule)["values"][:, 0]
    raw = load_diabetes(scaled=False, as_frame=True).frame.iloc[datamodule.rows["test"]]

    fresh = pyfunc_in_fresh_process(box, f"runs:/{run_id}/model", raw, tmp_path)
    assert np.abs(fresh.predicted_progression.to_numpy() - expected).max() < 1e-4
    assert 25 < fresh.predicted_progression.mean() < 350  # disease progression, not z-scores

    raw.to_csv(box.cwd / "patients.csv", index=False)
    proc = predict_cli(box, f"run_id={run_id}", "input=patients.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.read_csv(box.cwd / "patients.predictions.csv")
    assert np.abs(written.predicted_progression.to_numpy() - expected).max() < 1e-4


def test_forecasting_model_forecasts_the_next_steps_with_their_times(tmp_path):
    box = Sandbox(tmp_path)
    run_id = trained(box, "task=forecasting", "data=sunspots")
    task, datamodule = recorded_model(box, run_id, tmp_path / "rec")
    expected = outputs_on_test_split(task, datamodule)["forecast"]  # (windows, horizon, targets)
    series = pd.read_csv(datamodule.path)
    origin = int(datamodule.window_origins["test"][0])
    history = series.iloc[:origin]

    fresh = pyfunc_in_fresh_process(box, f"runs:/{run_id}/model", history, tmp_path)
    target = datamodule.target_columns[0]
    assert len(fresh) == datamodule.horizon and list(fresh.step) == list(
        range(1, datamodule.horizon + 1)
    )
    assert np.abs(fresh[target].to_numpy() - expected[0, :, 0]).max() < 1e-3
    future = pd.to_datetime(series.date.iloc[origin : origin + datamodule.horizon])
    assert list(pd.to_datetime(fresh.date)) == list(future)

    history.to_csv(box.cwd / "history.csv", index=False)
    proc = predict_cli(box, f"run_id={run_id}", "input=history.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = pd.read_csv(box.cwd / "history.predictions.csv")
    assert np.abs(written[target].to_numpy() - expected[0, :, 0]).max() < 1e-3
    series.iloc[:5].to_csv(box.cwd / "short.csv", index=False)
    proc = predict_cli(box, f"run_id={run_id}", "input=short.csv")
    assert proc.returncode == 2 and "fewer than the" in one_line_error(proc)


def test_clustering_model_assigns_the_runs_clusters(tmp_path):
    box = Sandbox(tmp_path)
    table = wine_table(box.path / "wine.csv")
    features = pd.read_csv(table).drop(columns=["cultivar"])
    unlabeled = box.path / "unlabeled.csv"
    features.to_csv(unlabeled, index=False)
    run_id = trained(
        box,
        "task=clustering",
        "net=autoencoder",
        "data=csv",
        f"data.path={unlabeled}",
        "data.target=null",
        "data.split_column=split",
        "data.categorical=[alcohol_level]",
        "data.impute=median",
        "task.num_clusters=3",
    )
    client = box.client()
    assignments = pd.read_csv(
        client.download_artifacts(run_id, "results/assignments.csv", str(tmp_path))
    )
    clusters = assignments[assignments.split == "test"].cluster_ae_kmeans.to_numpy()
    raw = features[features.split == "test"]

    fresh = pyfunc_in_fresh_process(box, f"runs:/{run_id}/model", raw, tmp_path)
    assert list(fresh.cluster) == list(clusters)
    distances = fresh[[f"distance_{k}" for k in range(3)]].to_numpy()
    assert (distances.argmin(1) == fresh.cluster.to_numpy()).all()

    raw.to_csv(box.cwd / "new.csv", index=False)
    proc = predict_cli(box, f"run_id={run_id}", "input=new.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(pd.read_csv(box.cwd / "new.predictions.csv").cluster) == list(clusters)


def test_anomaly_model_flags_as_the_run_flagged(tmp_path):
    from deepmine.data.digits import DigitsDataModule

    box = Sandbox(tmp_path)
    run_id = trained(
        box,
        "task=anomaly",
        "net=autoencoder",
        "data=digits",
        "task.normal_classes=[8]",
        "task.baseline=false",
    )
    client = box.client()
    scores = pd.read_csv(client.download_artifacts(run_id, "results/scores.csv", str(tmp_path)))
    test = scores[scores.split == "test"]
    digits = DigitsDataModule(num_classes=10, input_shape=[1, 8, 8])
    digits.setup()
    images = digits.tensors["test"][0].numpy()  # raw pixels 0..16, as stored

    fresh = pyfunc_in_fresh_process(box, f"runs:/{run_id}/model", images, tmp_path)
    assert list(fresh.anomalous) == list(test.flagged.astype(bool))
    assert np.abs(fresh.anomaly_score.to_numpy() - test.score.to_numpy()).max() < 1e-6
    threshold = client.get_run(run_id).data.metrics["test/threshold"]
    assert (fresh.anomalous == (fresh.anomaly_score > threshold)).all()


def test_table_codec_reads_a_category_as_training_labelled_it():
    """Codes read as ints, as floats (a gap elsewhere in the file) or as text are one label,
    as `tables.as_labels` made them in training; a gap is an all-zero row."""
    from deepmine.data.codecs import TableCodec

    codec = TableCodec(
        [
            {"name": "k", "kind": "category", "categories": ["1", "2"]},
            {"name": "v", "kind": "numeric", "fill": 3.0, "mean": 1.0, "std": 2.0},
        ]
    )
    expected = [[1.0, 0.0, -0.25], [0.0, 1.0, 1.0]]
    for codes in ([1, 2], [1.0, 2.0], pd.Series(["1", "2"], dtype="string")):
        x = codec.encode(pd.DataFrame({"v": [0.5, None], "k": codes}))
        assert x.tolist() == expected
    gap = codec.encode(pd.DataFrame({"k": [1.0, None], "v": [0.5, 0.5]}))
    assert gap[1, :2].tolist() == [0.0, 0.0]
