"""Supervised classification: cross-entropy (or any loss from config), accuracy, macro F1 and
the test confusion matrix.

The training-epoch scores come from confusion counts kept with one `bincount` per step and
turned into accuracy and macro F1 at the epoch end (see `deepmine.tasks.base` for why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from deepmine.tasks.base import Task


class ClassificationTask(Task):
    """Logs `train|val|test/{loss,acc,f1_macro}` and `val/<monitor>_best`; plots the test
    confusion matrix with the data's class names."""

    targets = "class"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss: nn.Module | None = None,
        monitor: str = "acc",
        mode: str = "max",
    ):
        self.num_classes = num_classes  # make_metrics, called by the base, needs it
        super().__init__(net, optimizer, scheduler, monitor, mode)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confusion: torch.Tensor | None = None

    def make_metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(self.num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(self.num_classes, average="macro"),
            }
        )

    def compute_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs, y)

    def train_state_sizes(self) -> dict[str, int]:
        # confusion counts of the epoch's training batches (rows: true class)
        return {"counts": self.num_classes * self.num_classes}

    def update_train_state(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        predicted = outputs.argmax(1)
        self.train_counts.add_(
            torch.bincount(y * self.num_classes + predicted, minlength=len(self.train_counts))
        )

    def train_scores(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return confusion_scores(state["counts"].view(self.num_classes, self.num_classes))

    def on_test_batch(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        self.test_confmat.update(outputs, y)

    def finish_test(self) -> None:
        self.test_confusion = self.test_confmat.compute().cpu()
        self.test_confmat.reset()

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.plots import confusion_matrix_png

        if self.test_confusion is None:
            return []
        names = getattr(datamodule, "class_names", ())
        path = folder / "confusion_matrix.png"
        return [
            confusion_matrix_png(self.test_confusion, names, path, f"{title} test confusion matrix")
        ]

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        return [
            f"test/acc      {metrics.get('test/acc', float('nan')):.4f}",
            f"test/f1_macro {metrics.get('test/f1_macro', float('nan')):.4f}",
        ]


def confusion_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Micro accuracy and macro F1 from a confusion matrix (rows: true class, columns:
    predicted), defined as torchmetrics' MulticlassAccuracy(average="micro") and
    MulticlassF1Score(average="macro") are: classes absent from both targets and predictions
    are left out of the macro mean."""
    counts = counts.to(torch.float64)
    true_positives = counts.diagonal()
    predicted, actual = counts.sum(0), counts.sum(1)
    total = counts.sum()
    accuracy = true_positives.sum() / total.clamp_min(1)
    denominator = predicted + actual
    f1 = torch.where(denominator > 0, 2 * true_positives / denominator.clamp_min(1), 0.0)
    present = denominator > 0
    macro_f1 = f1[present].mean() if present.any() else torch.zeros((), dtype=torch.float64)
    return {"acc": accuracy.float(), "f1_macro": macro_f1.float()}
