"""Regression's figures: predicted against actual values, and residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmine.figures import plt, save, target_names


def predicted_vs_actual_png(predicted, actual, path: Path, title: str, names=None) -> Path:
    """One scatter per target: predicted against actual, with the identity line; points on
    the line are perfect predictions."""
    predicted, actual = np.asarray(predicted).reshape(len(predicted), -1), np.asarray(actual)
    actual = actual.reshape(len(actual), -1)
    count = predicted.shape[1]
    fig, axes = plt.subplots(1, count, figsize=(4.4 * count, 4.2), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], target_names(names, count), strict=True)):
        ax.scatter(actual[:, i], predicted[:, i], s=12, alpha=0.6)
        low = float(min(actual[:, i].min(), predicted[:, i].min()))
        high = float(max(actual[:, i].max(), predicted[:, i].max()))
        ax.plot([low, high], [low, high], color="C3", linewidth=1, label="predicted = actual")
        ax.set_xlabel(f"actual {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: predicted vs actual")
    return save(fig, path)


def residuals_png(predicted, actual, path: Path, title: str, names=None) -> Path:
    """A histogram of residuals (actual - predicted) per target, with their mean: a biased
    model shows a shifted histogram, a heavy tail shows the samples it gets badly wrong."""
    predicted, actual = np.asarray(predicted).reshape(len(predicted), -1), np.asarray(actual)
    residuals = actual.reshape(len(actual), -1) - predicted
    count = residuals.shape[1]
    fig, axes = plt.subplots(1, count, figsize=(4.4 * count, 3.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], target_names(names, count), strict=True)):
        ax.hist(residuals[:, i], bins=min(30, max(5, len(residuals) // 3)), alpha=0.8)
        mean = float(residuals[:, i].mean())
        ax.axvline(mean, color="C3", label=f"mean {mean:.3g}")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"residual of {name} (actual - predicted)")
        ax.set_ylabel("samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: residuals")
    return save(fig, path)
