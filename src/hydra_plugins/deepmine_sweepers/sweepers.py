"""Hydra sweeper plugins: thin shells around `deepmine.sweeps`.

Hydra discovers plugins by importing every module under `hydra_plugins`, on every run, so this
module imports nothing heavy; the work happens in `deepmine.sweeps.grid` and
`deepmine.sweeps.optuna_search`.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class GridSweeper(BasicSweeper):
    """Hydra's grid (same expansion as the basic sweeper), recorded as an MLflow parent run,
    with failed jobs isolated and summarized instead of ending the sweep."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        direction: str = "maximize",
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.direction = direction

    def sweep(self, arguments: list[str]) -> Any:
        from deepmine.sweeps.grid import run_grid

        return run_grid(self, arguments)


class OptunaSweeper(Sweeper):
    """An Optuna search over Hydra sweep syntax with a persistent, resumable study."""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = OmegaConf.create(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from deepmine.sweeps.optuna_search import run_search

        return run_search(self, arguments)
