"""Forecasting helpers that need no Lightning: accuracy metrics and reference forecasts
(baselines) on the windows of a `SeriesDataModule`."""
