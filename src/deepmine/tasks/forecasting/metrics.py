"""Forecast accuracy: MAE, RMSE, sMAPE and MASE over all windows x horizon x targets.

Every function takes `forecast` and `actual` of the same shape, `(windows, horizon, targets)`
in the series' own units, and returns a 0-dim float64 tensor; the mean runs over every element,
so each window, step and target weighs the same.

- sMAPE, in percent, is the M4 competition's definition, `200/n * sum |y - f| / (|y| + |f|)`.
  torchmetrics' `symmetric_mean_absolute_percentage_error` computes
  `2/n * sum |y - f| / max(|y| + |f|, eps)`: the same ratio as a fraction, so sMAPE is 100
  times it. Where both `y` and `f` are 0 (undefined in M4, which has no zeros) the term counts
  as 0, torchmetrics' choice.
- MASE (Hyndman & Koehler 2006) divides the absolute errors by `scale`, the in-sample mean
  absolute error of the one-step naive forecast (`y[t-1]` for `y[t]`) over the *training part*
  of each target column (`naive_scale`), so scores are comparable across series and a score
  below 1 beats the one-step naive forecast in-sample. The scale is one-step even for seasonal
  data (`lag=1`); `lag=m` gives the seasonal variant M4 used, when asked for explicitly.

torchmetrics has MAE, MSE and sMAPE but no MASE, so `MeanAbsoluteScaledError` below is the one
`Metric` defined here (tasks accumulate it over test batches, DDP-safe).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional import symmetric_mean_absolute_percentage_error


def _pair(forecast: torch.Tensor, actual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if forecast.shape != actual.shape:
        raise ValueError(f"forecast {tuple(forecast.shape)} and actual {tuple(actual.shape)}")
    return forecast.to(torch.float64), actual.to(torch.float64)


def mae(forecast: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    forecast, actual = _pair(forecast, actual)
    return (forecast - actual).abs().mean()


def rmse(forecast: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    forecast, actual = _pair(forecast, actual)
    return (forecast - actual).square().mean().sqrt()


def smape(forecast: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """sMAPE in percent (0..200), the M4 definition (see the module docstring)."""
    forecast, actual = _pair(forecast, actual)
    return 100.0 * symmetric_mean_absolute_percentage_error(forecast, actual)


def naive_scale(history: torch.Tensor, lag: int = 1) -> torch.Tensor:
    """MASE's scale per column of `history` (steps, targets), the training part: the mean of
    `|y[t] - y[t - lag]|`. A column that never changes has no scale: refused."""
    history = history.to(torch.float64)
    if history.ndim == 1:
        history = history[:, None]
    if len(history) <= lag:
        raise ValueError(f"MASE needs more than {lag} training steps, got {len(history)}")
    scale = (history[lag:] - history[:-lag]).abs().mean(0)
    if bool((scale == 0).any()):
        raise ValueError("a target is constant over the training part: MASE is undefined")
    return scale


def mase(forecast: torch.Tensor, actual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean absolute error scaled per target column (last dimension) by `scale`."""
    forecast, actual = _pair(forecast, actual)
    return ((forecast - actual).abs() / scale.to(torch.float64)).mean()


def forecast_scores(
    forecast: torch.Tensor, actual: torch.Tensor, scale: torch.Tensor
) -> dict[str, float]:
    """All four scores of one forecast, keyed as the task logs them (`mae`, `rmse`, ...)."""
    return {
        "mae": float(mae(forecast, actual)),
        "rmse": float(rmse(forecast, actual)),
        "smape": float(smape(forecast, actual)),
        "mase": float(mase(forecast, actual, scale)),
    }


class MeanAbsoluteScaledError(Metric):
    """MASE accumulated over batches of `(windows, horizon, targets)`; `scale` from
    `naive_scale` of the training part. torchmetrics has no MASE (1.9)."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, scale: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64).reshape(-1))
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, forecast: torch.Tensor, actual: torch.Tensor) -> None:
        forecast, actual = _pair(forecast, actual)
        self.total += ((forecast - actual).abs() / self.scale).sum()
        self.count += actual.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count
