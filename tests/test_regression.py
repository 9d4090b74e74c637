"""Regression end to end and the task family's monitor direction: real subprocess runs into a
real SQLite store, real Hydra multiruns, scikit-learn as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_configs import compose_cfg, compose_hydra
from test_train_records import artifact_paths
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from conftest import one_line_error
from deepmine.run.build import build, build_task

REG = ("task=regression", "data=diabetes", "net=mlp")


def metrics_json(box) -> dict:
    (path,) = box.logs.glob("train/runs/*/*/metrics.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    from conftest import one_recorded_run

    return one_recorded_run(
        tmp_path_factory,
        "regression",
        *REG,
        "trainer.max_epochs=6",
        "callbacks.early_stopping=null",
    )


def test_regression_run_records_metrics_best_and_plots(regression_run):
    box, proc, run = regression_run
    assert run.info.status == "FINISHED"
    for key in ("test/rmse", "test/mse", "test/mae", "test/r2", "val/rmse_best", "train/rmse"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test/mse"] == pytest.approx(run.data.metrics["test/rmse"] ** 2)
    assert run.data.params["task.monitor"] == "rmse" and run.data.params["task.mode"] == "min"
    assert "test/rmse" in proc.stdout and "test/acc" not in proc.stdout
    files = artifact_paths(box.client(), run.info.run_id)
    assert {"plots/predicted_vs_actual.png", "plots/residuals.png"} <= files
    assert "plots/confusion_matrix.png" not in files


def test_checkpoint_and_best_follow_the_lowest_rmse(regression_run):
    """The tested checkpoint is the epoch of the lowest val/rmse, and val/rmse_best is that
    minimum: a `max` anywhere would pick the worst epoch."""
    box, _, run = regression_run
    history = [m.value for m in box.client().get_metric_history(run.info.run_id, "val/rmse")]
    assert len(history) == 6 and len(set(history)) > 1
    summary = metrics_json(box)
    assert summary["objective"] == {"name": "val/rmse_best", "value": pytest.approx(min(history))}
    best_epoch = int(Path(summary["best_checkpoint"]).stem.removeprefix("epoch"))
    assert best_epoch == int(np.argmin(history))


def test_linear_net_reproduces_least_squares_on_the_plot_ols_split(sandbox):
    """scikit-learn's plot_ols: OLS on bmi, last 20 rows tested. A linear net trained by
    deepmine lands within 1% of `LinearRegression` on the same split."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    proc = sandbox.train("experiment=diabetes_ols_bmi", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = metrics_json(sandbox)["metrics"]
    x, y = load_diabetes(return_X_y=True)
    x = x[:, [2]]
    predicted = LinearRegression().fit(x[:-20], y[:-20]).predict(x[-20:])
    mse, r2 = mean_squared_error(y[-20:], predicted), r2_score(y[-20:], predicted)
    assert mse == pytest.approx(2548.07, abs=0.01)  # the number the example prints
    assert tested["test/mse"] == pytest.approx(mse, rel=0.01)
    assert tested["test/r2"] == pytest.approx(r2, abs=0.01)


