"""Forecasting (`task.py`) on the windows of a series, with its accuracy metrics
(`metrics.py`), classical reference forecasts on the same windows (`baselines.py`, no Lightning)
and its figure (`plots.py`)."""

from deepmine.tasks.forecasting.task import ForecastingTask

__all__ = ["ForecastingTask"]
