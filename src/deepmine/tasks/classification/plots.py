"""Classification's figures: the test confusion matrix, accuracy against the attack budget ε,
and a grid of adversarial examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepmine.figures import as_image, plt, save


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
    return save(fig, path)


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
            image = as_image(images[column])
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
