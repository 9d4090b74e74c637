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


def test_forecasting_run_records_where_the_split_fell(forecast_run, tmp_path):
    """The first and last time of each part, computed here from the pinned file and the
    config's sizes (the last test_size steps are test, the val_size before them val)."""
    import pandas as pd

    from conftest import ROOT

    _, _, run = forecast_run
    data = compose_cfg(tmp_path, *SUNSPOTS, "net=transformer", "debug=fast").data
    n_val, n_test = data.val_size, data.test_size
    assert isinstance(n_val, int) and isinstance(n_test, int)  # step counts, not fractions
    dates = pd.read_csv(ROOT / "data" / "series" / "sunspots.csv")["date"].tolist()
    n = len(dates)
    parts = {
        "train": dates[: n - n_val - n_test],
        "val": dates[n - n_val - n_test : n - n_test],
        "test": dates[n - n_test :],
    }
    tags = run.data.tags
    for part, steps in parts.items():
        assert tags[f"deepmine.split.{part}.first"] == steps[0], part
        assert tags[f"deepmine.split.{part}.last"] == steps[-1], part
        assert tags[f"deepmine.split.{part}.steps"] == str(len(steps)), part
    assert tags["deepmine.split.test.last"] == "2008-01-01"  # the series' last year


def test_a_run_prints_no_lightning_advertisement(forecast_run):
    """Lightning 2.6 advertises its LitLogger on every Trainer; deepmine drops that line."""
    _, proc, _ = forecast_run
    assert "Restoring states from the checkpoint" in proc.stderr  # Lightning's INFO lines stay
    assert "litlogger" not in (proc.stdout + proc.stderr).lower()


def test_the_advertisement_filter_drops_that_line_only():
    import logging

    from deepmine.runtime.quiet import RANK_ZERO_LOGGERS, silence_lightning_tips

    silence_lightning_tips()
    silence_lightning_tips()  # idempotent: one filter, however many Trainers a sweep builds
    logger = logging.getLogger(RANK_ZERO_LOGGERS[0])
    assert len(logger.filters) == 1
    tip = "💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/...)"
    make = logger.makeRecord
    assert not logger.filter(make(logger.name, logging.INFO, __file__, 1, tip, (), None))
    other = "GPU available: False, used: False"
    assert logger.filter(make(logger.name, logging.INFO, __file__, 1, other, (), None))


def test_the_forecast_figure_shades_the_val_and_test_parts():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from deepmine.tasks.forecasting.plots import _mark_split

    times = np.arange(2000, 2100)
    bounds = {"train": (0, 60), "val": (60, 80), "test": (80, 100)}
    fig, ax = plt.subplots()
    _mark_split(ax, times, bounds, shown=30)
    starts = sorted(float(line.get_xdata()[0]) for line in ax.lines)
    assert starts == [2060.0, 2080.0]  # dashed at the start of val and of test
    assert [t.get_text() for t in ax.texts] == ["val", "test"]
    assert len(ax.patches) == 2
    plt.close(fig)
    fig, ax = plt.subplots()
    _mark_split(ax, times, bounds, shown=70)  # val starts before the plotted range
    assert [float(line.get_xdata()[0]) for line in ax.lines] == [2080.0]
    plt.close(fig)


def test_a_semicolon_series_csv_is_read_with_sep_auto(tmp_path):
    """data=series_csv reads its file as data=csv does (`deepmine.data.csv_sep`)."""
    import pandas as pd

    from deepmine.data.series import CSVSeriesDataModule

    frame = pd.DataFrame(
        {"date": pd.date_range("2000-01-01", periods=40, freq="MS"), "load": range(40)}
    )
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "semi.csv", sep=";", index=False)
    options = dict(lookback=3, horizon=2, val_size=5, test_size=5)
    comma = CSVSeriesDataModule(str(tmp_path / "comma.csv"), "date", ["load"], **options)
    semi = CSVSeriesDataModule(str(tmp_path / "semi.csv"), "date", ["load"], **options)
    comma.setup(), semi.setup()
    assert torch.equal(comma.series, semi.series)
    assert semi.read_tags() == {"deepmine.data.csv.sep": ";"}
    from deepmine.tasks.forecasting.split_tags import split_tags

    tags = split_tags(semi.time_index, semi.split_bounds)
    # 40 months from January 2000: val is steps 30..34 (the val_size=5 before the last 5)
    assert (tags["deepmine.split.val.first"], tags["deepmine.split.val.last"]) == (
        "2002-07-01",
        "2002-11-01",
    )
    assert tags["deepmine.split.test.last"] == "2003-04-01"
