"""`task.steps_per_call`: k batches per Lightning training step, a mixin of every `Task`.

Kept apart from the task contract (`deepmine.tasks.base`) because it is a loop, not something a
task says: it reaches into Lightning's fit loop (the `dataloader_iter` step, the logger's step
counter, the hook dispatch) to pay Lightning's per-step cost once per k batches with the same
weights and metrics bit for bit. `_init_steps_per_call` explains how.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from deepmine.errors import DeepmineError
from deepmine.runtime.callbacks import listens

#: what Lightning's manual optimization dispatches to the callbacks and the task on every
#: optimizer step (`_direct_dispatch`)
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class StepsPerCall:
    """k optimizer steps per Lightning step; mixed into `Task` before `LightningModule`."""

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
        if steps_per_call == "auto":
            # decided by `deepmine.run.fast_path` before a run trains; a task built only to
            # evaluate or predict (from a config saying auto) never runs the training loop
            steps_per_call = 1
        if not isinstance(steps_per_call, int) or steps_per_call < 1:
            raise DeepmineError(
                f"task.steps_per_call={steps_per_call} is not a positive number of steps",
                "use task.steps_per_call=auto (the default), 1 (Lightning's own loop) or more, "
                "e.g. 8",
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
        accumulation group): one `BatchBlock` where the loader hands blocks (one fetch through
        Lightning's chain for the k batches), else k fetches of one batch."""
        trainer = self.trainer
        epoch_loop = trainer.fit_loop.epoch_loop
        optimizer = self.optimizers()
        group = self.accumulate_grad_batches
        # the logger's step counts optimizer steps, as in Lightning's automatic loop
        first_step, steps = epoch_loop._batches_that_stepped, 0
        # optimizer steps left before trainer.max_steps (-1: no limit), counted here rather
        # than read from the trainer on every batch
        left = trainer.max_steps - self.global_step if trainer.max_steps >= 0 else -1
        direct = self._direct_hooks
        loss_sum = None
        taken = 0
        while taken < self.steps_per_call and steps != left:
            try:
                item, index, _ = next(dataloader_iter)
            except StopIteration:
                break
            # a block (`deepmine.data.batches.BatchBlock`) says where it starts; the task layer
            # knows it by that attribute only (tasks never import the data layer)
            first = getattr(item, "first", None)
            batches, first = (item, first) if first is not None else ((item,), index)
            taken += len(batches)
            last_item = dataloader_iter.done
            for offset, batch in enumerate(batches):
                if steps == left:
                    break
                batch_idx = first + offset
                # Lightning's automatic loop: zero on a group's first batch, step on its last
                # or on the epoch's last (no batch left)
                zero = batch_idx % group == 0
                self._stepping = (batch_idx + 1) % group == 0 or (
                    last_item and offset == len(batches) - 1
                )
                epoch_loop._batches_that_stepped = first_step + steps
                if direct is None:
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
                    for hook in direct:
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
