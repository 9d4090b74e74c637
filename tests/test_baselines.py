"""Baselines forecast exactly the net's test windows from the past only; metrics follow their
published definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ROOT
from deepmine.data.series import CSVSeriesDataModule, SeriesDataModule
from deepmine.errors import DeepmineError
from deepmine.tasks.forecasting.baselines import (
    baseline_forecasts,
    baseline_scores,
    naive,
    seasonal_naive,
)
from deepmine.tasks.forecasting.metrics import (
    MeanAbsoluteScaledError,
    mae,
    mase,
    naive_scale,
    rmse,
    smape,
)

SERIES_DIR = ROOT / "data" / "series"


@pytest.fixture(scope="module")
def sunspots() -> SeriesDataModule:
    dm = SeriesDataModule(
        "sunspots",
        str(SERIES_DIR),
        lookback=22,
        horizon=4,
        val_size=40,
        test_size=40,
        season=11,
        baselines={"naive": {}, "seasonal_naive": {}, "arima": {"order": [2, 0, 0]}},
    )
    dm.setup()
    return dm


def seasonal_csv(tmp_path, n: int = 96) -> CSVSeriesDataModule:
    """Two columns with a season of 12 (the second its negative, shifted) and a trend."""
    steps = np.arange(n)
    rng = np.random.default_rng(0)
    a = 10 + 0.05 * steps + 3 * np.sin(2 * np.pi * steps / 12) + rng.normal(0, 0.3, n)
    b = 50 - 2 * np.cos(2 * np.pi * steps / 12) + rng.normal(0, 0.3, n)
    lines = ["date,a,b"] + [f"{i},{a[i]:.4f},{b[i]:.4f}" for i in range(n)]
    path = tmp_path / "seasonal.csv"
    path.write_text("\n".join(lines) + "\n")
    dm = CSVSeriesDataModule(
        str(path),
        "date",
        ["a", "b"],
        lookback=12,
        horizon=5,
        val_size=12,
        test_size=16,
        season=12,
    )
    dm.setup()
    return dm


# -- hand-computed naive forecasts ------------------------------------------------------------


def test_naive_and_seasonal_naive_by_hand():
    history = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8])[:, None]
    origins = torch.tensor([4, 5])
    assert naive(history, origins, 3)[..., 0].tolist() == [[4, 4, 4], [5, 5, 5]]
    # season 2, horizon 5: y[t-2], y[t-1], then the last season repeats
    assert seasonal_naive(history, origins, 5, 2)[..., 0].tolist() == [
        [3, 4, 3, 4, 3],
        [4, 5, 4, 5, 4],
    ]
    # season 3, horizon 2: only the first two values of the last season
    assert seasonal_naive(history, origins, 2, 3)[..., 0].tolist() == [[2, 3], [3, 4]]
    with pytest.raises(DeepmineError, match="full season"):
        seasonal_naive(history, origins, 2, 5)


def test_baselines_cover_exactly_the_test_windows(sunspots):
    forecasts = baseline_forecasts(sunspots)
    actual = sunspots.tensors["test"][1]
    assert set(forecasts) == {"naive", "seasonal_naive", "arima"}
    for name, forecast in forecasts.items():
        assert forecast.shape == actual.shape == (37, 4, 1), name
        assert forecast.dtype == torch.float32 and bool(torch.isfinite(forecast).all())
    origins = sunspots.window_origins["test"]
    series = sunspots.series[:, 0]
    assert torch.equal(forecasts["naive"][:, 0, 0], series[origins - 1])
    assert torch.equal(forecasts["seasonal_naive"][:, 3, 0], series[origins + 3 - 11])


def test_forecasts_read_nothing_at_or_after_the_origin(tmp_path):
    """Overwrite every step from one window's origin on: that window's forecasts stay."""
    options = {"naive": {}, "seasonal_naive": {}, "arima": {"order": [1, 0, 0]}}
    dm = seasonal_csv(tmp_path)
    before = baseline_forecasts(dm, options=options)
    k = 3
    origin = int(dm.window_origins["test"][k])
    dm.target_series[origin:] = 1e4
    after = baseline_forecasts(dm, options=options)
    for name in options:
        assert torch.equal(before[name][k], after[name][k]), name
        # the last window's history does reach into the overwritten steps
        assert not torch.equal(before[name][-1], after[name][-1]), name


def test_multivariate_targets_are_forecast_per_column(tmp_path):
    dm = seasonal_csv(tmp_path)
    forecasts = baseline_forecasts(dm, ["naive", "ets"], {"ets": {"trend": True}})
    for forecast in forecasts.values():
        assert forecast.shape == dm.tensors["test"][1].shape == (12, 5, 2)
    origins = dm.window_origins["test"]
    assert torch.equal(forecasts["naive"][:, 0, :], dm.target_series[origins - 1])
    # a seasonal model beats repeating the last value on seasonal data
    actual = dm.tensors["test"][1]
    assert float(mae(forecasts["ets"], actual)) < float(mae(forecasts["naive"], actual))


# -- the classical model ----------------------------------------------------------------------


def test_arima_forecast_equals_statsmodels_from_the_same_origin(sunspots):
    from statsmodels.tsa.arima.model import ARIMA

    forecast = baseline_forecasts(sunspots, ["arima"])["arima"]
    values = sunspots.series[:, 0].double().numpy()
    train_stop = sunspots.split_bounds["train"][1]
    params = ARIMA(values[:train_stop], order=(2, 0, 0)).fit().params  # train only
    for k in (0, 20):
        origin = int(sunspots.window_origins["test"][k])
        expected = ARIMA(values[:origin], order=(2, 0, 0)).filter(params).forecast(4)
        np.testing.assert_allclose(forecast[k, :, 0].numpy(), expected, rtol=1e-4)


def test_baseline_options_and_names_are_checked(sunspots, tmp_path):
    with pytest.raises(DeepmineError, match="unknown baseline 'prophet'"):
        baseline_forecasts(sunspots, ["prophet"])
    with pytest.raises(DeepmineError, match="no order"):
        baseline_forecasts(sunspots, ["arima"], {"arima": {}})
    with pytest.raises(DeepmineError, match="no option"):
        baseline_forecasts(sunspots, ["arima"], {"arima": {"order": [1, 0, 0], "lags": 3}})
    flat = SeriesDataModule("sunspots", str(SERIES_DIR), 22, 4, 40, 40, season=None)
    with pytest.raises(DeepmineError, match=r"data\.season"):
        baseline_forecasts(flat, ["seasonal_naive"], {})


# -- metrics ----------------------------------------------------------------------------------


def test_mase_of_the_in_sample_naive_forecast_is_one(sunspots):
    train = sunspots.target_series[: sunspots.split_bounds["train"][1]]
    scale = naive_scale(train)
    one_step = train[:-1].unsqueeze(1)  # (windows, horizon 1, targets): y[t-1] for y[t]
    assert float(mase(one_step, train[1:].unsqueeze(1), scale)) == pytest.approx(1.0, abs=1e-12)
    assert float(scale[0]) == pytest.approx(
        float(np.mean(np.abs(np.diff(train[:, 0].double().numpy()))))
    )


def test_metrics_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    actual = torch.randn(6, 4, 2, generator=gen) * 5
    forecast = actual + torch.randn(6, 4, 2, generator=gen)
    a, f = actual.double().numpy(), forecast.double().numpy()
    assert float(mae(forecast, actual)) == pytest.approx(np.mean(np.abs(a - f)))
    assert float(rmse(forecast, actual)) == pytest.approx(np.sqrt(np.mean((a - f) ** 2)))
    m4 = 200 / a.size * np.sum(np.abs(a - f) / (np.abs(a) + np.abs(f)))
    assert float(smape(forecast, actual)) == pytest.approx(m4, rel=1e-6)
    scale = torch.tensor([2.0, 0.5])
    assert float(mase(forecast, actual, scale)) == pytest.approx(
        np.mean(np.abs(a - f) / np.array([2.0, 0.5]))
    )
    metric = MeanAbsoluteScaledError(scale)
    metric.update(forecast[:4], actual[:4])
    metric.update(forecast[4:], actual[4:])
    assert float(metric.compute()) == pytest.approx(float(mase(forecast, actual, scale)))
    with pytest.raises(ValueError, match="constant"):
        naive_scale(torch.ones(10, 1))


def test_baseline_scores_on_sunspots(sunspots):
    scores = baseline_scores(sunspots, names=["naive", "seasonal_naive"])
    for name, values in scores.items():
        assert set(values) == {"mae", "rmse", "smape", "mase"}
        assert 0 < values["mae"] <= values["rmse"], name
    # the ~11-year cycle makes last cycle's value a better guess than last year's
    assert scores["seasonal_naive"]["mase"] < scores["naive"]["mase"]
