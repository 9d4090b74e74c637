"""Instantiate the parts of a run from a composed config: datamodule, net, task, callbacks,
trainer. Shared by train, eval and reproduce so the wiring exists once."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig


@dataclass
class Parts:
    datamodule: object
    task: object
    trainer: object


def build_task(cfg: DictConfig):
    net = instantiate(cfg.net)
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate(cfg.task, net=net, optimizer=optimizer, scheduler=scheduler)


def build_callbacks(cfg: DictConfig) -> list:
    """Callbacks are keyed by name in conf/callbacks/ so any one can be nulled."""
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build(cfg: DictConfig, extra_callbacks: list | tuple = ()) -> Parts:
    """Everything but the logger: a broken config fails here, before any run is opened.
    `extra_callbacks` come from the run's context, not its config (a sweep's pruning hook)."""
    datamodule = instantiate(cfg.data)
    task = build_task(cfg)
    callbacks = [*build_callbacks(cfg), *extra_callbacks]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    return Parts(datamodule, task, trainer)
