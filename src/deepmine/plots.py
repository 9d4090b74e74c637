"""Figures saved as PNG: confusion matrix and learning curves. Matplotlib only, no display."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: Path) -> Path:
    """Lay out, write as PNG and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(matrix, class_names: Sequence[str], path: Path, title: str) -> Path:
    """Counts per (true, predicted) class, with row-normalized shading."""
    counts = np.asarray(matrix, dtype=np.int64)
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n = len(counts)
    names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def learning_curves_png(
    history: dict[str, list[tuple[int, float]]], path: Path, title: str, metric: str = "acc"
) -> Path:
    """Loss and the task's monitored `metric` against the training step, one panel each,
    train vs val."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    # (metric, colour, marker, alpha): train is always C0, validation C1; the raw per-step
    # train loss is drawn faint behind its epoch mean.
    panels = {
        "loss": [
            ("train/loss", "C0", "", 0.3),
            ("train/loss_epoch", "C0", "o", 1.0),
            ("val/loss", "C1", "o", 1.0),
        ],
        metric: [(f"train/{metric}", "C0", "o", 1.0), (f"val/{metric}", "C1", "o", 1.0)],
    }
    for ax, (quantity, series) in zip(axes, panels.items(), strict=True):
        for key, color, marker, alpha in series:
            points = history.get(key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps, values, color=color, marker=marker, alpha=alpha, label=key, markersize=3
                )
        ax.set_xlabel("step")
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def _titled(title: str, text: str) -> str:
    """`text`, after the sweep's name when there is one (`grid lr×seed: ...`)."""
    return f"{title}: {text}" if title else text


