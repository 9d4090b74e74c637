"""Clustering's figures: the latent map, the cluster/class contingency table and
reconstructions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepmine.figures import as_image, plt, save


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
    return save(fig, path)


def contingency_png(table, class_names: Sequence[str], path: Path, title: str) -> Path:
    """Samples per (cluster, true class); clusters ordered by their matched class (the
    Hungarian matching that clustering accuracy uses), so a good clustering is diagonal."""
    from deepmine.tasks.clustering.scores import matching

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
    return save(fig, path)


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
            image = as_image(images[column])
            if image is not None:
                ax.imshow(np.clip(image, low, high), cmap="gray", vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("rebuilt", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
