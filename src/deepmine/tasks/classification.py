"""Supervised classification: any net, any loss, optimizer and scheduler from config."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)


class ClassificationTask(pl.LightningModule):
    """Logs `train|val|test/{loss,acc,f1_macro}`, `val/acc_best`, and keeps the test confusion
    matrix in `test_confusion` for the caller to plot.

    `optimizer` and `scheduler` are partials (`_partial_: true` in conf/) completed here with the
    parameters and the optimizer, so configs never need to know about model objects.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss: nn.Module | None = None,
    ):
        super().__init__()
        self.net = net
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confusion: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        # The sanity check ran validation before training; it must not count as a best. A run
        # resumed from a checkpoint keeps the best it had (restored in on_load_checkpoint).
        self.val_metrics.reset()
        if self.trainer.current_epoch == 0:
            self.val_acc_best.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # torchmetrics states are not in the state_dict; without this a resumed run would
        # forget its best validation accuracy so far.
        if self.val_acc_best.update_count:
            checkpoint["deepmine_val_acc_best"] = float(self.val_acc_best.compute())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_acc_best.reset()
        if "deepmine_val_acc_best" in checkpoint:
            self.val_acc_best.update(torch.tensor(checkpoint["deepmine_val_acc_best"]))

    def _step(self, batch, metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        metrics.update(logits, y)
        if stage == "train":
            # `train/loss` every log_every_n_steps; its epoch mean as `train/loss_epoch`
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True)
        else:
            self.log(
                f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True
            )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_confmat.update(logits, y)
        self.log("test/loss", self.loss_fn(logits, y), on_epoch=True, sync_dist=True)
        self.test_metrics.update(logits, y)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self.test_confmat.compute().cpu()
        self.test_confmat.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