def test_regression_sweep_picks_the_lowest_rmse_as_best(sandbox):
    from conftest import run_cli

    proc = run_cli(
        "train",
        "-m",
        *sandbox.overrides(*REG, "debug=fast", "optimizer.lr=1e-5,3e-2"),
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (best_file,) = sandbox.logs.glob("train/multiruns/*/*/summary/best.json")
    best = json.loads(best_file.read_text())
    assert best["objective"] == "val/rmse_best" and best["direction"] == "minimize"
    children = [r for r in sandbox.runs() if "mlflow.parentRunId" in r.data.tags]
    scores = {r.info.run_id: r.data.metrics["val/rmse_best"] for r in children}
    assert len(scores) == 2 and len(set(scores.values())) == 2
    assert best["best"]["run_id"] == min(scores, key=scores.get)


def test_monitor_and_direction_flow_from_the_task_config(tmp_path):
    cfg = compose_hydra(tmp_path, *REG, "task.monitor=mae")
    for name in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[name].monitor == "val/mae" and cfg.callbacks[name].mode == "min"
    assert cfg.optimized_metric == "val/mae_best"
    assert cfg.hydra.sweeper.direction == "minimize"
    optuna = compose_hydra(tmp_path, *REG, "hydra/sweeper=optuna")
    assert optuna.hydra.sweeper.direction == "minimize"
    assert optuna.hydra.sweeper.pruning_metric == "val/rmse"
    r2 = compose_hydra(tmp_path, *REG, "task.monitor=r2", "task.mode=max")
    assert r2.hydra.sweeper.direction == "maximize" and r2.callbacks.early_stopping.mode == "max"
    classification = compose_hydra(tmp_path)
    assert classification.callbacks.model_checkpoint.monitor == "val/acc"
    assert classification.hydra.sweeper.direction == "maximize"


@pytest.mark.parametrize(
    ("loss", "kind"), [("mse", "MSELoss"), ("l1", "L1Loss"), ("huber", "HuberLoss")]
)
def test_loss_options(tmp_path, loss, kind):
    task = build_task(compose_cfg(tmp_path, *REG, f"task.loss={loss}", "task.huber_delta=0.5"))
    assert type(task.loss_fn).__name__ == kind
    if loss == "huber":
        assert task.loss_fn.delta == 0.5


@pytest.mark.parametrize(
    ("override", "words"),
    [("task.loss=hinge", "task.loss=hinge"), ("task.monitor=acc", "task.monitor=acc"),
     ("task.mode=up", "task.mode=up")],
)  # fmt: skip
def test_bad_task_options_are_one_clear_error(tmp_path, override, words):
    from deepmine.errors import DeepmineError

    with pytest.raises(DeepmineError, match=words):
        build_task(compose_cfg(tmp_path, *REG, override))


def test_train_scores_from_sums_equal_torchmetrics(tmp_path):
    """The on-device sums give the scores torchmetrics computes from all predictions."""
    parts = build(compose_cfg(tmp_path, *REG))
    task, dm = parts.task, parts.datamodule
    dm.setup()
    mean, std = dm.target_scaler
    task.target_mean.copy_(mean)
    task.target_std.copy_(std)
    reference = [MeanAbsoluteError(), MeanSquaredError(), R2Score()]
    task.on_train_epoch_start()
    torch.manual_seed(0)
    for x, y in dm.train_dataloader():
        outputs = task(x).detach()
        task.update_train_state(outputs, y)
        task.train_samples.add_(len(y))
        for metric in reference:
            metric.update(task.in_units(outputs).squeeze(1), y.squeeze(1))
    state = {**task._train_state(), "samples": task.train_samples}
    scores = task.train_scores(state)
    mae, mse, r2 = (float(m.compute()) for m in reference)
    assert float(scores["mae"]) == pytest.approx(mae, rel=1e-5)
    assert float(scores["mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(scores["rmse"]) == pytest.approx(mse**0.5, rel=1e-5)
    assert float(scores["r2"]) == pytest.approx(r2, abs=1e-4)


def test_targets_are_learned_standardized_and_reported_in_units(tmp_path):
    parts = build(compose_cfg(tmp_path, *REG))
    task, dm = parts.task, parts.datamodule
    dm.setup()
    mean, std = dm.target_scaler
    y_train = dm.tensors["train"][1]
    assert float(mean) == pytest.approx(float(y_train.mean()), rel=1e-5)  # train rows only
    task.target_mean.copy_(mean)
    task.target_std.copy_(std)
    outputs = torch.zeros(4, 1)  # the net predicting the standardized mean
    assert torch.allclose(task.in_units(outputs), mean.expand(4, 1))
    y = y_train[:4]
    loss = task.compute_loss(outputs, y)
    assert float(loss) == pytest.approx(float(((y - mean) / std).square().mean()), rel=1e-5)


def test_task_and_data_that_do_not_fit_are_refused_before_any_run(sandbox):
    proc = sandbox.train("task=regression", "data=digits", "debug=fast")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "value targets" in line and "class targets" in line and "Fix:" in line
    assert sandbox.runs() == []
