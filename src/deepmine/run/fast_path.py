"""`task.steps_per_call=auto` (the default): k batches per Lightning step wherever that trains
the same weights and logs the same metrics as Lightning's own loop, one batch per step where it
would not, said in one line.

Why a default of 8 rather than 1: on the seed MLP at batch 32 Lightning's per-step work (its
loop, hook dispatch, fetch chain) cost 1.89x the hand-written loop's epoch at k=1 and 1.33x at
k=8, with bit-identical weights and metrics (tests/test_steps_per_call.py); every user should
get that without knowing the option. Past 8 the per-step share left is small next to the step
itself (BENCHMARKS.md, steps_per_call rows).

Where k > 1 is not the same run, `auto` is 1 and the run says why:
- a callback (or the task) acting on every training batch (`on_train_batch_start/end`): it
  would be called once per k batches. Lightning's and deepmine's own callbacks are known:
  progress bars only draw, the checkpoint and learning-rate monitor act per batch only with
  `every_n_train_steps`, `train_time_interval` or `logging_interval=step`, and deepmine's
  NaN check keeps its interval when steps jump by k;
- more than one device (DDP) or mixed precision: the k-batch loop is checked bit for bit on one
  device in float32 only;
- validation every N batches (`trainer.val_check_interval` other than 1.0), `overfit_batches`
  or `fast_dev_run`: Lightning counts those in its own steps.

With k > 1 the loader hands the training batches k at a time (`TensorBatches`' blocks) where it
can: the datamodule is a `TensorDataModule` and `trainer.limit_train_batches` is 1.0 or a count
(applied by the loader, since Lightning would count blocks). A fraction keeps one fetch per
batch, still k batches per step.
"""

from __future__ import annotations

import sys

from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

#: batches per Lightning step that `auto` picks
AUTO = 8
#: hooks Lightning calls once per Lightning step, i.e. once per k batches at k > 1
BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")
#: precisions the k-batch loop is checked bit for bit under
FULL_PRECISION = (None, 32, "32", "32-true")


def resolve(cfg: DictConfig, callbacks: list) -> int:
    """`cfg.task.steps_per_call` as a number, `auto` decided (see the module docstring) and
    written back into the config, so the run records what it ran; prints the reason when
    `auto` gives 1."""
    wanted = cfg.task.get("steps_per_call", 1)
    if wanted != "auto":
        return wanted
    reason = why_not(cfg, callbacks)
    steps = 1 if reason else AUTO
    if reason and _rank_zero():
        print(f"task.steps_per_call=auto is 1 (one batch per step): {reason}", file=sys.stderr)
    with open_dict(cfg.task):
        cfg.task.steps_per_call = steps
    return steps


def why_not(cfg: DictConfig, callbacks: list) -> str | None:
    """Why k batches per Lightning step would not be the same run as Lightning's loop, or
    None when they are."""
    trainer = cfg.trainer
    devices = trainer.get("devices", 1)
    strategy = trainer.get("strategy", "auto")
    if (
        devices not in (1, "1")
        or trainer.get("num_nodes", 1) != 1
        or strategy not in (None, "auto", "single_device")
    ):
        return "more than one device (DDP); set task.steps_per_call=8 to batch steps anyway"
    if trainer.get("precision", None) not in FULL_PRECISION:
        return f"trainer.precision={trainer.precision} is checked with one batch per step only"
    interval = trainer.get("val_check_interval", 1.0)
    if interval not in (None, 1.0):
        return f"trainer.val_check_interval={interval} counts Lightning steps, not batches"
    for key in ("overfit_batches", "fast_dev_run"):
        if trainer.get(key):
            return f"trainer.{key} counts Lightning steps, not batches"
    for callback in _members(callbacks):
        hook = per_batch_hook(callback)
        if hook:
            return (
                f"callback {type(callback).__name__} acts on every training batch ({hook}); "
                "set task.steps_per_call=8 to call it once per 8 batches"
            )
    task_class = get_class(cfg.task._target_)
    import lightning.pytorch as pl

    for hook in BATCH_HOOKS:
        if getattr(task_class, hook) is not getattr(pl.LightningModule, hook):
            return f"{task_class.__name__} acts on every training batch ({hook})"
    return None


def per_batch_hook(callback) -> str | None:
    """The batch hook `callback` acts on once per Lightning step, or None (see the module
    docstring for the callbacks known not to)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

    from deepmine.runtime.callbacks import StopOnNonFiniteLoss, listens

    if isinstance(callback, ProgressBar | StopOnNonFiniteLoss):
        return None
    if isinstance(callback, ModelCheckpoint):
        timed = callback._every_n_train_steps or callback._train_time_interval
        return "on_train_batch_end: every_n_train_steps/train_time_interval" if timed else None
    if isinstance(callback, LearningRateMonitor):
        step = callback.logging_interval != "epoch"
        return "on_train_batch_start: logging_interval" if step else None
    return next((hook for hook in BATCH_HOOKS if listens(callback, hook)), None)


def hand_training_batches(cfg: DictConfig, datamodule, steps: int) -> dict:
    """Ask the datamodule for blocks of `steps` batches where it can (module docstring); the
    Trainer arguments that go with it (the batch limit moves to the loader)."""
    if steps == 1 or not hasattr(datamodule, "train_in_blocks"):
        return {}
    limit = cfg.trainer.get("limit_train_batches", None)
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        datamodule.train_in_blocks(steps, None)
        return {}
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        datamodule.train_in_blocks(steps, limit)
        # (Lightning logs that it was "configured" to use every batch: it is the loader's count)
        return {"limit_train_batches": 1.0}
    return {}


def _members(callbacks: list) -> list:
    """Callbacks with deepmine's folded ones unfolded (`deepmine.runtime.callbacks.fold`)."""
    out = []
    for callback in callbacks:
        out.extend(getattr(callback, "members", None) or [callback])
    return out


def _rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
