"""Anomaly detection: an autoencoder learns to reconstruct the normal classes only; a sample's
anomaly score is its reconstruction error.

The protocol is the one-class one of Ruff et al. 2018 ("Deep One-Class Classification", ICML):
some classes are normal (`normal_classes`), every other class is anomalous; training sees the
normal training samples only; the test split, normal and anomalous samples alike, is scored.

- Training: each batch's normal rows are picked before the forward pass (`normal_loss`), so the
  anomalous rows cost no compute (with one class of ten normal, nine tenths of the batch); the
  loss is the mean over those rows of each sample's mean squared error. A batch with no normal
  row gives a zero loss and zero gradients (not NaN; a momentum optimizer still moves by its
  momentum). `train/loss_epoch` is the mean over the epoch's normal samples.
- Validation: `val/recon_loss`, the reconstruction error of the normal validation samples, is
  monitored by default (minimized): model selection reads no anomaly label. `val/auroc` and
  `val/ap` are logged beside it; `task.monitor=auroc|ap` (with `task.mode=max`) selects on them.
- After the test, on the best checkpoint (`finish_test`), the whole validation and test splits
  are scored (like clustering, independent of `trainer.limit_test_batches`): the threshold is
  the `threshold_percentile`-th percentile of the normal validation samples' scores
  (`test/threshold`); `test/auroc`, `test/ap` rank the test scores, `test/precision`,
  `test/recall`, `test/f1` flag the test samples above the threshold; `test/recon_loss` is the
  normal test samples' mean score.
- Baselines in the same run (`baseline`, `deepmine.tasks.anomaly.baselines`): IsolationForest
  and PCA reconstruction error, fitted on the normal training samples and scored on the same
  test split, `baseline/<name>/test/{auroc,ap}`; `auroc_gain/<name>` is the net's test AUROC
  minus the baseline's (`auroc_gain/best_baseline`: minus the best of them), what a comparative
  claim reads.

Data without labels (every label -1, a table with `data.target=null`) is trained on whole (every
row counts as normal: the usual unsupervised assumption that anomalies are rare) and scored,
not evaluated: no AUROC, no baseline, the scores in `results/scores.csv` and the run tagged
`deepmine.anomaly.evaluated=false`.

It is one module on purpose: training on normal rows, validation, the threshold and the
scoring after the test all read the same normal/anomalous split of the labels, kept in one class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from deepmine.errors import DeepmineError
from deepmine.tasks.anomaly.scores import (
    AT_THRESHOLD,
    ranking_scores,
    threshold_scores,
    unit_interval,
)
from deepmine.tasks.base import Task

#: what each metric `task.monitor` may name is, and the direction it must be followed in
MONITORS = {"recon_loss": "min", "auroc": "max", "ap": "max"}
#: rows scored at once after the test
CHUNK = 4096


class AnomalyTask(Task):
    """Options are the keys of conf/task/anomaly.yaml, documented there.

    The base's steps compare outputs with one target per batch (`learning_target`,
    `compute_loss`, `metric_inputs`); here each sample's label decides whether it is trained on
    and how it is scored, so the training, validation and test steps are this class's own
    (the training step keeps the base's sums, logging and `task.steps_per_call`)."""

    targets = "class"  # the labels say which samples are normal; a table may have none
    labels_optional = True
    prediction_buffers = ("threshold",)
    pairing_hint = (
        "use class-labelled data (fashion_mnist, digits, csv with data.target=<label column>) "
        "with task.normal_classes=[...], or score a table without labels (data.target=null)"
    )

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        normal_classes: Sequence[int] | int,
        num_classes: int | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        monitor: str = "recon_loss",
        mode: str = "min",
        threshold_percentile: float = 95.0,
        baseline: bool = True,
        pca_components: int | None = None,
        top_k: int = 16,
        seed: int = 0,
        **steps,
    ):
        super().__init__(net, optimizer, scheduler, monitor, mode, **steps)
        if not all(callable(getattr(net, name, None)) for name in ("encode", "decode")):
            raise DeepmineError(
                f"task=anomaly scores by reconstruction and needs an autoencoder; "
                f"{type(net).__name__} has no encode() and decode()",
                "use an autoencoder, e.g. net=autoencoder (or net=conv_autoencoder for images)",
            )
        if mode != MONITORS[monitor]:
            raise DeepmineError(
                f"task.monitor={monitor} is {MONITORS[monitor]}imized, but task.mode={mode}",
                f"follow its direction, e.g. task.mode={MONITORS[monitor]}",
            )
        self.normal_classes = _checked_classes(normal_classes, num_classes)
        if not 0 < float(threshold_percentile) <= 100:
            raise DeepmineError(
                f"task.threshold_percentile={threshold_percentile} is not in (0, 100]",
                "use a percentile of the normal validation scores, e.g. "
                "task.threshold_percentile=95",
            )
        if int(top_k) < 0:
            raise DeepmineError(f"task.top_k={top_k} is negative", "use e.g. task.top_k=16")
        self.threshold_percentile = float(threshold_percentile)
        self.baseline, self.top_k, self.seed = bool(baseline), int(top_k), int(seed)
        latent = getattr(net, "latent_dim", None)
        self.pca_components = int(pca_components if pca_components is not None else latent or 10)
        self.register_buffer(
            "normal_labels", torch.tensor(self.normal_classes, dtype=torch.long), persistent=False
        )
        #: whether validation has labels of both kinds (val/auroc, val/ap): set in `setup`
        self.val_scored = True
        #: what the plots, files, tags and summary need, set by `finish_test`
        self.results: dict | None = None
        #: the flagging threshold (float64, as computed), set by `finish_test`: what a logged
        #: model flags new samples with
        self.register_buffer("threshold", torch.tensor(float("nan"), dtype=torch.float64))

    # --- which samples are normal -----------------------------------------------------------

    def is_normal(self, y: torch.Tensor) -> torch.Tensor:
        """True for the samples of a normal class, and for unlabeled ones (-1)."""
        return torch.isin(y, self.normal_labels.to(y.device)) | (y < 0)

    def setup(self, stage: str) -> None:
        """Refuse data this protocol cannot run on, and decide what validation scores."""
        datamodule = getattr(self.trainer, "datamodule", None)
        tensors = getattr(datamodule, "tensors", None) or {}
        if stage != "fit" or "train" not in tensors:
            return
        labels = {split: y for split, (_, y) in tensors.items()}
        labelled = bool((labels["train"] >= 0).any())
        normal = {split: self.is_normal(y) for split, y in labels.items()}
        classes = ",".join(map(str, self.normal_classes))
        for split in ("train", "val"):
            if split in normal and not bool(normal[split].any()):
                raise DeepmineError(
                    f"task.normal_classes=[{classes}] has no sample in the {split} split, so "
                    "there is nothing normal to " + ("learn" if split == "train" else "validate"),
                    "pick classes the data has, e.g. task.normal_classes=[0]",
                )
        val = normal.get("val")
        self.val_scored = labelled and val is not None and not bool(val.all())
        if self.monitor != "recon_loss" and not self.val_scored:
            raise DeepmineError(
                f"task.monitor={self.monitor} needs labelled validation samples of both kinds, "
                "and this validation split has " + ("no labels" if not labelled else "no anomaly"),
                "select on the normal reconstruction loss (the default): drop task.monitor and "
                "task.mode",
            )

    # --- training: reconstruct the normal samples -------------------------------------------

    def make_metrics(self) -> MetricCollection:
        # updated one by one in `validation_step` (they take different inputs)
        return MetricCollection(
            {"recon_loss": MeanMetric(), "auroc": BinaryAUROC(), "ap": BinaryAveragePrecision()}
        )

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Each sample's anomaly score: its mean squared reconstruction error."""
        return (self.net(x) - x).pow(2).flatten(1).mean(1)

    def normal_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`(loss, n)`: the mean reconstruction error over the batch's `n` normal rows, only
        they passing through the net (0 with zero gradients when there is none)."""
        normal = x[self.is_normal(y)]
        n = len(normal)
        return self.errors(normal).sum() / max(n, 1), n

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """The base's step with the loss and its sums over the normal rows only."""
        x, y = batch
        loss, n = self.normal_loss(x, y)
        self.record_train_loss(loss.detach(), n)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        scores = self.errors(x)
        normal = self.is_normal(y)
        self.val_metrics["recon_loss"].update(scores, normal.to(scores.dtype))
        if self.val_scored:
            anomalous = (~normal).long()
            self.val_metrics["auroc"].update(unit_interval(scores), anomalous)
            self.val_metrics["ap"].update(unit_interval(scores), anomalous)

    def on_validation_epoch_end(self) -> None:
        names = ("recon_loss", "auroc", "ap") if self.val_scored else ("recon_loss",)
        values = {name: self.val_metrics[name].compute() for name in names}
        self.val_metrics.reset()
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=True)
        self.log("val/loss", values["recon_loss"])
        self.val_best(values[self.monitor])
        self.log(f"{self.monitored}_best", self.val_best.compute(), prog_bar=True)

    # --- after the test: threshold, scores, baselines ---------------------------------------

    def test_step(self, batch, batch_idx: int) -> None:
        """Nothing per batch: `finish_test` scores the whole splits (see the module docstring)."""

    def finish_test(self) -> None:
        datamodule = self.trainer.datamodule
        val_x, val_y = datamodule.normalized("val")
        test_x, test_y = datamodule.normalized("test")
        val_scores, test_scores = self._scores(val_x), self._scores(test_x)
        val_normal = self.is_normal(val_y).numpy()
        test_normal = self.is_normal(test_y).numpy()
        threshold = float(np.percentile(val_scores[val_normal], self.threshold_percentile))
        flagged = test_scores > threshold
        self.threshold.fill_(threshold)
        evaluated = bool((test_y >= 0).any())
        logged = {
            "test/threshold": threshold,
            "test/recon_loss": float(test_scores[test_normal].mean()),
            "test/flagged": float(flagged.mean()),
        }
        baselines: dict[str, np.ndarray] = {}
        anomalous = ~test_normal
        if evaluated and anomalous.any() and test_normal.any():
            logged |= {f"test/{k}": v for k, v in ranking_scores(test_scores, anomalous).items()}
            logged |= {f"test/{k}": v for k, v in threshold_scores(flagged, anomalous).items()}
            if self.baseline:
                baselines = self._baselines(datamodule, test_x)
                gains = {}
                for name, scores in baselines.items():
                    for key, value in ranking_scores(scores, anomalous).items():
                        logged[f"baseline/{name}/test/{key}"] = value
                    gains[name] = logged["test/auroc"] - logged[f"baseline/{name}/test/auroc"]
                    logged[f"auroc_gain/{name}"] = gains[name]
                logged["auroc_gain/best_baseline"] = min(gains.values())
        else:
            evaluated = False
        for key, value in logged.items():
            self.log(key, value)
        top = np.argsort(-test_scores, kind="stable")[: self.top_k]
        self.results = {
            "evaluated": evaluated,
            "threshold": threshold,
            "splits": {
                "val": (val_scores, val_y.numpy(), val_scores > threshold, {}),
                "test": (test_scores, test_y.numpy(), flagged, baselines),
            },
            "top": (top, test_x[torch.as_tensor(top, dtype=torch.long)]),
            "image": test_x.dim() == 4,
        }

    def predict_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each sample's score and whether it is above the threshold (compared in float64, as
        the test's flags are)."""
        scores = self.errors(x)
        return {"score": scores, "anomalous": scores.to(torch.float64) > self.threshold}

    def _scores(self, x: torch.Tensor) -> np.ndarray:
        """Every sample's score (float64, on the CPU), in eval mode, chunk by chunk."""
        with torch.no_grad():
            parts = [self.errors(part.to(self.device)).cpu() for part in x.split(CHUNK)]
        return torch.cat(parts).to(torch.float64).numpy() if parts else np.zeros(0)

    def _baselines(self, datamodule, test_x: torch.Tensor) -> dict[str, np.ndarray]:
        from deepmine.tasks.anomaly.baselines import baseline_scores

        train_x, train_y = datamodule.normalized("train")
        normal = train_x[self.is_normal(train_y)].flatten(1).numpy()
        scored = test_x.flatten(1).numpy()
        return baseline_scores(normal, scored, self.pca_components, self.seed)

    # --- what the run shows -----------------------------------------------------------------

    def result_files(self, folder: Path) -> list[Path]:
        """`scores.csv`: every validation and test sample's split, position in that split,
        label (-1: none), whether it is anomalous (empty without labels), score and whether it
        is flagged (score above the threshold); test rows also carry each baseline's score.
        For a table, `top_anomalies.csv`: the `top_k` most anomalous test rows, their
        features as the net sees them (standardized, one-hot), score and label."""
        import pandas as pd

        if self.results is None:
            return []
        frames = []
        for split, (scores, labels, flagged, baselines) in self.results["splits"].items():
            columns = {
                "split": split,
                "index": np.arange(len(scores)),
                "label": labels,
                "anomalous": _anomalous_column(self.is_normal(torch.as_tensor(labels)), labels),
                "score": scores,
                "flagged": flagged.astype(int),
            }
            columns |= {f"score_{name}": values for name, values in baselines.items()}
            frames.append(pd.DataFrame(columns))
        path = folder / "scores.csv"
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)
        paths = [path]
        top, samples = self.results["top"]
        if not self.results["image"] and len(top):
            scores, labels, _, _ = self.results["splits"]["test"]
            values = samples.flatten(1).numpy()
            names = list(getattr(self.trainer.datamodule, "feature_names", []) or [])
            if len(names) != values.shape[1]:
                names = [f"x{i}" for i in range(values.shape[1])]
            table = pd.DataFrame(values, columns=names)
            table.insert(0, "index", top)
            table.insert(1, "score", scores[top])
            table.insert(2, "label", labels[top])
            paths.append(folder / "top_anomalies.csv")
            table.to_csv(paths[-1], index=False)
        return paths

    def run_tags(self) -> dict[str, str]:
        if self.results is None:
            return {}
        return {
            "deepmine.anomaly.evaluated": str(self.results["evaluated"]).lower(),
            "deepmine.anomaly.normal_classes": ",".join(map(str, self.normal_classes)),
        }

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.tasks.anomaly.plots import score_histogram_png, top_anomalies_png

        if self.results is None:
            return []
        scores, labels, _, _ = self.results["splits"]["test"]
        anomalous = ~self.is_normal(torch.as_tensor(labels)).numpy()
        paths = [
            score_histogram_png(
                scores,
                anomalous if self.results["evaluated"] else None,
                self.results["threshold"],
                self.threshold_percentile,
                folder / "score_histogram.png",
                title,
            )
        ]
        top, samples = self.results["top"]
        if self.results["image"] and len(top):
            names = list(getattr(datamodule, "class_names", ()) or ())
            paths.append(
                top_anomalies_png(
                    samples, scores[top], labels[top], names, folder / "top_anomalies.png", title
                )
            )
        return paths

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        lines = [
            f"test/recon_loss {metrics.get('test/recon_loss', float('nan')):.4f} (normal "
            f"samples)  threshold {metrics.get('test/threshold', float('nan')):.4g} "
            f"(p{self.threshold_percentile:g} of normal val scores)"
        ]
        if self.results is not None and not self.results["evaluated"]:
            share = metrics.get("test/flagged", float("nan"))
            return [
                *lines,
                f"labels        none: {share:.1%} of the test samples flagged; scores in "
                "results/scores.csv, not evaluated (no AUROC)",
            ]
        if "test/auroc" in metrics:
            lines.append(
                f"test/auroc    {metrics['test/auroc']:.4f}  test/ap {metrics['test/ap']:.4f}"
            )
            at = "  ".join(f"{k} {metrics[f'test/{k}']:.4f}" for k in AT_THRESHOLD)
            lines.append(f"at threshold  {at}")
        for name in ("isolation_forest", "pca"):
            key = f"baseline/{name}/test/auroc"
            if key in metrics:
                ap, gain = metrics[f"baseline/{name}/test/ap"], metrics[f"auroc_gain/{name}"]
                lines.append(
                    f"baseline      {name:<17}test/auroc {metrics[key]:.4f}  test/ap {ap:.4f}  "
                    f"(net's auroc {gain:+.4f})"
                )
        return lines


