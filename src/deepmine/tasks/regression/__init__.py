"""Regression (`task.py`) of numeric targets, with its figures (`plots.py`)."""

from deepmine.tasks.regression.task import RegressionTask

__all__ = ["RegressionTask"]
