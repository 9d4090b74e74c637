"""Lightning callbacks Lightning does not ship.

`StopOnNonFiniteLoss`: Lightning removed `terminate_on_nan`, and `EarlyStopping(check_finite)`
only watches its monitored metric (validation accuracy stays finite while the weights are NaN:
the argmax of NaN logits is class 0). A diverged run should fail loudly, be recorded FAILED
with the step where it happened, and in a sweep let the next job start instead of burning its
remaining epochs.

`EpochTimer`: Lightning's `Timer` callback only keeps running totals per stage; comparing runs
(and frameworks, see benchmarks/) needs the wall time of each epoch.

`FoldedCallbacks`: deepmine's own callbacks reach Lightning as one (see `fold`).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from deepmine.runtime import timeline


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(pl.Callback):
    """Raise `NonFiniteLoss` when the training loss is NaN/inf.

    Every step's loss is added to a running sum on the device (no host sync; NaN and inf
    propagate through a sum); the sum is read every `check_every_n_steps` steps and at the end
    of every epoch, so a NaN in any step is caught within `check_every_n_steps` steps, without a
    sync on every step.
    """

    def __init__(self, check_every_n_steps: int = 50):
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._loss_sum: torch.Tensor | None = None
        self._block = 0  # global_step // check_every_n_steps at the last check

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._loss_sum = None
        self._block = trainer.global_step // self.check_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if self._loss_sum is None:
            self._loss_sum = loss.detach().sum().clone()
        else:
            self._loss_sum.add_(loss.detach().sum())
        # every time global_step reaches a multiple (it moves k steps at once under
        # task.steps_per_call=k)
        block = trainer.global_step // self.check_every_n_steps
        if block != self._block:
            self._block = block
            self._check(f"at or before step {trainer.global_step}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(f"in epoch {trainer.current_epoch}")

    def _check(self, where: str) -> None:
        if self._loss_sum is not None and not bool(torch.isfinite(self._loss_sum)):
            raise NonFiniteLoss(f"training loss became NaN/inf {where}: the run diverged")


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


class EpochTimer(pl.Callback):
    """Wall time of every training epoch, its validation pass included, logged as
    `time/epoch_s` and kept in `epoch_seconds` (written to the run's metrics.json)."""

    def __init__(self):
        self.epoch_seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        timeline.mark("first_step")
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self.epoch_seconds.append(seconds)
        # batch_size=1: logged as it is (and required under task.steps_per_call > 1)
        pl_module.log("time/epoch_s", seconds, on_step=False, on_epoch=True, batch_size=1)


#: every hook Lightning may call on a callback
HOOKS = tuple(
    name for name in dir(pl.Callback) if name.startswith("on_") or name in ("setup", "teardown")
)


def listens(callback: pl.Callback, hook: str) -> bool:
    """Whether `callback` does anything on `hook` (it is not the `pl.Callback` no-op)."""
    fn = getattr(callback, hook)
    return getattr(fn, "__func__", fn) is not getattr(pl.Callback, hook)


class FoldedCallbacks(pl.Callback):
    """Several stateless callbacks as one, each hook calling only the members that define it,
    in their order.

    Why: Lightning calls every hook of every callback on every step, each call in a profiler
    context named by the callback's `state_key`; six hooks a training step. Folded, deepmine's
    three default callbacks cost Lightning one dispatch per hook, and hooks none of them
    defines cost nothing past the `pl.Callback` no-op. Members keep their own config keys
    (`callbacks.<name>=null` drops one) and their checkpoint entries: members write
    checkpoints through `on_save_checkpoint` only (`fold` leaves a callback with a
    `state_dict` apart, since Lightning keys that by the callback's own `state_key`)."""

    def __init__(self, members: list[pl.Callback]):
        self.members = list(members)
        for hook in HOOKS:
            listeners = [getattr(m, hook) for m in self.members if listens(m, hook)]
            if listeners:
                setattr(self, hook, _fan_out(listeners))

    def find(self, kind: type) -> pl.Callback | None:
        return next((m for m in self.members if isinstance(m, kind)), None)


def _fan_out(listeners: list):
    if len(listeners) == 1:
        return listeners[0]

    def call_all(*args, **kwargs):
        for listener in listeners:
            listener(*args, **kwargs)

    return call_all


def fold(callbacks: list[pl.Callback]) -> list[pl.Callback]:
    """`callbacks` with deepmine's own stateless ones folded into one `FoldedCallbacks` at
    the place of the first; Lightning's callbacks stay as they are (the Trainer finds its
    checkpoint, early-stopping and progress-bar callbacks by their class)."""

    def foldable(callback) -> bool:
        own = type(callback).__module__ == __name__
        return own and type(callback).state_dict is pl.Callback.state_dict

    members = [c for c in callbacks if foldable(c)]
    if len(members) < 2:
        return list(callbacks)
    folded, result = FoldedCallbacks(members), []
    for callback in callbacks:
        if not foldable(callback):
            result.append(callback)
        elif callback is members[0]:
            result.append(folded)
    return result


def find_callback(callbacks: list[pl.Callback], kind: type) -> pl.Callback | None:
    """The callback of class `kind` among `callbacks`, folded or not."""
    for callback in callbacks:
        if isinstance(callback, kind):
            return callback
        if isinstance(callback, FoldedCallbacks) and (found := callback.find(kind)):
            return found
    return None
