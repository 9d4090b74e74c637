"""A real `deepmine train` subprocess writes a complete record into a temporary SQLite store,
read back here with the MLflow client."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

LONG_NOTE = "n" * 300  # longer than Lightning's 250-char param cut


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from conftest import one_recorded_run

    return one_recorded_run(
        tmp_path_factory, "record", "debug=fast", f"+notes={LONG_NOTE}", "+tags.purpose=test"
    )


def artifact_paths(client, run_id, path=None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_run_finished_with_conventional_name(recorded):
    box, proc, run = recorded
    assert run.info.status == "FINISHED"
    experiment = box.client().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # <net>-<data> and the overrides that chose something (paths, store and tags left out)
    assert run.info.run_name.startswith("seed_mlp-fashion_mnist debug=fast notes=nnn")
    assert len(run.info.run_name) == 60 and run.info.run_name.endswith("…")
    assert run.info.run_id in proc.stdout and "test/acc" in proc.stdout
    assert f"mlflow ui --backend-store-uri {box.uri}" in proc.stdout
    link = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType="
    assert link in proc.stdout


def test_params_are_the_whole_resolved_config_untruncated(recorded):
    _, _, run = recorded
    params = run.data.params
    assert params["net.hidden_sizes"] == "[64]"
    assert params["optimizer.lr"] == "0.001"
    assert params["optimizer._target_"] == "torch.optim.Adam"
    assert params["data.batch_size"] == "32"
    assert params["seed"] == "42"
    assert params["notes"] == LONG_NOTE
    assert not any("${" in v for v in params.values()), "interpolations must be resolved"
    # machine paths stay out: project paths relative, run outputs and the store left out
    assert params["data.data_dir"] == "data/fashion_mnist"
    assert params["data.cache_dir"] == ".cache/decoded"
    assert "paths.output_dir" not in params and "logger.tracking_uri" not in params
    assert not any(str(ROOT) in v or "/tmp" in v for v in params.values())


def test_datasets_carry_the_dvc_data_version(recorded):
    """Fashion-MNIST is read from data/: each split's dataset names the DVC pin."""
    _, _, run = recorded
    pinned = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    inputs = run.inputs.dataset_inputs
    contexts = sorted(i.tags[0].value for i in inputs)
    assert contexts == ["test", "training", "validation"]
    for item in inputs:
        dataset = item.dataset
        assert dataset.name == "fashion_mnist" and dataset.source_type == "local"
        assert dataset.digest.startswith(pinned[:8] + "-")
        source = json.loads(dataset.source)
        assert source["uri"] == "data/fashion_mnist" and source["dvc_md5"] == pinned
    rows = {i.tags[0].value: json.loads(i.dataset.profile)["num_rows"] for i in inputs}
    assert rows == {"training": 54000, "validation": 6000, "test": 10000}


def test_tags_record_code_data_environment(recorded):
    _, _, run = recorded
    tags = run.data.tags
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert tags["deepmine.git.commit"] == head == tags["mlflow.source.git.commit"]
    assert tags["deepmine.git.dirty"] in ("true", "false")
    pinned = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    assert tags["deepmine.data.md5"] == pinned
    assert tags["deepmine.data.matches"] == "true"
    assert tags["deepmine.version.torch"].startswith("2.")
    for key in ("lightning", "mlflow", "hydra-core", "dvc", "deepmine"):
        assert tags[f"deepmine.version.{key}"] not in ("", "not installed")
    assert tags["deepmine.host.python"].startswith("3.")
    assert tags["deepmine.seed"] == "42"
    assert tags["deepmine.command"].startswith("deepmine train paths.log_dir=")
    assert "debug=fast" in tags["deepmine.overrides"]
    assert tags["purpose"] == "test"


