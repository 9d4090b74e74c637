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
  `summary_lines(metrics)`: its artifacts, tags and the lines `deepmine train` prints at the end.

The base owns the rest: optimizer/scheduler completion, the hot training step (one loss, one
state update, a running loss sum; `train/loss` only on the steps the logger writes),
validation and test loops, `val/<monitor>_best`, and keeping that best across a resume, and
`task.steps_per_call` (k batches per Lightning step, see `_init_steps_per_call`).

Why the on-device sums: on the seed MLP at batch 32 (0.32 ms a step by hand) one `self.log`
call cost about 0.5 ms in Lightning 2.6 (each call moves its whole result entry to the device
again) and a torchmetrics accuracy + F1 update 0.09 ms, against 0.007 ms for a `bincount` into
a buffer. Validation and test batches are few and large, so they keep torchmetrics.

The monitored metric and its direction (`monitor`, `mode` in conf/task/) belong to the task:
checkpointing, early stopping, `optimized_metric` and the sweepers' direction read them from
the task config by interpolation, so a regression run keeps its lowest RMSE, not its highest.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torchmetrics import MaxMetric, MetricCollection, MinMetric

from deepmine.errors import DeepmineError
from deepmine.runtime.callbacks import listens

MODES = ("max", "min")
#: what Lightning's manual optimization dispatches to the callbacks and the task on every
#: optimizer step (`_direct_dispatch`)
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class Task(pl.LightningModule):
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
        detached = loss.detach()
        self.update_train_state(outputs.detach(), target)
        self.train_loss_sum.add_(detached * len(y))
        self.train_samples.add_(len(y))
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            # the steps Lightning's logger connector writes; logging on the others is discarded
            if self.steps_per_call == 1:
                self.log("train/loss", detached, on_step=True, on_epoch=False, prog_bar=True)
            elif self._stepping:
                self._log_inner_step(detached)
        return loss

    # --- k optimizer steps per Lightning step (task.steps_per_call) -------------------------

    def _init_steps_per_call(
        self, steps_per_call: int, gradient_clip_val: float | None, accumulate_grad_batches: int
    ) -> None:
        """With `steps_per_call` k > 1 one Lightning training step pulls k batches from the loader
        itself (Lightning's `dataloader_iter` step) and runs k optimizer steps on them (one per
        accumulation group with `trainer.accumulate_grad_batches`) with manual optimization, so
        Lightning's per-step work (its loop, progress tracking, the logger connector, and of its
        hook dispatches 3 of the 6 callback hooks, each called on every callback, and 6 of the 11
        LightningModule hooks) is paid once per k batches. The backward and optimizer-step hooks
        stay per step, as manual optimization dispatches them; where nothing listens to them the
        inner steps skip the dispatch (`_direct_dispatch`).

        What keeps it exact: each batch goes through the same transfer hooks (augmentation
        included), the same `training_step` and the same zero_grad/backward/step as Lightning's
        automatic optimization; `global_step` counts optimizer steps either way; the logger's step
        counter advances once per optimizer step, so `train/loss` and the epoch metrics are logged
        at the same steps with the same values; epoch-interval schedulers step where Lightning would
        step them. Gradient clipping and accumulation (`trainer.gradient_clip_val`,
        `trainer.accumulate_grad_batches`), which Lightning's Trainer refuses under manual
        optimization, are done here as its automatic loop does them: the Trainer is built without
        them (`build`), each loss is scaled by 1/accumulate, gradients are zeroed on an accumulation
        group's first batch, and the optimizer steps, after clipping
        (`configure_gradient_clipping`), on the group's last batch or the epoch's last. One
        difference: under manual optimization Lightning dispatches `on_before_optimizer_step` inside
        `optimizer.step()`, so a hook listening there sees the gradients clipped."""
        if steps_per_call < 1:
            raise DeepmineError(
                f"task.steps_per_call={steps_per_call} is not a positive number of steps",
                "use task.steps_per_call=1 (Lightning's own loop) or more, e.g. 8",
            )
        self.steps_per_call = int(steps_per_call)
        self._direct_hooks = None  # decided when training starts (`_direct_dispatch`)
        #: whether the batch `training_step` is running ends with an optimizer step (an inner
        #: step of an accumulation group logs nothing, as in Lightning's automatic loop)
        self._stepping = True
        if self.steps_per_call == 1:
            return
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise DeepmineError(
                f"trainer.accumulate_grad_batches={accumulate_grad_batches} is not a positive "
                "number of batches",
                "use trainer.accumulate_grad_batches=1 (no accumulation) or more, e.g. 4",
            )
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val or None
        self.automatic_optimization = False
        # Lightning calls this step signature experimental; tests/test_steps_per_call.py pins
        # what deepmine relies on (same weights and metrics as Lightning's own loop)
        warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument")
        # its "batch_idx will not match" caveat does not apply: each inner batch passes the
        # transfer hooks with its own index (`_steps_per_call_step`)
        warnings.filterwarnings("ignore", message="You are using the `dataloader_iter` step")
        # Lightning picks the iterator-fed step by the signature of `training_step`; the
        # subclass's own `training_step` (one batch) stays what each inner step runs.
        self._one_step = self.training_step
        object.__setattr__(self, "training_step", self._steps_per_call_step)

    def _steps_per_call_step(self, dataloader_iter) -> torch.Tensor | None:
        """Up to `steps_per_call` batches from the loader, one optimizer step each (or one per
        accumulation group)."""
        trainer = self.trainer
        epoch_loop = trainer.fit_loop.epoch_loop
        optimizer = self.optimizers()
        group = self.accumulate_grad_batches
        # the logger's step counts optimizer steps, as in Lightning's automatic loop
        first_step, steps = epoch_loop._batches_that_stepped, 0
        loss_sum = None
        for _ in range(self.steps_per_call):
            if 0 <= trainer.max_steps <= self.global_step:
                break
            try:
                batch, batch_idx, _ = next(dataloader_iter)
            except StopIteration:
                break
            # Lightning's automatic loop: zero on a group's first batch, step on its last or
            # on the epoch's last (`dataloader_iter.done`: no batch left)
            zero = batch_idx % group == 0
            self._stepping = (batch_idx + 1) % group == 0 or dataloader_iter.done
            epoch_loop._batches_that_stepped = first_step + steps
            if self._direct_hooks is None:
                batch = trainer.precision_plugin.convert_input(batch)
                batch = self._on_before_batch_transfer(batch, dataloader_idx=0)
                batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
                loss = self._one_step(batch, batch_idx)
                if zero:
                    optimizer.zero_grad()
                # x / 1 == x bit for bit: without accumulation the division is skipped
                self.manual_backward(loss / group if group > 1 else loss)
                if self._stepping:
                    self._clip_gradients(optimizer.optimizer)
                    optimizer.step()
            else:  # the same hooks and steps, called without Lightning's dispatch
                for hook in self._direct_hooks:
                    batch = hook(batch)
                loss = self._one_step(batch, batch_idx)
                if zero:
                    optimizer.optimizer.zero_grad()
                (loss / group if group > 1 else loss).backward()
                if self._stepping:
                    optimizer._on_before_step()  # counts the step in global_step
                    self._clip_gradients(optimizer.optimizer)
                    optimizer.optimizer.step()
                    optimizer._on_after_step()
            steps += self._stepping
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        self._stepping = True
        # Lightning adds one to the logger's step after the call
        epoch_loop._batches_that_stepped = first_step + steps - 1
        if dataloader_iter.done:
            self._step_epoch_schedulers()
        return loss_sum

    def _clip_gradients(self, optimizer) -> None:
        """What Lightning's automatic loop does before an optimizer step with
        `trainer.gradient_clip_val` set: the task's `configure_gradient_clipping` hook, which
        clips by the trainer's `gradient_clip_algorithm` (norm unless set)."""
        if self.gradient_clip_val:
            self.configure_gradient_clipping(optimizer, self.gradient_clip_val, None)

    def _direct_dispatch(self) -> list[Callable] | None:
        """The batch hooks of an inner step as plain calls, or None where Lightning's dispatch
        must stay (see `_init_steps_per_call`).

        Lightning routes every hook call through `trainer/call.py` (a profiler context, the
        hook's name set on the module, a walk over every callback for the step hooks) and
        dispatches the backward and optimizer-step hooks on every optimizer step, even where
        every one of them is a no-op; skipping that took the seed MLP at batch 32, k=8, from
        1.43x to 1.35x the hand-written loop's epoch (CPU time, BENCHMARKS.md). Calling directly
        is the same computation when: one device (no gradient sync), plain float32 (no scaler,
        `convert_input` is the identity), no profiler (nobody reads its contexts), and neither
        a callback nor the task overrides `STEP_HOOKS` or `backward`. The batch hooks are then
        the ones Lightning itself would pick (the datamodule's where it overrides them, else
        the task's); moving CPU tensors to the CPU is skipped, as it returns them unchanged."""
        trainer = self.trainer
        if (
            type(trainer.strategy) is not SingleDeviceStrategy
            or type(trainer.precision_plugin) is not Precision
            or not isinstance(trainer.profiler, PassThroughProfiler)
            or type(self).backward is not pl.LightningModule.backward
        ):
            return None
        for hook in STEP_HOOKS:
            if getattr(type(self), hook) is not getattr(pl.LightningModule, hook):
                return None
            if any(listens(c, hook) for c in trainer.callbacks):
                return None
        selector = trainer._data_connector._datahook_selector
        before = selector.get_instance("on_before_batch_transfer").on_before_batch_transfer
        transfer_owner = selector.get_instance("transfer_batch_to_device")
        after = selector.get_instance("on_after_batch_transfer").on_after_batch_transfer
        device = trainer.strategy.root_device
        hooks = [lambda batch: before(batch, 0)]
        if device.type != "cpu" or is_overridden("transfer_batch_to_device", transfer_owner):
            transfer = transfer_owner.transfer_batch_to_device
            hooks.append(lambda batch: transfer(batch, device, 0))
        hooks.append(lambda batch: after(batch, 0))
        return hooks

    def _log_inner_step(self, loss: torch.Tensor) -> None:
        """`train/loss` of an inner step, written to the loggers at this optimizer step as
        Lightning's logger connector writes it with one step per batch (`self.log` keeps only
        the last value of a Lightning step); shown in the progress bar too."""
        self.trainer._logger_connector.log_metrics({"train/loss": loss})
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            logger=False,
            batch_size=1,
        )

    def _step_epoch_schedulers(self) -> None:
        """What Lightning's loop does for epoch-interval schedulers after an epoch's last batch
        under automatic optimization (under manual optimization it leaves them to the task)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()

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
