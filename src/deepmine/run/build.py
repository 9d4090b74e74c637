"""Instantiate the parts of a run from a composed config: datamodule, net, task, callbacks,
trainer. Shared by train, eval and the DDP ranks so the wiring exists once.

Before the net exists, the task and the data are checked against each other (a regression task
needs numeric targets) and the data config's shape keys left null are filled from the data
itself (`datamodule.shapes()`: a CSV's feature count is known only once it is read). The
filled values go into the config, so the run records the shapes it was built with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import DictConfig, open_dict

from deepmine.config import checked_instantiate
from deepmine.run.checks import check_batch_size, check_pairing

#: data config keys that nets and tasks read by interpolation
SHAPE_KEYS = ("input_shape", "num_outputs", "num_classes", "num_targets", "horizon")


@dataclass
class Parts:
    datamodule: object
    task: object
    trainer: object


def build_task(cfg: DictConfig):
    net = checked_instantiate(cfg.net)
    optimizer = checked_instantiate(cfg.optimizer)
    scheduler = checked_instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return checked_instantiate(cfg.task, net=net, optimizer=optimizer, scheduler=scheduler)


def build_callbacks(cfg: DictConfig) -> list:
    """Callbacks are keyed by name in conf/callbacks/ so any one can be nulled.

    The learning-rate monitor runs only with a scheduler: without one the rate is the param
    `optimizer.lr`, and a constant `lr-<Optimizer>` curve would lead every run's metric list
    (and the UI's default parallel-coordinates plot) with nothing to see."""
    from deepmine.runtime.callbacks import fold

    callbacks = dict(cfg.get("callbacks") or {})
    if cfg.get("scheduler") is None:
        callbacks.pop("lr_monitor", None)
    # deepmine's own are folded into one callback (deepmine.runtime.callbacks.fold: fewer dispatches
    # per step), each still switched by its own key
    return fold([checked_instantiate(c) for c in callbacks.values() if c is not None])


def build_datamodule(cfg: DictConfig):
    """The datamodule, checked against the task, read (`setup`), with the config's null
    shapes filled in. Reading it here, before `deepmine train` opens its MLflow run, turns a
    bad file (a corrupt image, a broken table) into a one-line error with no run left
    behind; `trainer.fit` finds the splits already made."""
    check_pairing(cfg)
    datamodule = checked_instantiate(cfg.data)
    datamodule.setup()
    check_batch_size(cfg, datamodule)
    missing = [key for key in SHAPE_KEYS if key in cfg.data and cfg.data[key] is None]
    if missing:
        shapes = datamodule.shapes()
        with open_dict(cfg.data):
            for key in missing:
                cfg.data[key] = shapes.get(key)
    return datamodule


def build(cfg: DictConfig, extra_callbacks: list | tuple = (), datamodule=None) -> Parts:
    """Everything but the logger: a broken config fails here, before any run is opened.
    `extra_callbacks` come from the run's context, not its config (a sweep's pruning hook);
    `datamodule`, one `build_datamodule(cfg)` made already."""
    from deepmine.run import fast_path

    datamodule = datamodule if datamodule is not None else build_datamodule(cfg)
    callbacks = [*build_callbacks(cfg), *extra_callbacks]
    # task.steps_per_call=auto: k batches per step unless that would not be the same run
    steps = fast_path.resolve(cfg, callbacks)
    task = build_task(cfg)
    # with task.steps_per_call > 1 the task clips and accumulates itself (manual optimization,
    # which Lightning's Trainer refuses both options under); it read them from cfg.trainer
    handed_over = (
        {"gradient_clip_val": None, "accumulate_grad_batches": 1}
        if getattr(task, "steps_per_call", 1) > 1
        else {}
    )
    handed_over.update(fast_path.hand_training_batches(cfg, datamodule, steps))
    trainer = checked_instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        **handed_over,
        **_cluster_plugins(),
        **_ddp_by_name(cfg.trainer.get("strategy")),
    )
    return Parts(datamodule, task, trainer)


def _ddp_by_name(strategy) -> dict:
    """`trainer.strategy=ddp` (or `ddp_find_unused_parameters_true|false`) as a string gets
    deepmine's DDPStrategy, with the same settings Lightning's registry gives the name.

    Lightning would build its own DDPStrategy from the name, whose SIGTERM handler can hang rank
    0 (`deepmine.runtime.distributed.DDPStrategy`); how the strategy is spelled must not decide
    whether SIGTERM stops the run. Spawned and forked variants (`ddp_spawn`, `ddp_fork`, ...)
    are left to Lightning: deepmine does not start their ranks."""
    if not isinstance(strategy, str):
        return {}
    from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
    from lightning.pytorch.strategies import StrategyRegistry

    # (the registry's own `get` builds a strategy; its entries hold the class and settings)
    if strategy not in StrategyRegistry.available_strategies():
        return {}
    entry = StrategyRegistry[strategy]
    if not entry or entry["strategy"] is not LightningDDPStrategy:
        return {}
    settings = dict(entry["init_params"])
    if settings.pop("start_method", "popen") != "popen":
        return {}
    from deepmine.runtime.distributed import DDPStrategy

    return {"strategy": DDPStrategy(**settings)}


def _cluster_plugins() -> dict:
    """Inside a SLURM job, where the ranks come from, told to Lightning.

    - srun started them (or there is one): Lightning's SLURM environment, without its
      auto-requeue. deepmine handles the preemption signal itself, parking the MLflow run and
      resuming it from the epoch's checkpoint (`deepmine.run.preemption`); Lightning's own
      requeue would save a mid-epoch `hpc_ckpt` and load it silently on restart, from which no
      resumed run ends equal to an uninterrupted one.
    - deepmine started them in a one-task job (`trainer=ddp` without tasks_per_node): the
      environment deepmine set (LOCAL_RANK, WORLD_SIZE, ...), as outside SLURM. Lightning would
      otherwise read every rank's SLURM_PROCID, which is 0 in all of them.
    """
    from deepmine.runtime import slurm

    if slurm.job_id() is None:
        return {}
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    if "LOCAL_RANK" in os.environ and not slurm.started_ranks():
        # torchrun inside SLURM: Lightning finds it first of all (TorchElasticEnvironment)
        if "TORCHELASTIC_RUN_ID" in os.environ:
            return {}
        return {"plugins": [LightningEnvironment()]}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}
