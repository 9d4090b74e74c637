"""Regression: predict numeric targets; MAE, RMSE and R² in the data's units.

The training-epoch scores come from four on-device sums per target (absolute error, squared
error, target, squared target), from which MAE, RMSE and R² follow exactly at the epoch end.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from deepmine.tasks.scaled_targets import ScaledTargetsTask


class RegressionTask(ScaledTargetsTask):
    """Logs `train|val|test/{loss,mae,mse,rmse,r2}` and `val/<monitor>_best`; plots predicted vs
    actual and the residuals of the test split."""

    targets = "value"
    pairing_hint = "use task=regression with data=diabetes or data=csv"

    def __init__(self, *args, monitor: str = "rmse", mode: str = "min", **kwargs):
        super().__init__(*args, monitor=monitor, mode=mode, **kwargs)
        self.test_predictions: list[torch.Tensor] = []
        self.test_actuals: list[torch.Tensor] = []
        self.test_pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def make_metrics(self) -> MetricCollection:
        # RMSE over every (sample, target) value, R² averaged over targets (scikit-learn's
        # r2_score default), both as torchmetrics defines them
        return MetricCollection(
            {
                "mae": MeanAbsoluteError(),
                "mse": MeanSquaredError(),
                "rmse": MeanSquaredError(squared=False),
                "r2": R2Score(multioutput="uniform_average"),
            }
        )

    def metric_inputs(self, outputs: torch.Tensor, y: torch.Tensor):
        predicted = self.in_units(outputs)
        # R2Score reads a (N, 1) tensor as one output only when it is flat
        return (predicted.squeeze(1), y.squeeze(1)) if self.num_targets == 1 else (predicted, y)

    def train_state_sizes(self) -> dict[str, int]:
        return {name: self.num_targets for name in ("abs_error", "sq_error", "y_sum", "y_sq")}

    def update_train_state(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        error = self.in_units(outputs) - y
        self.train_abs_error.add_(error.abs().sum(0))
        self.train_sq_error.add_(error.square().sum(0))
        self.train_y_sum.add_(y.sum(0))
        self.train_y_sq.add_(y.square().sum(0))

    def train_scores(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = {k: v.to(torch.float64) for k, v in state.items()}
        n = s["samples"].clamp_min(1)
        total = s["y_sq"] - s["y_sum"].square() / n  # sum of squares about the mean
        r2 = 1 - s["sq_error"] / total.clamp_min(1e-12)
        return {
            "mae": (s["abs_error"].sum() / (n * self.num_targets)).float(),
            "mse": (s["sq_error"].sum() / (n * self.num_targets)).float(),
            "rmse": (s["sq_error"].sum() / (n * self.num_targets)).sqrt().float(),
            "r2": r2.mean().float(),
        }

    def on_test_batch(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        self.test_predictions.append(self.in_units(outputs).detach().cpu())
        self.test_actuals.append(y.detach().cpu())

    def finish_test(self) -> None:
        if self.test_predictions:
            self.test_pairs = (torch.cat(self.test_predictions), torch.cat(self.test_actuals))
        self.test_predictions, self.test_actuals = [], []

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.tasks.regression.plots import predicted_vs_actual_png, residuals_png

        if self.test_pairs is None:
            return []
        predicted, actual = (t.numpy() for t in self.test_pairs)
        names = list(getattr(datamodule, "target_names", ())) or None
        return [
            predicted_vs_actual_png(
                predicted, actual, folder / "predicted_vs_actual.png", f"{title} test", names
            ),
            residuals_png(predicted, actual, folder / "residuals.png", f"{title} test", names),
        ]

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        return [
            f"{key:<14}{metrics.get(key, float('nan')):.4f}"
            for key in ("test/rmse", "test/mse", "test/mae", "test/r2")
        ]
