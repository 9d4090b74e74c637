"""Instantiate the parts of a run from a composed config: datamodule, net, task, callbacks,
trainer. Shared by train, eval and reproduce so the wiring exists once.

Before the net exists, the task and the data are checked against each other (a regression task
needs numeric targets) and the data config's shape keys left null are filled from the data
itself (`datamodule.shapes()`: a CSV's feature count is known only once it is read). The
filled values go into the config, so the run records the shapes it was built with.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, open_dict

from deepmine.errors import DeepmineError

#: data config keys that nets and tasks read by interpolation
SHAPE_KEYS = ("input_shape", "num_outputs", "num_classes", "num_targets", "horizon")


@dataclass
class Parts:
    datamodule: object
    task: object
    trainer: object


def checked_instantiate(config, **kwargs):
    """`hydra.utils.instantiate`, letting a `DeepmineError` raised by a constructor through as
    itself: Hydra wraps every constructor error in an `InstantiationException`, which would
    turn the one-line message (problem and fix) into a traceback."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(config, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DeepmineError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


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


def check_pairing(cfg: DictConfig) -> None:
    """Refuse a task and data of different target kinds (task=regression on images), reading
    only their classes: a plain `targets` key of the data config (a table serves classification
    and regression) wins over the class's, and `auto` becomes the task's kind. Then refuse
    augmentation of data without images (`check_augment`)."""
    task_targets = getattr(get_class(cfg.task._target_), "targets", None)
    configured = cfg.data.get("targets")
    if configured == "auto" and task_targets:
        with open_dict(cfg.data):
            cfg.data.targets = configured = task_targets
    data_targets = configured or getattr(get_class(cfg.data._target_), "targets", None)
    task_cls = get_class(cfg.task._target_)
    if (
        "target" in cfg.data
        and cfg.data.target is None
        and not getattr(task_cls, "labels_optional", False)
    ):
        raise DeepmineError(
            f"data.target=null: the task ({cfg.task._target_.rsplit('.', 1)[-1]}) learns from "
            "labels or values, and this table has none",
            "name the column to learn in data.target=<column>, or cluster it with "
            "task=clustering net=autoencoder task.num_clusters=<k>",
        )
    if task_targets and data_targets and task_targets != data_targets:
        raise DeepmineError(
            f"the task ({cfg.task._target_.rsplit('.', 1)[-1]}) learns from {task_targets} "
            f"targets but this data ({cfg.data._target_.rsplit('.', 1)[-1]}) has {data_targets} "
            "targets",
            _pairing_hint(task_targets),
        )
    check_augment(cfg)


def check_augment(cfg: DictConfig) -> None:
    """Refuse augmentation for data that has no images: an image data config reads the
    top-level `augment` key into its own (`augment: ${oc.select:augment,null}`), a table or a
    series has no such key, and its batches would silently go unaugmented."""
    if cfg.get("augment") is None or "augment" in cfg.data:
        return
    raise DeepmineError(
        "augment applies to image batches, but this data "
        f"({cfg.data._target_.rsplit('.', 1)[-1]}) has no images",
        "drop augment (augment=none), or use image data: data=fashion_mnist or data=digits",
    )


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


def check_batch_size(cfg: DictConfig, datamodule) -> None:
    """A batch size given on the command line that exceeds the training split is a typo, not
    a choice: every epoch would be one short batch. A config's default larger than a tiny
    data set (32 on 23 images) is left alone: that is full-batch descent on purpose."""
    from hydra.core.hydra_config import HydraConfig

    train = getattr(datamodule, "tensors", {}).get("train")
    size = cfg.data.get("batch_size")
    if train is None or not isinstance(size, int) or size <= len(train[0]):
        return
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    if not any(o.split("=", 1)[0].lstrip("+~") == "data.batch_size" for o in given):
        return
    n = len(train[0])
    raise DeepmineError(
        f"data.batch_size={size} is larger than the {n} training samples, so every epoch "
        "would be a single short batch",
        f"use at most {n}, e.g. data.batch_size={2 ** (n.bit_length() - 1)}",
    )


def _pairing_hint(task_targets: str) -> str:
    return {
        "class": "use task=classification with class-labelled data (fashion_mnist, digits, "
        "csv with data.targets=class)",
        "value": "use task=regression with data=diabetes or data=csv",
        "series": "use task=forecasting with a series (data=sunspots, co2, series_csv, ...)",
    }.get(task_targets, "pick a data config made for this task")


def build(cfg: DictConfig, extra_callbacks: list | tuple = (), datamodule=None) -> Parts:
    """Everything but the logger: a broken config fails here, before any run is opened.
    `extra_callbacks` come from the run's context, not its config (a sweep's pruning hook);
    `datamodule`, one `build_datamodule(cfg)` made already."""
    datamodule = datamodule if datamodule is not None else build_datamodule(cfg)
    task = build_task(cfg)
    callbacks = [*build_callbacks(cfg), *extra_callbacks]
    # with task.steps_per_call > 1 the task clips and accumulates itself (manual optimization,
    # which Lightning's Trainer refuses both options under); it read them from cfg.trainer
    handed_over = (
        {"gradient_clip_val": None, "accumulate_grad_batches": 1}
        if getattr(task, "steps_per_call", 1) > 1
        else {}
    )
    trainer = checked_instantiate(cfg.trainer, callbacks=callbacks, logger=False, **handed_over)
    return Parts(datamodule, task, trainer)
