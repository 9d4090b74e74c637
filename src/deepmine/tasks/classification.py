"""Supervised classification: cross-entropy (or any loss from config), accuracy, macro F1 and
the test confusion matrix.

The training-epoch scores come from confusion counts kept with one `bincount` per step and
turned into accuracy and macro F1 at the epoch end (see `deepmine.tasks.base` for why).

Adversarial robustness (`deepmine.robustness.attacks`), both off by default:

- `robustness` (conf/robustness/): after the test epoch, the first `max_samples` test samples
  are attacked at each ε and `robust/<attack>/acc_eps<ε>` is logged (MLflow refuses `@` in
  metric names); `plots` adds the accuracy-vs-ε curve and a grid of adversarial examples.
- `adversarial` (pgd | fgsm_rs): each training batch is replaced by its adversarial version
  before the loss (PGD-AT, Madry et al. 2018; FGSM with random start, Wong, Rice & Kolter 2020).
  With it off, the training step is the base's, unchanged.

The attacks work on [0, 1] pixels and need the datamodule's batch normalization: the batches
arrive normalized, so they are mapped back to pixels and forward again through the
`transform` (a `Normalize`) and `pixel_max` of `self.trainer.datamodule`, read at each use.
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

from deepmine.errors import DeepmineError
from deepmine.tasks.base import Task

ADVERSARIAL = ("pgd", "fgsm_rs")
ROBUSTNESS_DEFAULTS = {
    "eps": [0.0, 0.05, 0.1, 0.2],
    "attacks": ["fgsm", "pgd"],
    "pgd_steps": 10,
    "pgd_step_size": 0.25,
    "random_start": True,
    "restarts": 1,
    "max_samples": 1000,
    "seed": 0,
}


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
        robustness: dict | None = None,
        adversarial: str | None = None,
        adversarial_eps: float = 0.1,
        adversarial_steps: int = 7,
        adversarial_step_size: float | None = None,
    ):
        self.num_classes = num_classes  # make_metrics, called by the base, needs it
        super().__init__(net, optimizer, scheduler, monitor, mode)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confusion: torch.Tensor | None = None
        self.robustness = _robustness_settings(robustness)
        if adversarial is not None and adversarial not in ADVERSARIAL:
            raise DeepmineError(
                f"task.adversarial={adversarial} is not one of {', '.join(ADVERSARIAL)}",
                "use task.adversarial=pgd|fgsm_rs, or null for natural training",
            )
        self.adversarial = adversarial
        self.adversarial_eps = float(adversarial_eps)
        self.adversarial_steps = int(adversarial_steps)
        self.adversarial_step_size = adversarial_step_size
        self._attack_kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.robust_results: dict | None = None

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
        if self.robustness and self._attack_kept:
            self._robust_evaluation()

    # --- adversarial robustness -------------------------------------------------------------

    def pixel_model(self):
        """The net seen from [0, 1] pixels, with the datamodule's batch normalization."""
        from deepmine.robustness.attacks import PixelModel

        datamodule = getattr(self.trainer, "datamodule", None)
        transform = getattr(datamodule, "transform", None)
        pixel_max = getattr(datamodule, "pixel_max", None)
        if transform is None or pixel_max is None:
            raise DeepmineError(
                "adversarial attacks need image data with a pixel scale (data.pixel_max and a "
                "batch normalization)",
                "use image data (digits, fashion_mnist) or drop robustness/task.adversarial",
            )
        return PixelModel(self.net, transform, pixel_max)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.adversarial is not None:
            batch = self.adversarial_batch(batch)
        return super().training_step(batch, batch_idx)

    def adversarial_batch(self, batch):
        """The batch replaced by adversarial examples of the net as it is now (net in eval
        mode while attacked, its training flags restored after)."""
        from deepmine.robustness.attacks import eval_mode, fgsm, pgd

        x, y = batch
        model = self.pixel_model()
        pixels, eps = model.to_pixels(x), self.adversarial_eps
        relative = self.adversarial_step_size
        with eval_mode(self.net):
            if self.adversarial == "fgsm_rs":
                step = (1.25 if relative is None else float(relative)) * eps
                adversarial = fgsm(model, pixels, y, eps, random_start=True, step_size=step)
            else:
                step = None if relative is None else float(relative) * eps
                adversarial = pgd(model, pixels, y, eps, self.adversarial_steps, step)
        return model.to_input(adversarial), y

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if self.robustness:
            kept = sum(len(y) for _, y in self._attack_kept)
            room = int(self.robustness["max_samples"]) - kept
            if room > 0:
                x, y = batch
                self._attack_kept.append((x[:room].detach(), y[:room].detach()))

    def _robust_evaluation(self) -> None:
        from deepmine.robustness.attacks import attack, attack_context, eval_mode

        settings = self.robustness
        model = self.pixel_model()
        with attack_context():  # the kept batches are inference tensors: clone them outside
            x = torch.cat([x.clone() for x, _ in self._attack_kept])
            y = torch.cat([y.clone() for _, y in self._attack_kept])
        self._attack_kept = []
        pixels = model.to_pixels(x)
        generator = torch.Generator().manual_seed(int(settings["seed"]))
        eps_list = [float(e) for e in settings["eps"]]
        accuracy: dict[str, list[float]] = {}
        examples = None
        with eval_mode(self.net), torch.no_grad():
            clean = model(pixels[:8]).argmax(1).cpu()
        for name in settings["attacks"]:
            accuracy[name] = []
            for eps in eps_list:
                adversarial = attack(
                    name,
                    model,
                    pixels,
                    y,
                    eps,
                    steps=int(settings["pgd_steps"]),
                    step_size=float(settings["pgd_step_size"]) * eps,
                    random_start=bool(settings["random_start"]),
                    restarts=int(settings["restarts"]),
                    generator=generator,
                )
                with eval_mode(self.net), torch.no_grad():
                    predicted = model(adversarial).argmax(1)
                acc = float((predicted == y).float().mean())
                accuracy[name].append(acc)
                self.log(f"robust/{name}/acc_eps{eps:g}", acc)
                if eps == max(eps_list):  # the last attack's examples at the largest ε
                    examples = {
                        "clean": pixels[:8].detach().cpu(),
                        "adversarial": adversarial[:8].detach().cpu(),
                        "target": y[:8].cpu(),
                        "clean_pred": clean,
                        "adversarial_pred": predicted[:8].cpu(),
                        "attack": name,
                        "eps": eps,
                    }
        self.robust_results = {
            "eps": eps_list,
            "accuracy": accuracy,
            "examples": examples,
            "samples": len(y),
        }

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.plots import confusion_matrix_png

        if self.test_confusion is None:
            return []
        names = getattr(datamodule, "class_names", ())
        path = folder / "confusion_matrix.png"
        paths = [
            confusion_matrix_png(self.test_confusion, names, path, f"{title} test confusion matrix")
        ]
        if self.robust_results is not None:
            from deepmine.plots import adversarial_examples_png, robust_accuracy_png

            results = self.robust_results
            paths.append(
                robust_accuracy_png(
                    results["eps"],
                    results["accuracy"],
                    folder / "robust_accuracy.png",
                    f"{title} robust test accuracy ({results['samples']} samples)",
                )
            )
            if results["examples"] is not None:
                paths.append(
                    adversarial_examples_png(
                        results["examples"], names, folder / "adversarial_examples.png", title
                    )
                )
        return paths

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        return [
            f"test/acc      {metrics.get('test/acc', float('nan')):.4f}",
            f"test/f1_macro {metrics.get('test/f1_macro', float('nan')):.4f}",
            *(f"{k:<24}{v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("robust/")),
        ]


def _robustness_settings(robustness) -> dict | None:
    """The robustness evaluation settings over their defaults; None/empty: off."""
    if not robustness:
        return None
    settings = {**ROBUSTNESS_DEFAULTS, **dict(robustness)}
    from deepmine.robustness.attacks import ATTACKS

    unknown = [name for name in settings["attacks"] if name not in ATTACKS]
    if unknown or set(settings) - set(ROBUSTNESS_DEFAULTS):
        raise DeepmineError(
            f"robustness: unknown attack(s) {unknown} or key(s) "
            f"{sorted(set(settings) - set(ROBUSTNESS_DEFAULTS))}",
            f"attacks are {', '.join(ATTACKS)}; keys are {', '.join(ROBUSTNESS_DEFAULTS)}",
        )
    settings["eps"] = [float(e) for e in settings["eps"]]
    settings["attacks"] = list(settings["attacks"])
    return settings


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