def _checked_classes(normal_classes, num_classes: int | None) -> list[int]:
    """The normal classes as a sorted list of distinct ints, each a class of the data (when its
    class count is known), leaving at least one class anomalous."""
    given = [normal_classes] if isinstance(normal_classes, int) else normal_classes
    shown = f"task.normal_classes={normal_classes}".replace("'", "")
    try:
        values = list(given)
    except TypeError:
        values = None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DeepmineError(
            f"{shown} is not a non-empty list of class indices",
            "name the normal classes, e.g. task.normal_classes=[0]",
        )
    classes = sorted(set(values))
    if num_classes is not None:
        outside = [c for c in classes if not 0 <= c < num_classes]
        if outside:
            raise DeepmineError(
                f"{shown}: class {outside[0]} is not a class of this data (its classes are "
                f"0..{num_classes - 1})",
                "use class indices the data has, e.g. task.normal_classes=[0]",
            )
        if len(classes) >= num_classes:
            raise DeepmineError(
                f"{shown} makes every class of this data normal, so nothing is anomalous",
                "leave at least one class out, e.g. task.normal_classes=[0]",
            )
    return classes


def _anomalous_column(normal: torch.Tensor, labels: np.ndarray) -> list:
    """1 or 0 per labelled sample, empty (None) where there is no label."""
    return [
        None if label < 0 else int(not n) for n, label in zip(normal.tolist(), labels, strict=True)
    ]
