"""Reference forecasts, made on exactly the windows the net is scored on.

Each baseline forecasts every window of a split of a `SeriesDataModule` (by default the test
windows: the same origins `datamodule.window_origins[split]`, the same horizon) and returns
`(windows, horizon, targets)` in the series' own units, like the batches' `y`. A forecast from
origin `t` only reads the targets' history before `t`.

- `naive`: the last observed value, `y[t-1]`, for every step of the horizon.
- `seasonal_naive`: the value one season (`data.season`) before each target step; past the
  first season of the horizon the last observed season repeats (step `t+k` takes
  `y[t - m + k mod m]`), so nothing after the origin is read.
- `arima`, `ets`: a statsmodels state-space model (ARIMA, or exponential smoothing in state
  space form) per target column. Its parameters are fitted ONCE, on the training part only;
  each window then runs the model's filter with those fixed parameters over the history up to
  its origin (`results.apply`, no refit) and forecasts `horizon` steps. Validation and test
  values thus enter only as observed history, as they would for a forecaster in production.

`baseline_forecasts(datamodule)` runs the baselines the data config lists (`data.baselines`,
name -> options); the options of each are documented on its function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from deepmine.errors import DeepmineError
from deepmine.tasks.forecasting.metrics import forecast_scores, naive_scale

#: optimizer iterations of the maximum-likelihood fits: statsmodels' default (50) stops short of
#: convergence for seasonal exponential smoothing, whose initial states are parameters too
MAXITER = 500


def naive(history: torch.Tensor, origins: torch.Tensor, horizon: int) -> torch.Tensor:
    """`history` (steps, targets): `history[t-1]` repeated over the horizon of each origin."""
    return history[origins - 1].unsqueeze(1).expand(-1, horizon, -1).clone()


def seasonal_naive(
    history: torch.Tensor, origins: torch.Tensor, horizon: int, season: int
) -> torch.Tensor:
    """Step `t+k` of the window with origin `t` takes `history[t - season + k % season]`."""
    if int(origins.min()) < season:
        raise DeepmineError(
            f"seasonal_naive needs a full season ({season} steps) before every origin, the "
            f"first origin is step {int(origins.min())}",
            "shorten data.season or hold out fewer steps",
        )
    steps = origins[:, None] - season + torch.arange(horizon)[None, :] % season
    return history[steps]


def _fit_and_roll(
    fit: Callable[[np.ndarray], object],
    train: np.ndarray,
    series: np.ndarray,
    origins: Sequence[int],
    horizon: int,
) -> np.ndarray:
    """Fit the model once on `train`, then forecast `horizon` steps from each origin with the
    fitted parameters applied to `series[:origin]` (filtering only, no refit)."""
    fitted = fit(train)
    out = np.empty((len(origins), horizon))
    for row, origin in enumerate(origins):
        out[row] = fitted.apply(series[:origin]).forecast(horizon)
    return out


def arima_fit(options: Mapping, season: int | None) -> Callable[[np.ndarray], object]:
    """Fits statsmodels' `ARIMA` with options `order` ([p, d, q]), `seasonal_order` ([P, D, Q] with
    `data.season` as the period, or [P, D, Q, s]; default none) and `trend` (statsmodels'
    'n' | 'c' | 't' | 'ct'; default: 'c' without differencing, else 'n')."""
    from statsmodels.tsa.arima.model import ARIMA

    _known_options(options, {"order", "seasonal_order", "trend"}, "arima")
    if "order" not in options:
        raise DeepmineError("the arima baseline has no order", "set its options: order: [p, d, q]")
    order = tuple(int(n) for n in options["order"])
    seasonal = tuple(int(n) for n in options.get("seasonal_order") or (0, 0, 0, 0))
    if len(seasonal) == 3:
        if season is None:
            raise DeepmineError(
                "arima seasonal_order [P, D, Q] takes its period from data.season, which is null",
                "set data.season, or give seasonal_order as [P, D, Q, period]",
            )
        seasonal = (*seasonal, season)
    trend = options.get("trend")

    def fit(endog: np.ndarray):
        model = ARIMA(endog, order=order, seasonal_order=seasonal, trend=trend)
        return model.fit(method_kwargs={"maxiter": MAXITER})

    return fit


def ets_fit(options: Mapping, season: int | None) -> Callable[[np.ndarray], object]:
    """Fits statsmodels' state-space `ExponentialSmoothing` (additive errors) with options `trend`
    (bool, default false), `damped_trend` (bool, default false) and `seasonal` (bool, default
    true when `data.season` is set: an additive season of that period)."""
    from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

    _known_options(options, {"trend", "damped_trend", "seasonal"}, "ets")
    seasonal = bool(options.get("seasonal", season is not None))
    if seasonal and season is None:
        raise DeepmineError("the ets baseline is seasonal but data.season is null", "set it")
    period = season if seasonal else None
    trend, damped = bool(options.get("trend", False)), bool(options.get("damped_trend", False))

    def fit(endog: np.ndarray):
        model = ExponentialSmoothing(endog, trend=trend, damped_trend=damped, seasonal=period)
        return model.fit(disp=False, maxiter=MAXITER)

    return fit


def _known_options(options: Mapping, known: set[str], name: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise DeepmineError(
            f"the {name} baseline has no option(s) {', '.join(unknown)}",
            f"use only {', '.join(sorted(known))}",
        )


def _classical(datamodule, origins: torch.Tensor, options: Mapping, kind: str) -> torch.Tensor:
    """The classical model per target column, univariately, fitted on the training part."""
    fit = (arima_fit if kind == "arima" else ets_fit)(options, datamodule.season)
    targets = datamodule.target_series.to(torch.float64).numpy()
    train_stop = datamodule.split_bounds["train"][1]
    columns = [
        _fit_and_roll(
            fit,
            targets[:train_stop, j],
            targets[:, j],
            origins.tolist(),
            datamodule.horizon,
        )
        for j in range(targets.shape[1])
    ]
    return torch.as_tensor(np.stack(columns, axis=-1), dtype=torch.float32)


def _naive(datamodule, origins: torch.Tensor, options: Mapping) -> torch.Tensor:
    _known_options(options, set(), "naive")
    return naive(datamodule.target_series, origins, datamodule.horizon)


def _seasonal_naive(datamodule, origins: torch.Tensor, options: Mapping) -> torch.Tensor:
    _known_options(options, set(), "seasonal_naive")
    if datamodule.season is None:
        raise DeepmineError(
            "the seasonal_naive baseline needs data.season, which is null",
            "set data.season (e.g. 12 for monthly data) or drop seasonal_naive",
        )
    return seasonal_naive(datamodule.target_series, origins, datamodule.horizon, datamodule.season)


BASELINES: dict[str, Callable[[object, torch.Tensor, Mapping], torch.Tensor]] = {
    "naive": _naive,
    "seasonal_naive": _seasonal_naive,
    "arima": lambda dm, origins, options: _classical(dm, origins, options, "arima"),
    "ets": lambda dm, origins, options: _classical(dm, origins, options, "ets"),
}


def baseline_forecasts(
    datamodule,
    names: Iterable[str] | None = None,
    options: Mapping[str, Mapping] | None = None,
    split: str = "test",
) -> dict[str, torch.Tensor]:
    """Each baseline's forecasts for the windows of `split`: name -> `(windows, horizon,
    targets)` float32. `names` and `options` default to the data config's `baselines`."""
    datamodule.setup()
    configured = getattr(datamodule, "baselines", {}) or {}
    options = configured if options is None else options
    names = list(options if names is None else names)
    origins = datamodule.window_origins[split]
    forecasts = {}
    for name in names:
        if name not in BASELINES:
            raise DeepmineError(f"unknown baseline {name!r}", f"use one of {', '.join(BASELINES)}")
        forecasts[name] = BASELINES[name](datamodule, origins, options.get(name) or {})
    return forecasts


def baseline_scores(datamodule, split: str = "test", **kwargs) -> dict[str, dict[str, float]]:
    """MAE, RMSE, sMAPE and MASE of each baseline on the windows of `split`."""
    forecasts = baseline_forecasts(datamodule, split=split, **kwargs)
    actual = datamodule.tensors[split][1]
    train_stop = datamodule.split_bounds["train"][1]
    scale = naive_scale(datamodule.target_series[:train_stop])
    return {name: forecast_scores(f, actual, scale) for name, f in forecasts.items()}