def test_metrics_stream_per_step_and_per_epoch(recorded):
    box, _, run = recorded
    client = box.client()
    history = {k: client.get_metric_history(run.info.run_id, k) for k in run.data.metrics}
    assert [m.step for m in history["train/loss"]] == [0, 1, 2, 3, 4]  # every step, 5 batches
    for key in (
        "train/loss_epoch",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "val/acc_best",
        "test/acc",
        "test/f1_macro",
        "test/loss",
    ):
        assert len(history[key]) == 1, key
        assert 0 <= history[key][0].value <= (10 if "loss" in key else 1)
    assert history["test/acc"][0].step == 5


def test_artifacts_present_and_correct(recorded):
    box, _, run = recorded
    client = box.client()
    paths = artifact_paths(client, run.info.run_id)
    expected = {
        "config/config.yaml",
        "config/overrides.yaml",
        "config/hydra.yaml",
        "plots/confusion_matrix.png",
        "plots/learning_curves.png",
        "metrics.json",
        "environment/pip-freeze.txt",
    }
    assert expected <= paths
    assert any(p.startswith("checkpoints/") and p.endswith(".ckpt") for p in paths)
    local = Path(client.download_artifacts(run.info.run_id, "", str(box.path / "dl")))
    config = yaml.safe_load((local / "config/config.yaml").read_text())
    assert config["net"]["hidden_sizes"] == [64] and config["notes"] == LONG_NOTE
    assert "debug=fast" in yaml.safe_load((local / "config/overrides.yaml").read_text())
    summary = json.loads((local / "metrics.json").read_text())
    assert summary["metrics"]["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    assert summary["objective"]["name"] == "val/acc_best"
    assert "torch==" in (local / "environment/pip-freeze.txt").read_text()
    for png in ("confusion_matrix", "learning_curves"):
        assert (local / f"plots/{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_run_id_is_written_next_to_the_checkpoints(recorded):
    box, _, run = recorded
    (record,) = box.logs.glob("train/runs/*/*/mlflow_run.json")
    data = json.loads(record.read_text())
    assert data == {"run_id": run.info.run_id, "experiment": "default", "tracking_uri": box.uri}
    assert list(record.parent.glob("checkpoints/*.ckpt")), "checkpoints live beside the run id"


def test_nothing_written_to_the_working_directory(recorded):
    box, _, _ = recorded
    assert list(box.cwd.iterdir()) == []


def test_experiment_name_and_logger_none(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "experiment_name=digits-study")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(sandbox.runs("digits-study")) == 1 and sandbox.runs("default") == []
    proc = sandbox.train("data=digits", "debug=fast", "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/acc" in proc.stdout and "MLflow run" not in proc.stdout
    assert len(sandbox.runs("digits-study")) == 1


def test_print_config_shows_the_tree(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "print_config=true", "logger=none")
    assert proc.returncode == 0
    assert "DigitsDataModule" in proc.stderr
    quiet = sandbox.train("data=digits", "debug=fast", "print_config=false", "logger=none")
    assert "DigitsDataModule" not in quiet.stderr


def test_logger_options_name_location_and_checkpoint_upload(sandbox):
    artifacts = sandbox.path / "elsewhere"
    proc = sandbox.train(
        "data=digits",
        "debug=fast",
        "logger.run_name=my-run",
        f"logger.artifact_location={artifacts}",
        "logger.log_checkpoint=false",
        "optimized_metric=val/loss",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = sandbox.runs()
    assert run.info.run_name == "my-run"
    assert run.info.artifact_uri.startswith(artifacts.as_uri())
    assert list(artifacts.rglob("metrics.json"))
    assert not sandbox.client().list_artifacts(run.info.run_id, "checkpoints")
    summary = json.loads(next(sandbox.logs.glob("train/runs/*/*/metrics.json")).read_text())
    assert summary["objective"] == {"name": "val/loss", "value": summary["metrics"]["val/loss"]}


def test_unknown_optimized_metric_fails_the_run_naming_the_logged_ones(sandbox):
    proc = sandbox.train("data=digits", "debug=fast", "optimized_metric=val/auc")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: optimized_metric=val/auc was never logged") and "val/acc" in line
    (run,) = sandbox.runs()
    assert run.info.status == "FAILED"
