"""What a run records in MLflow's own terms, so the UI compares runs well: datasets with their
data version, the model (loadable, registered), the group and summary tags, a description, no
machine paths in the params, links to the training view, and a store without a stray
`Default` experiment. One real run, shared by every test here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, Sandbox, deepmine_env

MODEL_NAME = "digits_mlp_test"


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """`(sandbox, process, run)` of one `deepmine train debug=fast data=digits` that registers
    its model. A fresh interpreter with Python's warnings shown, so a warning Lightning prints
    (a non-empty checkpoint folder) reaches stderr."""
    box = Sandbox(tmp_path_factory.mktemp("native"))
    env = deepmine_env()
    env["PYTHONWARNINGS"] = "default"
    overrides = ["debug=fast", "data=digits", "optimizer.lr=0.003", f"+register={MODEL_NAME}"]
    proc = subprocess.run(
        [sys.executable, "-m", "deepmine", "train", *box.overrides(*overrides)],
        cwd=box.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = box.runs()
    return box, proc, run


@pytest.fixture
def tracking_uri(native):
    """MLflow's global tracking URI pointed at the sandbox's store for `runs:/` URIs, then
    put back."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(native[0].uri)
    yield native[0].uri
    mlflow.set_tracking_uri(before)


def test_datasets_one_per_split_with_the_data_version(native):
    _, _, run = native
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "training", "validation"]
    assert all(i.tags[0].key == "mlflow.data.context" for i in run.inputs.dataset_inputs)
    versions = {d.digest.split("-")[0] for d in inputs.values()}
    assert len(versions) == 1, "one data version for the three splits"
    assert len({d.digest for d in inputs.values()}) == 3, "each split its own dataset"
    profiles = {c: json.loads(d.profile) for c, d in inputs.items()}
    assert sum(p["num_rows"] for p in profiles.values()) == 1797  # all of scikit-learn's digits
    assert profiles["training"]["features_shape"][1:] == [1, 8, 8]
    (version,) = {p["data_version"] for p in profiles.values()}
    assert version.startswith(versions.pop())
    for dataset in inputs.values():
        assert dataset.name == "digits"
        schema = json.loads(dataset.schema)["mlflow_tensorspec"]
        assert json.loads(schema["features"])[0]["tensor-spec"]["shape"] == [-1, 1, 8, 8]
        assert "DigitsDataModule" in dataset.source


def test_model_loads_and_predicts_as_the_checkpoint(native, tracking_uri, tmp_path):
    """The logged model is the pipeline: raw digits (pixels 0..16, as scikit-learn gives them)
    in, class names and probabilities out, equal to the checkpoint's softmax on the test
    split as training normalized it."""
    import mlflow.pyfunc
    from omegaconf import OmegaConf

    from deepmine.run.build import build_datamodule, build_task
    from deepmine.runtime.checkpoints import load_weights
    from deepmine.tracking.fetch import recorded_config_and_checkpoint
    from deepmine.tracking.store import connect

    _, _, run = native
    uri = f"runs:/{run.info.run_id}/model"
    config, checkpoint = recorded_config_and_checkpoint(
        connect(tracking_uri), run.info.run_id, tmp_path
    )
    cfg = OmegaConf.load(config)
    task = build_task(cfg)
    load_weights(task, checkpoint)
    task.eval()
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    raw = datamodule.tensors["test"][0][:64].numpy()
    x = datamodule.normalized("test")[0][:64]

    served = mlflow.pyfunc.load_model(uri)  # what `mlflow models serve` loads
    assert set(served.metadata.flavors) == {"python_function"}
    assert served.metadata.metadata["deepmine"]["input"] == "image"
    predicted = served.predict(raw)
    with torch.no_grad():
        expected = torch.softmax(task(x), dim=1).numpy()
    names = [str(d) for d in range(10)]
    assert list(predicted.predicted) == [names[k] for k in expected.argmax(1)]
    probabilities = predicted[[f"probability_{n}" for n in names]].to_numpy()
    assert abs(probabilities - expected).max() < 1e-6


