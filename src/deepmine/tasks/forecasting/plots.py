"""Forecasting's figure: the test series with the net's and the baselines' forecasts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmine.figures import plt, save, target_names


def forecast_png(
    time_index,
    series,
    origins,
    forecasts: dict,
    path: Path,
    title: str,
    names=None,
    train_stop: int | None = None,
) -> Path:
    """The actual series over the test period (with some history before it) and each model's
    forecasts of it: one row for the 1-step-ahead forecasts, one for the last step of the
    horizon, so a forecaster that only copies the last value shows its lag. One column per
    target. `forecasts`: name -> (windows, horizon, targets), windows starting at `origins`."""
    series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
    origins = np.asarray(origins, dtype=np.int64)
    first = next(iter(forecasts.values()))
    horizon, count = first.shape[1], series.shape[1]
    steps = sorted({1, horizon})
    times = np.asarray(time_index) if len(time_index) == len(series) else np.arange(len(series))
    start = max(0, int(origins[0]) - 2 * (int(origins[-1]) - int(origins[0]) + horizon))
    fig, axes = plt.subplots(
        len(steps), count, figsize=(9 * count, 3.4 * len(steps)), squeeze=False, sharex=True
    )
    for column, name in enumerate(target_names(names, count)):
        for row, step in enumerate(steps):
            ax = axes[row][column]
            ax.plot(times[start:], series[start:, column], color="black", linewidth=1.2,
                    label="actual")  # fmt: skip
            at = times[origins + step - 1]
            for i, (model, predicted) in enumerate(forecasts.items()):
                values = np.asarray(predicted, dtype=np.float64)[:, step - 1, column]
                ax.plot(at, values, color=f"C{i}", linewidth=2.0 if model == "net" else 1.0,
                        alpha=1.0 if model == "net" else 0.75, label=model)  # fmt: skip
            ax.axvline(times[int(origins[0])], color="grey", linestyle=":", linewidth=1)
            if train_stop is not None and start < train_stop < len(times):
                ax.axvline(times[train_stop], color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylabel(name)
            ax.set_title(f"{step} step{'s' if step > 1 else ''} ahead", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=min(6, len(forecasts) + 1))
    fig.suptitle(f"{title} (dotted: first test origin; dashed: end of training part)")
    return save(fig, path)
