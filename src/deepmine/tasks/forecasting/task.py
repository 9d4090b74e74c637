"""Forecasting: predict the next `horizon` steps of a series from the `lookback` steps before.

Metrics are MAE, RMSE, sMAPE and MASE in the series' units over every test window, step and
target (`deepmine.tasks.forecasting.metrics`). MASE divides by the one-step naive error of the
training part, so 1.0 is the in-sample naive forecast and scores compare across series.

A forecast means little without the simple methods beside it, so the test epoch also scores
the data config's baselines (naive, seasonal naive, ARIMA/ETS fitted on the training part
only) on exactly the windows the net was tested on, logs them in the same run as
`baseline/<name>/<metric>`, and says whether the net beat each on the monitored metric
(`beats/<name>`: 1 or 0; printed in the run's summary) and by how much (`skill/<name>`, the
relative improvement; `skill/best_baseline` against the strongest baseline, what a comparative
claim "beats every baseline" reads).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    SymmetricMeanAbsolutePercentageError,
)

from deepmine.errors import DeepmineError
from deepmine.tasks.forecasting.metrics import MeanAbsoluteScaledError, forecast_scores, naive_scale
from deepmine.tasks.scaled_targets import ScaledTargetsTask

#: what the net's forecast is relative to (`task.level`)
LEVELS = ("last", "none")


class PercentSMAPE(SymmetricMeanAbsolutePercentageError):
    """torchmetrics' sMAPE is the M4 ratio as a fraction (0..2); M4 and the baselines report
    percent (0..200)."""

    def compute(self) -> torch.Tensor:
        return 100.0 * super().compute()


class ForecastingTask(ScaledTargetsTask):
    """Logs `train|val|test/{loss,mae,rmse,...}`, `val/<monitor>_best`, `baseline/*` and
    `beats/*`; plots the test forecasts against the actual series with the baselines."""

    targets = "series"
    pairing_hint = "use task=forecasting with a series (data=sunspots, co2, series_csv, ...)"

    prediction_name = "forecast"

    def __init__(
        self,
        net: nn.Module,
        num_targets: int,
        horizon: int,
        optimizer,
        scheduler=None,
        loss: str = "mse",
        huber_delta: float = 1.0,
        level: str = "last",
        monitor: str = "mase",
        mode: str = "min",
        **steps,
    ):
        if level not in LEVELS:
            raise DeepmineError(
                f"task.level={level} is not one of {', '.join(LEVELS)}", "e.g. task.level=last"
            )
        self.horizon = horizon
        self.level = level
        super().__init__(
            net,
            num_targets,
            optimizer,
            scheduler,
            loss,
            huber_delta,
            monitor=monitor,
            mode=mode,
            **steps,
        )
        # MASE's scale (one-step naive MAE of the training part, per target): set from the data
        # when fitting, kept in the checkpoint for a later evaluation
        self.register_buffer("mase_scale", torch.ones(num_targets))
        # level=last: where each target column sits among the inputs, and the inputs'
        # normalization of those columns (to read the last observed value in the series' units)
        self.register_buffer("level_index", torch.zeros(num_targets, dtype=torch.long))
        self.register_buffer("level_mean", torch.zeros(num_targets))
        self.register_buffer("level_std", torch.ones(num_targets))
        self.test_forecasts: list[torch.Tensor] = []
        self.test_actuals: list[torch.Tensor] = []
        self.tested: tuple[torch.Tensor, torch.Tensor] | None = None
        self.baseline_forecasts: dict[str, torch.Tensor] = {}
        #: where the chronological split fell (`split_tags`), read from the data at setup
        self.split_tags: dict[str, str] = {}

    def make_metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "mae": MeanAbsoluteError(),
                "rmse": MeanSquaredError(squared=False),
                "smape": PercentSMAPE(),
                "mase": MeanAbsoluteScaledError(torch.ones(self.num_targets)),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """With `level=last` the net sees each window relative to its last step and predicts the
        change from the last observed value; the level is added back here, so the outputs are
        (standardized) levels as with `level=none` and everything downstream is the same."""
        if self.level == "none":
            return self.net(x)
        last = x[:, -1:, :]
        changes = self.to_targets(self.net(x - last))
        last_value = last[:, 0, self.level_index] * self.level_std + self.level_mean
        level = (last_value - self.target_mean) / self.target_std
        return (changes + level[:, None, :]).reshape(len(x), -1)

    def to_targets(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.reshape(len(outputs), self.horizon, self.num_targets)

    def metric_inputs(self, outputs: torch.Tensor, y: torch.Tensor):
        # val/test windows are strided views of one series tensor; torchmetrics flattens with
        # `view`, which needs contiguous memory
        return self.in_units(outputs), y.contiguous()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule if self.trainer else None
        if datamodule is not None and getattr(datamodule, "split_bounds", None) is not None:
            from deepmine.tasks.forecasting.split_tags import split_tags

            datamodule.setup()
            self.split_tags = split_tags(datamodule.time_index, datamodule.split_bounds)
        if stage == "fit" and datamodule is not None:
            datamodule.setup()
            train_stop = datamodule.split_bounds["train"][1]
            self.mase_scale.copy_(naive_scale(datamodule.target_series[:train_stop]))
            if self.level == "last":
                self._read_levels(datamodule)
        for metrics in (self.val_metrics, self.test_metrics):
            metrics["mase"].scale.copy_(self.mase_scale)

    def _read_levels(self, datamodule) -> None:
        missing = [c for c in datamodule.target_columns if c not in datamodule.input_columns]
        if missing:
            raise DeepmineError(
                f"task.level=last forecasts changes from the last observed value, but the "
                f"target column(s) {', '.join(missing)} are not among the inputs",
                "add them to data.input_columns, or use task.level=none",
            )
        index = [datamodule.input_columns.index(c) for c in datamodule.target_columns]
        self.level_index.copy_(torch.as_tensor(index))
        transform = datamodule.transform
        if transform is not None and transform.mean is not None:
            self.level_mean.copy_(torch.as_tensor(transform.mean).reshape(-1)[index])
            self.level_std.copy_(torch.as_tensor(transform.std).reshape(-1)[index])

    def train_state_sizes(self) -> dict[str, int]:
        return {"abs_error": self.num_targets, "sq_error": self.num_targets}

    def update_train_state(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        error = self.in_units(outputs) - y
        self.train_abs_error.add_(error.abs().sum((0, 1)))
        self.train_sq_error.add_(error.square().sum((0, 1)))

    def train_scores(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        steps = state["samples"].clamp_min(1).to(torch.float64) * self.horizon  # per target
        abs_error = state["abs_error"].to(torch.float64)
        return {
            "mae": (abs_error.sum() / (steps * self.num_targets)).float(),
            "rmse": (state["sq_error"].to(torch.float64).sum() / (steps * self.num_targets))
            .sqrt()
            .float(),
            "mase": (abs_error / steps / self.mase_scale.to(torch.float64)).mean().float(),
        }

    def on_test_batch(self, outputs: torch.Tensor, y: torch.Tensor) -> None:
        self.test_forecasts.append(self.in_units(outputs).detach().cpu())
        self.test_actuals.append(y.detach().cpu().contiguous())

    def finish_test(self) -> None:
        if not self.test_forecasts:
            return
        forecast, actual = torch.cat(self.test_forecasts), torch.cat(self.test_actuals)
        self.test_forecasts, self.test_actuals = [], []
        self.tested = (forecast, actual)
        datamodule = self.trainer.datamodule
        if datamodule is None or not getattr(datamodule, "baselines", None):
            return
        from deepmine.tasks.forecasting.baselines import baseline_forecasts

        # The windows the net was tested on: on one process the first `count` (all of them,
        # unless limit_test_batches cut some). Under DDP each rank holds a shard, so the net's
        # score is the test metric synced over ranks and the baselines take every window.
        count = len(forecast)
        scale = self.mase_scale.cpu()
        if self.trainer.world_size > 1:
            net = float(self.test_metrics[self.monitor].compute())
            actual, count = datamodule.tensors["test"][1].contiguous(), None
        else:
            net = forecast_scores(forecast, actual, scale)[self.monitor]
        skills = []
        for name, predicted in baseline_forecasts(datamodule).items():
            predicted = predicted[:count]
            self.baseline_forecasts[name] = predicted
            scores = forecast_scores(predicted, actual, scale)
            for metric, value in scores.items():
                self.log(f"baseline/{name}/{metric}", value)
            skill = self._skill(net, scores[self.monitor])
            skills.append(skill)
            self.log(f"skill/{name}", skill)
            self.log(f"beats/{name}", float(skill > 0))
        self.log("skill/best_baseline", min(skills))

    def _skill(self, net: float, baseline: float) -> float:
        """The net's relative improvement over a baseline on the monitored metric (a skill
        score: 0.25 = a quarter less error than the baseline; below 0: worse)."""
        gain = baseline - net if self.mode == "min" else net - baseline
        if baseline == 0:  # a perfect baseline: only a perfect net ties it
            return 0.0 if gain == 0 else float("-inf") if gain < 0 else float("inf")
        return gain / abs(baseline)

    def run_tags(self) -> dict[str, str]:
        """The first and last time and the step count of train, val and test."""
        return dict(self.split_tags)

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.tasks.forecasting.plots import forecast_png

        if self.tested is None or datamodule is None:
            return []
        forecast = self.tested[0]
        # this process's test windows: all of them, or rank 0's shard under DDP
        world = self.trainer.world_size if self._trainer is not None else 1
        origins = datamodule.window_origins["test"][::world][: len(forecast)]
        baselines = {k: v[::world][: len(forecast)] for k, v in self.baseline_forecasts.items()}
        return [
            forecast_png(
                datamodule.time_index,
                datamodule.target_series,
                origins,
                {"net": forecast, **baselines},
                folder / "forecast.png",
                f"{title} test forecasts",
                list(datamodule.target_names),
                bounds=datamodule.split_bounds,
            )
        ]

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        keys = ("test/mase", "test/rmse", "test/mae", "test/smape")
        lines = [f"{key:<14}{metrics.get(key, float('nan')):.4f}" for key in keys]
        monitor = f"test/{self.monitor}"
        for key in sorted(k for k in metrics if k.startswith("beats/")):
            name = key.removeprefix("beats/")
            base = metrics.get(f"baseline/{name}/{self.monitor}", float("nan"))
            verdict = "beats" if metrics[key] == 1.0 else "does not beat"
            lines.append(
                f"net {verdict} {name} on {monitor}: {metrics.get(monitor, float('nan')):.4f} "
                f"vs {base:.4f}"
            )
        return lines
