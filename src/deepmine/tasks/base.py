"""What every deepmine task shares; a task itself says only its loss, metrics and plots.

A task (classification, regression, forecasting, clustering, ...) is a LightningModule that
subclasses `Task` and provides:

- `learning_target(x, y)`: what the net's outputs are compared with: the labels or values `y`
  for supervised tasks (the default), the input `x` itself for an autoencoder (clustering:
  labels are for scoring only and never reach the loss);
- `compute_loss(outputs, target)`: the training loss on the net's raw outputs;
- `make_metrics()`: a torchmetrics collection, cloned for validation and test;
- `metric_inputs(outputs, y)`: what those metrics compare (e.g. de-standardized predictions);
- the training-epoch scores, kept as on-device sums with no host sync per step:
  `train_state_sizes()` names the sums, `update_train_state(outputs, y)` adds a batch to them
  and `train_scores(state)` turns them into scores at the epoch end (summed over DDP ranks);
- `plots(folder, title, datamodule)`, `result_files(folder)`, `run_tags()` and
  `summary_lines(metrics)`: its artifacts, tags and the lines `deepmine train` prints at the end;
- `predict_outputs(x)`: its answer for new inputs, in its own terms (probabilities, values in
  the data's units, clusters, anomaly scores), what a logged model returns
  (`deepmine.run.pipeline` names the outputs in the user's terms).

The base owns the rest: optimizer/scheduler completion, the hot training step (one loss, one
state update, a running loss sum; `train/loss` only on the steps the logger writes),
validation and test loops, `val/<monitor>_best`, and keeping that best across a resume, and
`task.steps_per_call` (k batches per Lightning step: the `StepsPerCall` mixin of
`deepmine.tasks.steps_per_call`).

Why the on-device sums: on the seed MLP at batch 32 (0.32 ms a step by hand) one `self.log`
call cost about 0.5 ms in Lightning 2.6 (each call moves its whole result entry to the device
again) and a torchmetrics accuracy + F1 update 0.09 ms, against 0.007 ms for a `bincount` into
a buffer. Validation and test batches are few and large, so they keep torchmetrics.

The monitored metric and its direction (`monitor`, `mode` in conf/task/) belong to the task:
checkpointing, early stopping, `optimized_metric` and the sweepers' direction read them from
the task config by interpolation, so a regression run keeps its lowest RMSE, not its highest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection, MinMetric

from deepmine.errors import DeepmineError
from deepmine.tasks.steps_per_call import StepsPerCall

MODES = ("max", "min")


class Task(StepsPerCall, pl.LightningModule):
    """Base of every task; see the module docstring for what a subclass provides."""

    #: the kind of targets the task learns from (`deepmine.data.tensors.TARGET_KINDS`)
    targets: ClassVar[str] = "class"
    #: True when the task also runs on data without labels (every label -1): clustering
    labels_optional: ClassVar[bool] = False
    #: the fix `deepmine train` gives when the data's targets are not this task's kind
    pairing_hint: ClassVar[str] = "pick a data config made for this task"
    #: task config keys the `deepmine eval` command decides rather than the recorded run (e.g.
    #: which attacks to run on the tested model)
    eval_options: ClassVar[tuple[str, ...]] = ()
    #: persistent buffers only a trained model fills after its test (cluster centres, a
    #: threshold): a checkpoint written before they existed loads with their initial values
    prediction_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        monitor: str = "acc",
        mode: str = "max",
        steps_per_call: int = 1,
        gradient_clip_val: float | None = None,
        accumulate_grad_batches: int = 1,
    ):
        super().__init__()
        self._init_steps_per_call(steps_per_call, gradient_clip_val, accumulate_grad_batches)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = self.make_metrics()
        monitorable = [*metrics.keys(), *self.extra_monitors()]
        if monitor not in monitorable:
            raise DeepmineError(
                f"task.monitor={monitor} is not a metric of {type(self).__name__} "
                f"(its metrics: {', '.join(monitorable)})",
                f"pick one of them, e.g. task.monitor={monitorable[0]}",
            )
        if mode not in MODES:
            raise DeepmineError(f"task.mode={mode} is not max or min", "use task.mode=max|min")
        self.monitor, self.mode = monitor, mode
        for name, size in self.train_state_sizes().items():
            dtype = torch.long if name.endswith("counts") else torch.float32
            self.register_buffer(f"train_{name}", torch.zeros(size, dtype=dtype), persistent=False)
        self.register_buffer("train_loss_sum", torch.zeros(()), persistent=False)
        self.register_buffer("train_samples", torch.zeros((), dtype=torch.long), persistent=False)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_best = MaxMetric() if mode == "max" else MinMetric()

    # --- what a task says -------------------------------------------------------------------

    def make_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def extra_monitors(self) -> tuple[str, ...]:
        """Validation metrics logged outside `make_metrics` (as `val/<name>`) that
        `task.monitor` may name; `monitored_value` must then give their value."""
        return ()

    def monitored_value(self) -> torch.Tensor:
        """This validation epoch's value of the monitored metric, synced over DDP ranks."""
        return self.val_metrics[self.monitor].compute()

    def learning_target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the outputs are compared with (loss, training sums, val/test metrics)."""
        return y

    def compute_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric_inputs(self, outputs: torch.Tensor, y: torch.Tensor):
        """`(preds, target)` for the validation and test metrics."""
        return outputs, y

    def train_state_sizes(self) -> dict[str, int]:
        """Names and lengths of the on-device sums of a training epoch (a name ending in
        `counts` is an integer buffer, any other float32)."""
        return {}

    def update_train_state(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        """Add one training batch (outputs detached) to the sums; tensor ops only."""

    def train_scores(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The epoch's training scores (`train/<name>`) from the sums of all ranks; `state`
        also holds `samples`, the number of training samples they cover."""
        return {}

    def on_test_batch(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        """Keep what the test plots need (e.g. confusion counts, predictions)."""

    def finish_test(self) -> None:
        """The test epoch ended: compute what `plots` draws."""

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        """PNG files of the test results, written into `folder` (logged under plots/)."""
        return []

    def result_files(self, folder: Path) -> list[Path]:
        """Files of the test results other than plots (logged under results/), e.g. each
        sample's cluster, written into `folder`."""
        return []

    def run_tags(self) -> dict[str, str]:
        """Tags the task sets on its run once tested (e.g. that a clustering had no labels)."""
        return {}

    def predict_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task's answer for a batch of the net's inputs: named tensors, one row per
        sample (`deepmine.run.pipeline.OUTPUTS` lists the names)."""
        raise DeepmineError(
            f"{type(self).__name__} does not score new data",
            "log and predict with a classification, regression, forecasting, clustering or "
            "anomaly model",
        )

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        """What `deepmine train` prints about the result, one line each."""
        return [
            f"{key:<14}{value:.4f}" for key, value in sorted(metrics.items()) if key[:5] == "test/"
        ]

    # --- what every task does ---------------------------------------------------------------

    @property
    def monitored(self) -> str:
        return f"val/{self.monitor}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` around every hook it calls, about 47 times per
        # training step; `nn.Module.__setattr__` costs ~1 µs per call (it searches the
        # parameter, buffer and module dicts), a plain attribute needs none of that (so also
        # `_stepping`, set on every inner step of `task.steps_per_call`).
        if name in ("_current_fx_name", "_stepping"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def on_train_start(self) -> None:
        self._direct_hooks = self._direct_dispatch() if self.steps_per_call > 1 else None
        # The sanity check ran validation before training; it must not count as a best. A run
        # resumed from a checkpoint keeps the best it had (restored in on_load_checkpoint).
        self.val_metrics.reset()
        if self.trainer.current_epoch == 0:
            self.val_best.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # torchmetrics states are not in the state_dict; without this a resumed run would
        # forget its best validation score so far.
        if self.val_best.update_count:
            checkpoint["deepmine_val_best"] = float(self.val_best.compute())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = dict(state_dict)
        for name in self.prediction_buffers:  # see `prediction_buffers`
            state.setdefault(name, getattr(self, name))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_best.reset()
        # deepmine_val_acc_best: the key of checkpoints written before tasks had a monitor
        best = checkpoint.get("deepmine_val_best", checkpoint.get("deepmine_val_acc_best"))
        if best is not None:
            self.val_best.update(torch.tensor(best))

    def _train_state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"train_{name}") for name in self.train_state_sizes()}

    def on_train_epoch_start(self) -> None:
        for buffer in self._train_state().values():
            buffer.zero_()
        self.train_loss_sum.zero_()
        self.train_samples.zero_()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        outputs = self(x)
        target = self.learning_target(x, y)
        loss = self.compute_loss(outputs, target)
        self.update_train_state(outputs.detach(), target)
        self.record_train_loss(loss.detach(), len(y))
        return loss

    def record_train_loss(self, loss: torch.Tensor, samples: int) -> None:
        """A training batch's (detached) mean loss over `samples` rows: into the epoch's sums
        (`train/loss_epoch`), and logged as `train/loss` on the steps the logger writes. A task
        with its own `training_step` calls this so both stay the base's."""
        self.train_loss_sum.add_(loss * samples)
        self.train_samples.add_(samples)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # the steps Lightning's logger connector writes; logging on the others is discarded
            if self.steps_per_call == 1:
                self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            elif self._stepping:
                self._log_inner_step(loss)

    def on_train_epoch_end(self) -> None:
        """`train/loss_epoch` (sample-weighted mean) and the task's training scores, summed
        over ranks under DDP."""
        state = {name: buffer.clone() for name, buffer in self._train_state().items()}
        loss_sum, samples = self.train_loss_sum.clone(), self.train_samples.clone()
        if self.trainer.world_size > 1:
            state = {name: self.all_gather(value).sum(0) for name, value in state.items()}
            loss_sum = self.all_gather(loss_sum).sum()
            samples = self.all_gather(samples).sum()
        # batch_size=1: one value an epoch, logged as it is (Lightning would weight it by the
        # last batch's size, and with task.steps_per_call > 1 asks for a size)
        self.log("train/loss_epoch", loss_sum / samples.clamp_min(1), batch_size=1)
        state["samples"] = samples
        scores = self.train_scores(state)
        self.log_dict({f"train/{k}": v for k, v in scores.items()}, batch_size=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        outputs = self(x)
        target = self.learning_target(x, y)
        self.val_metrics.update(*self.metric_inputs(outputs, target))
        self.log("val/loss", self.compute_loss(outputs, target), prog_bar=True, sync_dist=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_best(self.monitored_value())
        self.log(f"{self.monitored}_best", self.val_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        outputs = self(x)
        target = self.learning_target(x, y)
        self.on_test_batch(outputs, target)
        self.log("test/loss", self.compute_loss(outputs, target), on_epoch=True, sync_dist=True)
        self.test_metrics.update(*self.metric_inputs(outputs, target))
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.finish_test()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
