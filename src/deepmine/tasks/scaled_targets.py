"""The part regression and forecasting share: numeric targets, learned standardized.

Targets arrive in the data's own units (disease progression, sunspot counts, ppm of CO2). The
net learns `(y - mean) / std` with the mean and std of the training split only
(`datamodule.target_scaler`), so one learning rate fits every dataset whatever its units; the
metrics, plots and baselines see predictions turned back into the data's units. The scaler is
kept in the checkpoint (persistent buffers): a model evaluated later de-standardizes with the
statistics it was trained with, not with whatever the data says then.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepmine.errors import DeepmineError
from deepmine.tasks.base import Task

#: training losses by name (`task.loss`), on standardized targets
LOSSES: dict[str, Callable[[float], nn.Module]] = {
    "mse": lambda delta: nn.MSELoss(),
    "l1": lambda delta: nn.L1Loss(),
    "huber": lambda delta: nn.HuberLoss(delta=delta),
}


class ScaledTargetsTask(Task):
    """A task over float targets of `num_targets` columns; `to_targets` reshapes the net's
    flat outputs into the target layout (regression: `(B, T)`, forecasting: `(B, H, T)`)."""

    #: the name of its predictions among `deepmine.run.pipeline.OUTPUTS`
    prediction_name = "values"

    def __init__(
        self,
        net: nn.Module,
        num_targets: int,
        optimizer,
        scheduler=None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        monitor: str = "rmse",
        mode: str = "min",
        **steps,
    ):
        if loss not in LOSSES:
            raise DeepmineError(
                f"task.loss={loss} is not one of {', '.join(LOSSES)}", "e.g. task.loss=huber"
            )
        self.num_targets = num_targets  # make_metrics, called by the base, may need it
        super().__init__(net, optimizer, scheduler, monitor, mode, **steps)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss](huber_delta)
        self.register_buffer("target_mean", torch.zeros(num_targets))
        self.register_buffer("target_std", torch.ones(num_targets))

    def to_targets(self, outputs: torch.Tensor) -> torch.Tensor:
        """The net's outputs in the layout of `y` (still standardized)."""
        return outputs.reshape(len(outputs), self.num_targets)

    def setup(self, stage: str) -> None:
        # Fitting takes the scaler of this data's training split; testing a trained model keeps
        # the one restored from its checkpoint.
        scaler = getattr(self.trainer.datamodule, "target_scaler", None) if self.trainer else None
        if stage == "fit" and scaler is not None:
            mean, std = scaler
            self.target_mean.copy_(mean.reshape(-1))
            self.target_std.copy_(std.reshape(-1))

    def standardized(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def in_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predictions in the data's units, in the layout of `y`."""
        return self.to_targets(outputs) * self.target_std + self.target_mean

    def predict_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.prediction_name: self.in_units(self(x))}

    def compute_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.to_targets(outputs), self.standardized(y))

    def metric_inputs(self, outputs: torch.Tensor, y: torch.Tensor):
        return self.in_units(outputs), y
