"""The two figures of a comparison: validation curves per group, and the final metric per group.

Lightning logs metrics per global step, which differs between configs (another batch size,
another dataset size), so curves are drawn per epoch: each point of the validation history is
placed at the `epoch` metric logged at the same step. Runs recorded without an `epoch` metric
fall back to the order of their points (one validation per epoch). A group's curve is the mean
over its seeds with a band from the lowest to the highest seed, so a gap between two curves
can be read against the spread of each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from deepmine.compare.render import number
from deepmine.compare.table import Comparison, Group
from deepmine.figures import save, seeds_and_mean

CURVES_PNG = "curves.png"
FINAL_PNG = "final_metric.png"


def epoch_points(history: list, epochs: list) -> list[tuple[float, float]]:
    """(epoch, value) of each point of `history` (MLflow `Metric`s with step and value), the
    epoch read from `epochs` (the `epoch` metric's history) at the same step."""
    at_step: dict[int, float] = {}
    for point in epochs:
        # at a validation step Lightning logs the epoch just validated; the next epoch's
        # number appears at later steps, so the lowest value at a step is the right one
        at_step[point.step] = min(point.value, at_step.get(point.step, point.value))
    points = sorted(history, key=lambda p: (p.step, p.timestamp))
    if points and all(p.step in at_step for p in points):
        return [(at_step[p.step], p.value) for p in points]
    return [(float(i), p.value) for i, p in enumerate(points)]


def curve_key(comparison: Comparison) -> str:
    """The validation history to draw: `val/<task.monitor>`, else the first metric's own."""
    for group in comparison.groups:
        for run in group.runs:
            monitor = run.params.get("task.monitor")
            if monitor:
                return f"val/{monitor}"
    return comparison.metrics[0]


def group_curves(store, comparison: Comparison, key: str) -> dict[str, dict[int, list[float]]]:
    """Per group key: epoch -> the values of its runs at that epoch."""
    curves: dict[str, dict[int, list[float]]] = {}
    for group in comparison.groups:
        per_epoch: dict[int, list[float]] = {}
        for run in group.runs:
            history = store.client.get_metric_history(run.run_id, key)
            if not history:
                continue
            epochs = store.client.get_metric_history(run.run_id, "epoch")
            for epoch, value in epoch_points(history, epochs):
                per_epoch.setdefault(int(epoch), []).append(value)
        curves[group.key] = per_epoch
    return curves


def curves_png(
    comparison: Comparison, curves: dict[str, dict[int, list[float]]], key: str, path: Path
) -> Path | None:
    """Each group's mean curve of `key` per epoch with its min–max band; None if no run has a
    history of `key`."""
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, group in enumerate(comparison.groups):
        per_epoch = curves.get(group.key) or {}
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        values = [per_epoch[e] for e in epochs]
        mean = [float(np.mean(v)) for v in values]
        color = f"C{i % 10}"
        ax.plot(epochs, mean, "o-", color=color, markersize=4, label=_legend(group, i + 1))
        ax.fill_between(
            epochs, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.2
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{key} per epoch: mean over seeds, band = min–max", fontsize=10)
    return save(fig, path)


def final_png(comparison: Comparison, path: Path) -> Path:
    """One panel per metric: each group's mean ± std, and every seed as a dot."""
    import textwrap

    metrics = comparison.metrics
    groups = comparison.groups
    width = max(4.5, 1.6 * len(groups) + 2.0)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ticks = []
        for i, group in enumerate(groups):
            seeds_and_mean(ax, i, group.values(metric), group.stats[metric], f"C{i % 10}", "black")
            stats = group.stats[metric]
            label = "\n".join(textwrap.wrap(f"#{i + 1} {group.label}", 22))
            ticks.append(f"{label}\nmean {number(stats.mean)}, n={stats.n}")
        ax.set_xticks(range(len(groups)), ticks, fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, axis="y")
        ax.set_title(metric, fontsize=10)
    better = "higher" if comparison.direction == "max" else "lower"
    fig.suptitle(
        f"final metric per group: bar = mean ± std, dots = seeds ({better} is better)", fontsize=10
    )
    return save(fig, path)


def _legend(group: Group, rank: int) -> str:
    return f"#{rank} {group.label} (n={len(group.runs)})"


def write_plots(store, comparison: Comparison, folder: Path) -> list[Path]:
    """Both PNGs in `folder` (the curves only where some run has a validation history)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key in dict.fromkeys([curve_key(comparison), comparison.metrics[0]]):
        curves = curves_png(
            comparison, group_curves(store, comparison, key), key, folder / CURVES_PNG
        )
        if curves:
            written.append(curves)
            break
    written.append(final_png(comparison, folder / FINAL_PNG))
    return written