def test_model_registered_under_the_name(native):
    box, proc, run = native
    (version,) = box.client().search_model_versions(f"name='{MODEL_NAME}'")
    assert version.run_id == run.info.run_id and str(version.version) == "1"
    (output,) = run.outputs.model_outputs
    logged = box.client().get_logged_model(output.model_id)
    assert version.source == logged.artifact_location
    # the UI's logged-models table links the registry through this tag
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": MODEL_NAME, "version": 1}]
    assert run.data.tags["deepmine.model.registered"] == f"{MODEL_NAME}/1"
    assert f"runs:/{run.info.run_id}/model (registered as '{MODEL_NAME}' version 1)" in proc.stdout
    # +register is logger.register: a record of how the run was kept, not of its config
    assert run.data.params["logger.register"] == MODEL_NAME and "register" not in run.data.params


def test_group_summary_and_description_tags(native):
    from deepmine.compare.groups import GROUP_TAG, group_key

    _, _, run = native
    tags = run.data.tags
    assert tags[GROUP_TAG] == group_key(run.data.params)
    assert tags["deepmine.summary"] == "seed_mlp adam lr=0.003 digits seed=42"
    note = tags["mlflow.note.content"]
    best, test = run.data.metrics["val/acc_best"], run.data.metrics["test/acc"]
    assert (
        note
        == f"seed_mlp adam lr=0.003 digits seed=42 → val/acc_best {best:.4g}, test/acc {test:.4g}"
    )
    assert run.info.run_name == "seed_mlp-digits debug=fast lr=0.003"


def test_no_machine_path_in_any_param(native):
    box, _, run = native
    params = run.data.params
    for value in params.values():
        assert str(box.path) not in value and str(ROOT) not in value, value
    assert params["paths.data_dir"] == "data" and params["paths.cache_dir"] == ".cache"
    for key in ("paths.root_dir", "paths.output_dir", "trainer.default_root_dir"):
        assert key not in params
    assert run.data.tags["deepmine.output_dir"].startswith(str(box.logs))
    assert run.data.tags["deepmine.root_dir"] == str(ROOT)


def test_experiment_link_opens_the_training_view(native):
    _, proc, run = native
    link = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning"
    assert link in proc.stdout


def test_no_checkpoint_folder_warning_and_run_id_beside_it(native):
    box, proc, run = native
    assert "exists and is not empty" not in proc.stderr
    (record,) = box.logs.glob("train/runs/*/*/mlflow_run.json")
    assert json.loads(record.read_text())["run_id"] == run.info.run_id
    assert list(box.cwd.iterdir()) == [], "nothing written to the working directory"


def test_one_default_experiment(native):
    from mlflow.entities import ViewType

    box, _, _ = native
    client = box.client()
    active = [e.name for e in client.search_experiments()]
    assert active == ["default"]
    deleted = client.search_experiments(view_type=ViewType.DELETED_ONLY)
    assert [(e.experiment_id, e.name) for e in deleted] == [("0", "Default")]


def test_seeds_share_a_group(native):
    """Another seed and other recording options: another run, the same group."""
    from deepmine.compare.groups import GROUP_TAG

    box, _, first = native
    proc = box.train(
        "debug=fast", "data=digits", "optimizer.lr=0.003", "seed=7", "logger.log_model=false"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = next(r for r in box.runs() if r.info.run_id != first.info.run_id)
    assert second.data.params["seed"] == "7"
    assert second.data.tags[GROUP_TAG] == first.data.tags[GROUP_TAG]
    assert second.info.run_name == "seed_mlp-digits debug=fast lr=0.003 seed=7"
    assert not second.outputs or not second.outputs.model_outputs


def test_register_without_a_model_is_refused_before_any_run(native):
    box, _, _ = native
    before = len(box.runs())
    proc = box.train("debug=fast", "data=digits", "logger.log_model=false", "+register=other")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: register=other registers the run's model") and "Fix:" in line
    assert len(box.runs()) == before


def test_dataset_source_names_the_dvc_remote_without_its_password(tmp_path):
    from deepmine.tracking.datasets import dvc_remote_url

    (tmp_path / ".dvc").mkdir()
    assert dvc_remote_url(tmp_path) is None
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = team\n['remote \"other\"']\n    url = s3://elsewhere/dvc\n"
        "['remote \"team\"']\n    url = https://me:hunter22@dvc.example.org/store\n"
    )
    assert dvc_remote_url(tmp_path) == "https://me:***@dvc.example.org/store"
