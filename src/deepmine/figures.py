"""What every figure shares, and the figures that belong to no one task: the PNG writer (`save`),
learning curves, seeds drawn as dots with their mean ± std, and the helpers that turn a sample
into an image or name a target. Matplotlib only, no display; a task's own figures live in its
folder (`deepmine.tasks.<name>.plots`), a sweep's in `deepmine.sweeps.plots`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save(fig, path: Path) -> Path:
    """Lay out, write as PNG and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return save(fig, path)


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


def target_names(names, count: int) -> list[str]:
    return list(names) if names and len(names) == count else [f"target {i}" for i in range(count)]


def as_image(pixels) -> np.ndarray | None:
    """A displayable (H, W) or (H, W, 3) array of one sample, or None if it is no image."""
    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    if a.ndim == 2:
        return a
    side = round(a.size**0.5)
    return a.reshape(side, side) if side * side == a.size else None
