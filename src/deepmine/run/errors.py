"""Errors reported in one line: Hydra/OmegaConf composition errors turned into a problem and a
fix (`describe_error`, also used by the CLI for errors raised before a command runs), and the
decorator every Hydra command wears (`report_errors`) so a single run exits with that line and a
sweep's job fails alone."""

from __future__ import annotations

import difflib
import re

from deepmine.errors import INTERRUPTED, DeepmineError, first_line


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
        # Hydra raises it empty around an OmegaConf error: that error is the message
        return (
            _first_lines(str(exc)) or f"{type(cause or exc).__name__}: {first_line(cause or exc)}"
        )
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
        from deepmine.run.records import mask_hydra_files

        # every Hydra task passes here first: Hydra has just written .hydra/* in clear
        mask_hydra_files(cfg)
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
