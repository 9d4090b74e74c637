"""Every check made before a run exists, in one place: each command (train, eval, the runs that
reproduce starts) calls these before it opens an MLflow run, so bad input ends in one line naming
the problem and the fix, and leaves no run behind.

- the command line: override types against the config's defaults, the seed, values no run can
  use (`check_override_types`, `check_seed`, `check_values`), `register=` (`check_register`);
- the pairing of task and data: target kinds, augmentation of images only, a batch size larger
  than the data (`check_pairing`, `check_augment`, `check_batch_size`);
- the data itself: DVC-tracked data against data.dvc, a user's own file or folder made absolute
  and fingerprinted (`verify_data`).

It is one module on purpose (the reader of a run's start finds every refusal here), hence its
length.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from deepmine.errors import DeepmineError
from deepmine.runtime import timeline

#: the reference configs `check_override_types` composed, for the Hydra config loader in use
_references: dict = {}


def check_override_types(cfg: DictConfig, config_name: str, overrides: list[str]) -> None:
    """Refuse a command-line value whose type differs from the config's default.

    The reference is the same config composed with only the group choices of `overrides`
    (so `net=cnn trainer.max_epochs=x` is checked against cnn's defaults). A number where a
    number was expected is fine (int for a float too); a string, a list or a float where an
    int was expected is refused with the key, the value and the expected type.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    loader = GlobalHydra.instance().config_loader()

    # what this loader answered is kept for the next job: a sweep over values (seed=0,1,2,3)
    # would otherwise list the same groups and compose the same reference for every job
    # (0.1-0.2 s each)
    if _references.get("loader") is not loader:
        _references.clear()
        _references["loader"] = loader

    def is_group(override) -> bool:
        name = override.key_or_group.split("@")[0]
        if ("group", name) not in _references:
            _references["group", name] = bool(loader.get_group_options(name))
        return _references["group", name]

    value_overrides = [o for o in parsed if not is_group(o) and not o.is_delete()]
    if not value_overrides:
        return
    group_overrides = [o.input_line for o in parsed if is_group(o)]
    key = (config_name, tuple(group_overrides))
    if key not in _references:
        _references[key] = hydra.compose(config_name, overrides=group_overrides)
    reference = _references[key]
    for override in value_overrides:
        key = override.key_or_group
        if key.startswith("hydra."):
            continue
        expected = OmegaConf.select(reference, key, default=None, throw_on_missing=False)
        actual = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        problem = _type_mismatch(expected, actual, key)
        if problem:
            raise DeepmineError(
                f"{key}={override.value()!r} is not valid: {problem}",
                f"give {key} a value of that type, e.g. {key}={expected!r}",
            )


# Keys where a count (int) and a fraction (float) are both valid: Lightning's limit_*_batches,
# val_check_interval and overfit_batches, and a data split's size.
_COUNT_OR_FRACTION = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "val_check_interval",
    "overfit_batches",
    "val_size",
)


def _type_mismatch(expected: object, actual: object, key: str = "") -> str | None:
    if expected is None or actual is None:
        return None
    if key.rsplit(".", 1)[-1] in _COUNT_OR_FRACTION and not isinstance(expected, bool):
        ok = isinstance(actual, int | float) and not isinstance(actual, bool)
        return None if ok else "expected a count or a fraction"
    if isinstance(expected, bool):
        return None if isinstance(actual, bool) else "expected true or false"
    if isinstance(expected, int):
        if isinstance(actual, bool) or not isinstance(actual, int):
            return "expected an integer"
        return None
    if isinstance(expected, float) and (
        isinstance(actual, bool) or not isinstance(actual, int | float)
    ):
        return "expected a number"
    return None


