"""Config plumbing that Hydra leaves to the application.

- registers the `${deepmine.project_root:}` resolver that anchors every path;
- turns Hydra/OmegaConf composition errors into one line that names the problem and the fix;
- checks the *types* of command-line overrides: Hydra accepts `trainer.max_epochs=abc` and the
  mistake would surface much later inside Lightning, after a run was opened.
"""

from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig, OmegaConf

from deepmine.errors import INTERRUPTED, DeepmineError, first_line
from deepmine.project import project_root

_CONFIG_GROUPS = (
    "data",
    "net",
    "task",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "debug",
    "paths",
    "hydra",
    "local",
)


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


def describe_error(exc: BaseException) -> str | None:
    """One line for a Hydra/OmegaConf composition error, or None if `exc` is not one."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, InstantiationException):
        # a constructor refused its arguments (e.g. a net given a shape it cannot read)
        cause = exc.__cause__ or exc
        key = re.search(r"full_key: (\S+)", str(exc))
        where = key.group(1) if key else "the config"
        return (
            f"cannot build {where}: {type(cause).__name__}: {first_line(cause)}. Fix: change "
            f"the {where}.* options (or the {where}= choice) as the message says"
        )
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", str(exc))
        missing = found.group(1) if found else str(exc.missing_cfg_file)
        group, _, option = missing.rpartition("/")
        options = sorted(exc.options or [])
        if group and options:
            hint = difflib.get_close_matches(option, options, n=1)
            example = f"{group}={hint[0] if hint else options[0]}"
            return (
                f"unknown option '{option}' for config group '{group}' "
                f"(available: {', '.join(options)}). Fix: pick one of them, e.g. {example}"
            )
        return f"config '{missing}' not found. Fix: check the name against conf/"
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        key = getattr(cause, "full_key", None)
        if key and "not in struct" in str(cause):
            return f"unknown config key '{key}'. Fix: {_nearest_key(cause, key)}"
        return _first_lines(str(exc))
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {_first_lines(str(exc))}. Fix: see `deepmine train --help`"
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        where = f" at '{key}'" if key else ""
        return f"invalid config{where}: {_first_lines(str(exc))}"
    return None


def _nearest_key(cause, key: str) -> str:
    """The fix for an unknown key: the closest existing key of the same node, with the value
    the command line gave (`trainer.epochs=3` -> e.g. trainer.max_epochs=3)."""
    import sys

    parent, _, name = key.rpartition(".")
    node = getattr(cause, "parent_node", None)
    known = [str(k) for k in node] if node is not None and hasattr(node, "keys") else []
    given = next(
        (a.split("=", 1)[1] for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") == key),
        "...",
    )
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    # among equally close keys the one the config sets is meant, and an unqualified count
    # (epochs, steps) means the limit: trainer.epochs -> max_epochs, not min_epochs
    close.sort(
        key=lambda k: (
            -difflib.SequenceMatcher(None, name, k).ratio(),
            node.get(k) is None,
            not k.startswith("max_"),
        )
    )
    if not close:
        close = [k for k in known if name in k or k in name][:1]
    new_key = f"add a new key on purpose with +{key}={given}"
    if close:
        nearest = f"{parent}.{close[0]}" if parent else close[0]
        return f"did you mean {nearest}? drop {key} and pass e.g. {nearest}={given} (or {new_key})"
    return f"check the spelling against `deepmine train --cfg job`, or {new_key}"


def _first_lines(text: str) -> str:
    """Join the meaningful lines of a multi-line library message into one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type", "See https"))]
    return " ".join(lines)


def check_override_types(cfg: DictConfig, config_name: str, overrides: list[str]) -> None:
    """Refuse a command-line value whose type differs from the config's default.

    The reference is the same config composed with only the group choices of `overrides`
    (so `net=cnn trainer.max_epochs=x` is checked against cnn's defaults). A number where a
    number was expected is fine (int for a float too); a string, a list or a float where an
    int was expected is refused with the key, the value and the expected type.
    """
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    loader = GlobalHydra.instance().config_loader()

    def is_group(override) -> bool:
        name = override.key_or_group.split("@")[0]
        return bool(loader.get_group_options(name))

    value_overrides = [o for o in parsed if not is_group(o) and not o.is_delete()]
    if not value_overrides:
        return
    group_overrides = [o.input_line for o in parsed if is_group(o)]
    reference = hydra.compose(config_name, overrides=group_overrides)
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


def report_errors(task):
    """Decorate a Hydra task so errors are reported in one line.

    A single run reports a `DeepmineError` and exits: Hydra catches a task's exceptions and
    prints "Error executing job with overrides: ..." before re-raising; `SystemExit` passes
    through it untouched, so the one-line report happens here. Lightning ends a Ctrl-C'd fit
    with `sys.exit(1)`; that becomes exit code 130 (interrupted).

    A job of a multirun prints the same line prefixed with its job number and then raises the
    error as an ordinary exception: Hydra records the job FAILED and the sweep goes on with the
    next job (a `SystemExit` would end the whole sweep, or kill a joblib worker). Ctrl-C still
    ends the sweep.
    """
    import functools
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @functools.wraps(task)
    def wrapper(cfg):
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        prefix = f"job {HydraConfig.get().job.num}: " if multirun else ""
        try:
            return task(cfg)
        except DeepmineError as exc:
            from deepmine.provenance.secrets import mask_values, secret_values

            # the line may quote an override (a secret pasted into the wrong option)
            overrides = list(HydraConfig.get().overrides.task)
            try:
                secrets = secret_values(cfg, overrides)
            except Exception:  # a config that cannot resolve (what the error may be about)
                secrets = secret_values(None, overrides)
            line = mask_values(exc.one_line(), secrets)
            print(f"error: {prefix}{line}", file=sys.stderr, flush=True)
            if multirun:
                raise
            raise SystemExit(getattr(exc, "exit_code", 2)) from None
        except SystemExit as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                print(INTERRUPTED, file=sys.stderr, flush=True)
                if multirun:
                    raise KeyboardInterrupt from None
                raise SystemExit(130) from None
            raise
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr, flush=True)
            if multirun:
                raise
            raise SystemExit(130) from None
        except Exception as exc:
            if not multirun:
                raise
            if type(exc).__name__ != "TrialPruned":
                line = describe_error(exc) or f"{type(exc).__name__}: {first_line(exc)}"
                print(f"error: {prefix}{line}", file=sys.stderr, flush=True)
            raise

    return wrapper
