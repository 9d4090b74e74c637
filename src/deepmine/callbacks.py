"""Lightning callbacks Lightning does not ship.

`StopOnNonFiniteLoss`: Lightning removed `terminate_on_nan`, and `EarlyStopping(check_finite)`
only watches its monitored metric (validation accuracy stays finite while the weights are NaN:
the argmax of NaN logits is class 0). A diverged run should fail loudly, be recorded FAILED
with the step where it happened, and in a sweep let the next job start instead of burning its
remaining epochs.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(pl.Callback):
    """Raise `NonFiniteLoss` when the training loss is NaN/inf.

    Checked every `check_every_n_steps` steps (each check is one host sync, so not every step)
    and on the epoch's mean loss at the end of every epoch, which catches a NaN in any step.
    """

    def __init__(self, check_every_n_steps: int = 50, metric: str = "train/loss_epoch"):
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.metric = metric

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.check_every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise NonFiniteLoss(
                f"training loss is {loss.item()} at step {trainer.global_step}: the run diverged "
                "(lower optimizer.lr, or add gradient clipping: trainer.gradient_clip_val=1.0)"
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
            raise NonFiniteLoss(
                f"{self.metric} is {value.item()} after epoch {trainer.current_epoch}: the run "
                "diverged (lower optimizer.lr, or add gradient clipping: "
                "trainer.gradient_clip_val=1.0)"
            )
