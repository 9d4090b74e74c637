"""Where the project lives: the folder holding `conf/`, `data.dvc` and the default MLflow store.

deepmine is used from a checkout (installed editable), so the project root is the checkout that
holds this package; `DEEPMINE_ROOT` points elsewhere, e.g. at a copy used by a test. Every path
derived from it is absolute, so no command depends on the current directory.
"""

import os
from pathlib import Path

_SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The project root: `$DEEPMINE_ROOT` if set, else the checkout this package sits in."""
    env = os.environ.get("DEEPMINE_ROOT")
    return Path(env).resolve() if env else _SOURCE_CHECKOUT


def config_dir() -> Path:
    """The Hydra config tree. It always comes from the source checkout: configs are code."""
    return _SOURCE_CHECKOUT / "conf"


def experiments_dir() -> Path:
    """Executable claims (`experiment=<name>`), kept beside conf/ at the top of the project."""
    return _SOURCE_CHECKOUT / "experiments"
