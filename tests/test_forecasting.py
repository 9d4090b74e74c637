"""task=forecasting end to end: a real subprocess run on a DVC-pinned series, its baselines in
the same run on the same windows, and the level=last forecast reduced to its definition."""

from __future__ import annotations

import json

import pytest
import torch
from test_configs import compose_cfg, compose_hydra
from test_train_records import artifact_paths

from deepmine.run.build import build
from deepmine.tasks.forecasting.baselines import baseline_forecasts, baseline_scores

SUNSPOTS = ("task=forecasting", "data=sunspots")


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    from conftest import one_recorded_run

    return one_recorded_run(
        tmp_path_factory, "forecast", *SUNSPOTS, "net=transformer", "debug=fast"
    )


def test_forecasting_run_records_scores_baselines_verdicts_and_plot(forecast_run):
    box, proc, run = forecast_run
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in ("test/mase", "test/rmse", "test/mae", "test/smape", "val/mase_best"):
        assert key in metrics, key
    for name in ("naive", "seasonal_naive", "arima"):
        for score in ("mae", "rmse", "smape", "mase"):
            assert f"baseline/{name}/{score}" in metrics, (name, score)
        beats = metrics[f"beats/{name}"]
        baseline = metrics[f"baseline/{name}/mase"]
        assert beats == float(metrics["test/mase"] < baseline)
        skill = (baseline - metrics["test/mase"]) / baseline
        assert metrics[f"skill/{name}"] == pytest.approx(skill, rel=1e-5)
        verdict = "beats" if beats else "does not beat"
        assert f"net {verdict} {name} on test/mase" in proc.stdout
    skills = [metrics[f"skill/{name}"] for name in ("naive", "seasonal_naive", "arima")]
    assert metrics["skill/best_baseline"] == pytest.approx(min(skills))
    assert "plots/forecast.png" in artifact_paths(box.client(), run.info.run_id)
    summary = json.loads(next(box.logs.glob("train/runs/*/*/metrics.json")).read_text())
    assert summary["objective"]["name"] == "val/mase_best"


def test_logged_baselines_are_the_baselines_of_the_same_test_windows(forecast_run, tmp_path):
    """Recomputed here from the pinned series: the run scored exactly these windows."""
    _, _, run = forecast_run
    datamodule = build(compose_cfg(tmp_path, *SUNSPOTS, "net=mlp")).datamodule
    for name, scores in baseline_scores(datamodule).items():
        for metric, value in scores.items():
            assert run.data.metrics[f"baseline/{name}/{metric}"] == pytest.approx(value, rel=1e-5)


def test_a_net_predicting_no_change_is_the_naive_forecast(tmp_path):
    """level=last: outputs of zero mean "no change from the last observed value", which is the
    naive baseline exactly; level=none: zero means the training mean."""
    parts = build(compose_cfg(tmp_path, *SUNSPOTS, "net=mlp"))
    task, dm = parts.task, parts.datamodule
    dm.setup()
    task.target_mean.copy_(dm.target_scaler[0])
    task.target_std.copy_(dm.target_scaler[1])
    task._read_levels(dm)
    for parameter in task.net.parameters():
        torch.nn.init.zeros_(parameter)
    x, _ = dm.normalized("test")
    predicted = task.in_units(task(x))
    naive = baseline_forecasts(dm, names=["naive"])["naive"]
    assert torch.allclose(predicted, naive, atol=1e-3)
    task.level = "none"
    flat = task.in_units(task(x))
    assert torch.allclose(flat, dm.target_scaler[0].expand_as(flat), atol=1e-4)


def test_forecasting_monitor_flows_to_checkpoint_and_sweeps(tmp_path):
    cfg = compose_hydra(tmp_path, *SUNSPOTS, "task.monitor=smape")
    assert cfg.callbacks.model_checkpoint.monitor == "val/smape"
    assert cfg.callbacks.model_checkpoint.mode == "min"
    assert cfg.optimized_metric == "val/smape_best"
    assert cfg.hydra.sweeper.direction == "minimize"


@pytest.mark.parametrize("net", ["mlp", "lstm", "gru", "transformer"])
def test_every_net_forecasts_windows(tmp_path, net):
    cfg = compose_cfg(tmp_path, "task=forecasting", "data=co2", f"net={net}", "task.level=none")
    parts = build(cfg)
    x, y = next(iter(parts.datamodule.train_dataloader()))
    assert parts.task.to_targets(parts.task(x)).shape == y.shape == (len(x), 12, 1)


def test_bad_level_is_one_clear_error(tmp_path):
    from deepmine.errors import DeepmineError

    with pytest.raises(DeepmineError, match=r"task\.level=up"):
        build(compose_cfg(tmp_path, *SUNSPOTS, "net=mlp", "task.level=up"))


def test_the_resolved_config_carries_the_shapes_the_data_filled(tmp_path):
    """What DDP ranks and the run's params receive: the shapes filled from the data, not the
    nulls of the data config (a rank would build a net of no width)."""
    from omegaconf import OmegaConf

    from deepmine.run.build import build_datamodule

    cfg = compose_cfg(tmp_path, *SUNSPOTS, "net=mlp", "data.horizon=5")
    assert cfg.data.num_outputs is None
    build_datamodule(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["num_outputs"] == resolved["net"]["num_outputs"] == 5
    assert resolved["task"]["horizon"] == 5
