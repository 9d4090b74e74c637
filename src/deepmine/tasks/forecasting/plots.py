"""Forecasting's figure: the test series with the net's and the baselines' forecasts, and where
the chronological split fell (the run's `deepmine.split.*` tags say the same in times)."""

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
    bounds: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """The actual series over the test period (with some history before it) and each model's
    forecasts of it: one row for the 1-step-ahead forecasts, one for the last step of the
    horizon, so a forecaster that only copies the last value shows its lag. One column per
    target. `forecasts`: name -> (windows, horizon, targets), windows starting at `origins`.
    `bounds`: split -> (start, stop) steps; the val and test parts are shaded, each start marked
    by a dashed line, so the figure shows which part of the series each forecast came from."""
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
            _mark_split(ax, times, bounds or {}, start)
            ax.set_ylabel(name)
            ax.set_title(f"{step} step{'s' if step > 1 else ''} ahead", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=min(6, len(forecasts) + 1))
    fig.suptitle(f"{title} (shaded: val and test parts)")
    return save(fig, path)


#: shading of the held-out parts
PART_COLORS = {"val": "tab:orange", "test": "tab:purple"}


def _mark_split(ax, times: np.ndarray, bounds: dict[str, tuple[int, int]], shown: int) -> None:
    """The held-out parts that fall in the plotted range (from step `shown`): shaded, their
    start a dashed line labelled with the part's name."""
    for part, color in PART_COLORS.items():
        if part not in bounds:
            continue
        first, stop = bounds[part]
        last = stop - 1
        if last < shown or first >= len(times):
            continue
        end = times[stop] if stop < len(times) else times[last]  # shaded up to the next part
        ax.axvspan(times[max(first, shown)], end, color=color, alpha=0.08, linewidth=0)
        if first >= shown:  # its start is in view
            ax.axvline(times[first], color=color, linestyle="--", linewidth=0.9)
        at = (times[max(first, shown)], 0.0)  # at the foot: the legend sits at the top
        where = {"xycoords": ("data", "axes fraction"), "textcoords": "offset points"}
        ax.annotate(part, at, xytext=(3, 4), fontsize=8, color=color, **where)
