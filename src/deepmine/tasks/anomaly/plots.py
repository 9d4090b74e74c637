"""Anomaly detection's figures: the score histogram with the threshold, and the most anomalous
test samples of image data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepmine.figures import as_image, plt, save


def score_histogram_png(
    scores, anomalous, threshold: float, percentile: float, path: Path, title: str
) -> Path:
    """Test scores of the normal and the anomalous samples (each as a density, so a class of
    1,000 and one of 9,000 compare), on a log axis when every score is positive, with the
    threshold; data without labels is drawn as one histogram."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = len(scores) and scores.min() > 0 and threshold > 0
    if positive:
        low, high = min(scores.min(), threshold), max(scores.max(), threshold)
        bins = np.geomspace(low, high * (1 + 1e-9), 50)
    else:
        bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    if anomalous is None:
        ax.hist(scores, bins=bins, color="C7", alpha=0.8, label=f"all ({len(scores)})")
        ax.set_ylabel("samples")
    else:
        anomalous = np.asarray(anomalous, dtype=bool)
        for rows, name, color in ((~anomalous, "normal", "C0"), (anomalous, "anomalous", "C3")):
            if rows.any():
                ax.hist(scores[rows], bins=bins, density=True, color=color, alpha=0.55,
                        label=f"{name} ({int(rows.sum())})")  # fmt: skip
        ax.set_ylabel("density")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
               label=f"threshold {threshold:.4g} (p{percentile:g} of normal val)")  # fmt: skip
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel("anomaly score (reconstruction MSE)")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: test scores", fontsize=10)
    return save(fig, path)


def top_anomalies_png(
    images, scores, labels, class_names: Sequence[str], path: Path, title: str
) -> Path:
    """The most anomalous test samples, highest score first, each titled by its score and
    class (none for data without labels), 8 to a row."""
    n = len(images)
    columns = min(n, 8)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.35 * columns + 0.3, 1.8 * rows + 0.5),
                             squeeze=False)  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        image = as_image(images[i])
        if image is not None:
            ax.imshow(image, cmap="gray")
        label = int(labels[i])
        name = ""
        if label >= 0:
            name = class_names[label] if label < len(class_names) else str(label)
        ax.set_title(f"{scores[i]:.3g}\n{name}", fontsize=7)
    fig.suptitle(f"{title}: the {n} most anomalous test samples", fontsize=9)
    return save(fig, path)
