"""`launcher=ray`: every job of a sweep runs as a task on a Ray cluster.

deepmine's own launcher, written on Ray's public API (`ray.init`, `ray.remote`, `ray.get`), not
the PyPI plugin `hydra-ray-launcher`: that plugin needs cloudpickle<3, while joblib 1.6 (behind
`launcher=joblib`) needs cloudpickle>=3, so installing it breaks the joblib launcher.

Hydra imports every public module under `hydra_plugins` on every run, so this one imports
neither Ray nor the helpers that use it (`_cluster`, `_jobs`: Hydra's scan skips `_` modules):
a machine without Ray composes every other config, and `launcher=ray` there fails in one line.
No `from __future__ import annotations` here: Hydra's scan runs this module before it is in
`sys.modules`, where a dataclass with string annotations cannot resolve them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RayLauncherConf:
    """The options, documented in conf/launcher/ray.yaml."""

    _target_: str = "hydra_plugins.deepmine_launchers.ray_launcher.RayLauncher"
    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0


ConfigStore.instance().store(
    group="hydra/launcher", name="deepmine_ray", node=RayLauncherConf, provider="deepmine"
)


class RayLauncher(Launcher):
    """Joins the cluster when the sweep sets up (a wrong address or a request no node can
    hold fails before any run is opened), then runs each batch of jobs as Ray tasks."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0):
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra_plugins.deepmine_launchers._cluster import join

        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        join(self.address, self.num_cpus, self.num_gpus)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.deepmine_launchers._jobs import launch

        return launch(self, job_overrides, initial_job_idx)
