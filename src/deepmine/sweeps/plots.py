"""A sweep's figures: the objective per trial, against each swept parameter, and per config
over its seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmine.figures import plt, save, seeds_and_mean


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
    return save(fig, path)


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
    return save(fig, path)


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
    return save(fig, path)