def check_seed(cfg: DictConfig) -> int:
    """The seed is an int, never null: a run without a seed cannot be reproduced. NumPy takes
    seeds in [0, 2**32) only, and says so in a long traceback."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DeepmineError(
            f"seed must be an integer, got {seed!r}", "pass an integer, e.g. seed=42 (0 is valid)"
        )
    if not 0 <= seed < 2**32:
        raise DeepmineError(
            f"seed={seed} is outside [0, 2**32), the seeds NumPy accepts",
            "pass a non-negative integer below 4294967296, e.g. seed=42",
        )
    return seed


#: Values a config can check before any run exists, so a bad one never opens and fails a run:
#: (key, valid, what it must be, an example). A key missing from the config is not checked.
_VALUE_RULES = (
    ("trainer.max_epochs", lambda v: v == -1 or v >= 1, "at least 1 (or -1: no limit)", "5"),
    ("trainer.min_epochs", lambda v: v >= 0, "0 or more", "1"),
    ("data.batch_size", lambda v: v >= 1, "at least 1", "32"),
    ("data.eval_batch_size", lambda v: v >= 1, "at least 1", "512"),
    ("optimizer.lr", lambda v: v > 0, "a positive number", "0.001"),
    ("optimizer.weight_decay", lambda v: v >= 0, "0 or more", "0.0001"),
)


def check_values(cfg: DictConfig) -> None:
    """Refuse numbers no run can use (a zero batch size, a negative learning rate, zero
    epochs) in one line naming the key, instead of a failure after the run is open."""
    for key, valid, needed, example in _VALUE_RULES:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, int | float) and not isinstance(value, bool) and not valid(value):
            raise DeepmineError(
                f"{key}={value} is not valid: it must be {needed}",
                f"set it to such a value, e.g. {key}={example}",
            )


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
            getattr(task_cls, "pairing_hint", "pick a data config made for this task"),
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


def verify_data(cfg: DictConfig) -> dict[str, str]:
    """Check DVC-tracked data against data.dvc; return the data tags for the run."""
    from deepmine.data.version import DVC_FILE, check, pull_command, read_pin

    root = Path(cfg.paths.root_dir)
    data_cls = hydra.utils.get_class(cfg.data._target_)  # the first import of torch/lightning
    timeline.mark("imported")
    check_pairing(cfg)  # before anything reads the task's shape keys from the wrong data
    tracked = bool(getattr(data_cls, "dvc_tracked", False))
    tags = {}
    if cfg.data.get("path"):
        tracked, tags = _user_file(cfg, root)
    elif cfg.data.get("root"):
        tracked, tags = _user_folder(cfg, root)
    tags["deepmine.data.dvc_tracked"] = str(tracked).lower()
    if (root / DVC_FILE).is_file():
        tags["deepmine.data.md5"] = read_pin(root).md5
    if not tracked:
        return tags
    state = check(root)
    if not state.present:
        raise DeepmineError(f"{root / 'data'} is missing", f"run `{pull_command(root)}`")
    tags["deepmine.data.matches"] = str(state.matches).lower()
    if not state.matches:
        changed = ", ".join(state.changed)
        if not cfg.get("allow_data_mismatch"):
            raise DeepmineError(
                f"data/ does not match data.dvc: {changed}",
                f"run `{pull_command(root, force=True)}` to restore the pinned version, or pass "
                "allow_data_mismatch=true to train on it anyway (the run is tagged)",
            )
        tags["deepmine.data.changed"] = changed
        tags["deepmine.data.mismatch_allowed"] = "true"
    return tags


def _user_file(cfg: DictConfig, root: Path) -> tuple[bool, dict[str, str]]:
    """A data file the user names (`data.path`, e.g. a CSV): made absolute in the config, so
    the recorded run does not depend on the directory it was started from. Inside `data/` it
    is versioned by DVC like every file there; outside, the run records its path and MD5."""
    from deepmine.data.csv_table import resolve
    from deepmine.data.tables import file_md5
    from deepmine.data.version import DATA_DIR

    path = resolve(cfg.data.path)
    if not path.is_file():
        raise DeepmineError(
            f"data.path={cfg.data.path}: {path} does not exist",
            "point data.path at a CSV file (relative to the current directory or the project)",
        )
    cfg.data.path = str(path)
    if path.is_relative_to((root / DATA_DIR).resolve()):
        return True, {}
    return False, {"deepmine.data.csv.path": str(path), "deepmine.data.csv.md5": file_md5(path)}


def _user_folder(cfg: DictConfig, root: Path) -> tuple[bool, dict[str, str]]:
    """An image folder the user names (`data.root`), as `_user_file` treats a file: absolute in
    the config; inside `data/` versioned by DVC, elsewhere recorded by its path and content hash
    (`folder_hash`: every image's relative path, size and MD5)."""
    from deepmine.data.csv_table import resolve
    from deepmine.data.image_folder import folder_hash
    from deepmine.data.version import DATA_DIR

    path = resolve(cfg.data.root)
    if not path.is_dir():
        raise DeepmineError(
            f"data.root={cfg.data.root}: {path} is not a folder",
            "point data.root at a folder of class folders of images (relative to the current "
            "directory or the project)",
        )
    cfg.data.root = str(path)
    if path.is_relative_to((root / DATA_DIR).resolve()):
        return True, {}
    return False, {
        "deepmine.data.image_folder.root": str(path),
        "deepmine.data.image_folder.hash": folder_hash(path),
    }


def check_register(cfg: DictConfig) -> None:
    """`+register=<name>` is `logger.register=<name>` (moved there, so the run's params and
    group do not depend on which was typed); refused before any run exists when it cannot be
    honoured."""
    from omegaconf import open_dict

    name = cfg.get("register")
    if "register" in cfg:
        with open_dict(cfg):
            del cfg["register"]
    if not cfg.get("logger"):
        if name is not None:
            raise DeepmineError(
                "register=<name> registers the run's model in MLflow, and logger=none records "
                "nothing",
                "drop logger=none, or drop +register",
            )
        return
    if name is None:
        name = cfg.logger.get("register")
    if name is None:
        return
    name = str(name)
    if not name.strip() or "/" in name or ":" in name:
        raise DeepmineError(
            f"register={name!r} is not a model name (MLflow refuses empty names and '/' or ':')",
            "name the model plainly, e.g. +register=fashion_cnn",
        )
    if not cfg.logger.get("log_model", True):
        raise DeepmineError(
            f"register={name} registers the run's model, and logger.log_model=false logs none",
            "drop logger.log_model=false",
        )
    with open_dict(cfg):
        cfg.logger.register = name
