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


class RngStateInCheckpoint(pl.Callback):
    """Save the Python, NumPy and torch RNG states in every checkpoint and restore them when a
    run resumes from it, so an interrupted-then-resumed run draws the same dropout masks (and
    any other random numbers) as an uninterrupted one. Lightning saves no RNG state.

    Stored as plain Python/tensor values: checkpoints are loaded with `weights_only=True`,
    which refuses NumPy arrays.
    """

    KEY = "deepmine_rng"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint[self.KEY] = {
            "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import random

        import numpy as np

        state = checkpoint.get(self.KEY)
        if state is None:
            return
        random.setstate(state["python"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
