"""Sweeps: Hydra grids and Optuna searches recorded as MLflow parent/child runs.

The sweeper classes Hydra instantiates live in `hydra_plugins.deepmine_sweepers` (Hydra only
loads plugins from that namespace); they are thin and call into this package.
"""
