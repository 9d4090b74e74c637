"""The project's Hydra config tree as a library, for every layer that needs it outside a Hydra
app: deepmine's resolvers (`${deepmine.project_root:}` anchors every path, `${deepmine.direction:}`
maps a task's mode to a sweeper's direction), composing conf/train.yaml (`compose_train`) and
instantiating with deepmine's one-line errors intact (`checked_instantiate`).

A shared basic at the package root: the data layer (image export), tracking (the default store)
and the commands all compose the same tree the same way.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from deepmine.errors import DeepmineError
from deepmine.project import project_root


def register_resolvers() -> None:
    """Register deepmine's OmegaConf resolvers (idempotent)."""
    if not OmegaConf.has_resolver("deepmine.project_root"):
        OmegaConf.register_new_resolver("deepmine.project_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("deepmine.direction"):
        # a task's mode (Lightning's max|min) as a sweeper direction (Optuna's maximize|minimize)
        OmegaConf.register_new_resolver("deepmine.direction", direction)


def direction(mode: str) -> str:
    """`max` -> `maximize`, `min` -> `minimize`: one vocabulary in conf/task/, two libraries."""
    directions = {"max": "maximize", "min": "minimize"}
    if mode not in directions:
        raise DeepmineError(f"task.mode={mode} is not max or min", "use task.mode=max|min")
    return directions[mode]


def checked_instantiate(config, **kwargs):
    """`hydra.utils.instantiate`, letting a `DeepmineError` raised by a constructor through as
    itself: Hydra wraps every constructor error in an `InstantiationException`, which would
    turn the one-line message (problem and fix) into a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DeepmineError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def compose_train(overrides: list[str] | tuple[str, ...] = ()):
    """conf/train.yaml composed with `overrides`, outside any Hydra run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deepmine.project import config_dir

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