def objective_per_trial_png(points, name: str, direction: str, path: Path, title: str = "") -> Path:
    """Objective of every job in launch order, failures marked at the bottom, with the running
    best: how fast the sweep found its best."""
    import math

    fig, ax = plt.subplots(figsize=(7, 4))

    def ok(value, status) -> bool:
        return status == "FINISHED" and value is not None and math.isfinite(value)

    scored = [(j, v) for j, v, s in points if ok(v, s)]
    if scored:
        jobs, values = zip(*sorted(scored), strict=True)
        ax.plot(jobs, values, "o", label=name)
        pick = np.maximum if direction == "maximize" else np.minimum
        ax.step(jobs, pick.accumulate(np.asarray(values)), where="post", label="best so far")
    others = sorted((j, s) for j, v, s in points if not ok(v, s))
    for job, status in others:
        ax.axvline(job, color="red" if status != "PRUNED" else "grey", alpha=0.3)
        ax.annotate(
            status, (job, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7
        )
    ax.set_xlabel("job / trial")
    ax.set_ylabel(name)
    ax.set_title(_titled(title, f"{name} per trial ({direction})"), fontsize=10)
    ax.grid(alpha=0.3)
    if scored:
        ax.legend()
    return _save(fig, path)


def objective_vs_params_png(
    params: dict[str, list], values: list[float], name: str, path: Path, title: str = ""
):
    """One panel per swept param: objective against the param's value (log axis for positive
    numbers spanning more than two decades; categories as evenly spaced labels)."""
    n = max(len(params), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (param, xs) in zip(axes[0], params.items(), strict=False):
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        if numeric and xs:
            ax.plot(xs, values, "o")
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(positive) > 100:
                ax.set_xscale("log")
        elif xs:
            labels = sorted({str(x) for x in xs})
            ax.plot([labels.index(str(x)) for x in xs], values, "o")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(param)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def seeds_and_mean(ax, x: float, values, stats, dot_color: str, bar_color: str) -> None:
    """One group at `x`: each seed's value a dot (spread a little sideways, drawn above the
    bar it may cross) and the mean as a bar with its ± std; what the sweep summary and
    `deepmine compare` draw per configuration."""
    if len(values):
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        ax.plot(x + np.asarray(jitter), values, "o", color=dot_color, alpha=0.75, markersize=6,
                zorder=3)  # fmt: skip
    if stats.n:
        ax.errorbar([x], [stats.mean], yerr=[stats.std], fmt="_", color=bar_color,
                    markersize=22, capsize=8, linewidth=1.5)  # fmt: skip


def objective_per_config_png(
    scores: dict[str, list[float]], name: str, direction: str, path: Path, title: str = ""
) -> Path:
    """The objective per configuration, best first: each seed a dot, the mean a bar with its
    ± std: whether the ranking is larger than the spread over seeds, at a glance."""
    from deepmine.compare.stats import summarize

    labels = list(scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4))
    for i, config in enumerate(labels):
        seeds_and_mean(ax, i, scores[config], summarize(scores[config]), "C1", "C0")
    ax.plot([], [], "_", color="C0", markersize=12, label="mean ± std")
    ax.plot([], [], "o", color="C1", markersize=5, label="seeds")
    turned = len(labels) > 3 or max(map(len, labels), default=0) > 14
    ax.set_xticks(
        range(len(labels)), labels, rotation=20 if turned else 0, ha="right" if turned else "center"
    )
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(name)
    ax.set_title(_titled(title, f"{name} per config, best first ({direction})"), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def reproduction_png(name, metric, values: dict, published, tolerance, path: Path) -> Path:
    """Each seed's value, their mean ± std, and the published value with its tolerance band."""
    from deepmine.compare.stats import summarize

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = list(values)
    points = [values[s] for s in seeds]
    if points:
        ax.plot(range(len(points)), points, "o", label="seeds")
        for i, seed in enumerate(seeds):
            ax.annotate(f"seed {seed}", (i, points[i]), textcoords="offset points", xytext=(5, 5))
        stats = summarize(points)
        mean, std = stats.mean, stats.std
        ax.axhline(mean, color="C0", linestyle="--", label=f"reproduced {mean:.4f} ± {std:.4f}")
    if published is not None:
        ax.axhline(published, color="C3", label=f"published {published:.4f}")
        ax.axhspan(
            published - tolerance,
            published + tolerance,
            color="C3",
            alpha=0.12,
            label=f"tolerance ±{tolerance:g}",
        )
    ax.set_xticks(range(len(points)), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel(metric)
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _target_names(names, count: int) -> list[str]:
    return list(names) if names and len(names) == count else [f"target {i}" for i in range(count)]


def predicted_vs_actual_png(predicted, actual, path: Path, title: str, names=None) -> Path:
    """One scatter per target: predicted against actual, with the identity line; points on
    the line are perfect predictions."""
    predicted, actual = np.asarray(predicted).reshape(len(predicted), -1), np.asarray(actual)
    actual = actual.reshape(len(actual), -1)
    count = predicted.shape[1]
    fig, axes = plt.subplots(1, count, figsize=(4.4 * count, 4.2), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], _target_names(names, count), strict=True)):
        ax.scatter(actual[:, i], predicted[:, i], s=12, alpha=0.6)
        low = float(min(actual[:, i].min(), predicted[:, i].min()))
        high = float(max(actual[:, i].max(), predicted[:, i].max()))
        ax.plot([low, high], [low, high], color="C3", linewidth=1, label="predicted = actual")
        ax.set_xlabel(f"actual {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: predicted vs actual")
    return _save(fig, path)


def residuals_png(predicted, actual, path: Path, title: str, names=None) -> Path:
    """A histogram of residuals (actual - predicted) per target, with their mean: a biased
    model shows a shifted histogram, a heavy tail shows the samples it gets badly wrong."""
    predicted, actual = np.asarray(predicted).reshape(len(predicted), -1), np.asarray(actual)
    residuals = actual.reshape(len(actual), -1) - predicted
    count = residuals.shape[1]
    fig, axes = plt.subplots(1, count, figsize=(4.4 * count, 3.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], _target_names(names, count), strict=True)):
        ax.hist(residuals[:, i], bins=min(30, max(5, len(residuals) // 3)), alpha=0.8)
        mean = float(residuals[:, i].mean())
        ax.axvline(mean, color="C3", label=f"mean {mean:.3g}")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"residual of {name} (actual - predicted)")
        ax.set_ylabel("samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: residuals")
    return _save(fig, path)


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
    for column, name in enumerate(_target_names(names, count)):
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
    return _save(fig, path)


def robust_accuracy_png(eps, accuracy: dict, path: Path, title: str) -> Path:
    """Test accuracy against the L∞ budget ε (on [0, 1] pixels), one line per attack."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, values in accuracy.items():
        ax.plot(list(eps), list(values), marker="o", label=name)
    ax.set_xlabel("ε (L∞, pixels in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _as_image(pixels) -> np.ndarray | None:
    """A displayable (H, W) or (H, W, 3) array of one sample, or None if it is no image."""
    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    if a.ndim == 2:
        return a
    side = round(a.size**0.5)
    return a.reshape(side, side) if side * side == a.size else None


def adversarial_examples_png(examples: dict, class_names, path: Path, title: str) -> Path:
    """Clean test images (top row) and their adversarial versions (bottom row), each titled
    with the predicted class; a changed prediction is drawn in red."""
    clean, adversarial = examples["clean"], examples["adversarial"]
    n = len(clean)
    names = list(class_names)

    def label(i) -> str:
        i = int(i)
        return names[i] if i < len(names) else str(i)

    fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.4, 3.4), squeeze=False)
    for column in range(n):
        for row, (images, key) in enumerate(
            ((clean, "clean_pred"), (adversarial, "adversarial_pred"))
        ):
            ax = axes[row, column]
            image = _as_image(images[column])
            if image is not None:
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            predicted = examples[key][column]
            wrong = int(predicted) != int(examples["target"][column])
            ax.set_title(label(predicted), fontsize=7, color="red" if wrong else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, 0].set_ylabel("clean", fontsize=8)
        axes[1, 0].set_ylabel(f"{examples['attack']} ε={examples['eps']:g}", fontsize=8)
    fig.suptitle(f"{title} adversarial examples (title: predicted class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latent_map_png(xy, clusters, labels, class_names, path: Path, title: str) -> Path:
    """Codes projected to 2-D, coloured by cluster (left) and, when labels exist, by true
    class (right): the two panels agree where the clustering found the classes."""
    panels = [("cluster", np.asarray(clusters), None)]
    if labels is not None:
        panels.append(("true class", np.asarray(labels), list(class_names)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, colour, names) in zip(axes[0], panels, strict=True):
        for value in np.unique(colour):
            rows = colour == value
            label = names[value] if names and 0 <= value < len(names) else str(value)
            ax.scatter(xy[rows, 0], xy[rows, 1], s=3, alpha=0.6, label=label)
        ax.set_title(f"coloured by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3, loc="best", framealpha=0.7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def contingency_png(table, class_names: Sequence[str], path: Path, title: str) -> Path:
    """Samples per (cluster, true class); clusters ordered by their matched class (the
    Hungarian matching that clustering accuracy uses), so a good clustering is diagonal."""
    from deepmine.clustering.scores import matching

    counts = np.asarray(table, dtype=np.int64)
    matched = matching(counts)
    order = sorted(range(len(counts)), key=lambda c: (matched.get(c, len(counts) + c), c))
    counts = counts[order]
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n_clusters, n_classes = counts.shape
    names = list(class_names) if len(class_names) == n_classes else list(map(str, range(n_classes)))
    fig, ax = plt.subplots(figsize=(1.4 + 0.7 * n_classes, 1.0 + 0.5 * n_clusters))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(n_clusters):
        for j in range(n_classes):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n_classes), names, rotation=45, ha="right")
    ax.set_yticks(range(n_clusters), [str(c) for c in order])
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster")
    ax.set_title(f"{title}: samples per cluster and class")
    return _save(fig, path)


def reconstructions_png(inputs, rebuilt, path: Path, title: str) -> Path:
    """Inputs (top row) and the autoencoder's reconstructions (bottom row), on one grey scale
    per pair of rows."""
    n = len(inputs)
    low = float(min(np.min(np.asarray(inputs)), np.min(np.asarray(rebuilt))))
    high = float(max(np.max(np.asarray(inputs)), np.max(np.asarray(rebuilt))))
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.4, 3.0), squeeze=False)
    for column in range(n):
        for row, images in enumerate((inputs, rebuilt)):
            ax = axes[row, column]
            image = _as_image(images[column])
            if image is not None:
                ax.imshow(np.clip(image, low, high), cmap="gray", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("rebuilt", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
