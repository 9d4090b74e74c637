"""Recorded configs are untrusted: every `_target_` is checked before anything is instantiated.

`deepmine reproduce run`, `deepmine eval run_id=` and `resume=` rebuild a run from what an
MLflow store holds, and a store may have been written (or tampered with) by someone else. A
`_target_` names any importable callable (`subprocess.Popen`, `os.system`), so instantiating
such a config runs whatever it names. Allowed: deepmine's own code, `torch.nn.`, `torch.optim.`,
Lightning's callbacks, Trainer and strategies, and every `_target_` that conf/ itself
references (read at check time, so a new option there needs no change here). Anything else is
refused unless the user says they trust the store (`trust_recorded_targets=true`, `--trust`).
Experiment YAMLs are local code: a target outside the list there is only warned about.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from deepmine.errors import DeepmineError

PREFIXES = ("deepmine.", "torch.nn.", "torch.optim.", "lightning.pytorch.callbacks.")
PREFIXES += ("lightning.pytorch.strategies.",)
EXACT = ("lightning.pytorch.Trainer",)
FLAG = "trust_recorded_targets=true"


def targets(cfg, path: str = "") -> Iterator[tuple[str, str]]:
    """Every `(dotted key, target)` in a config (DictConfig or plain), unresolved."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            name = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield name, str(value)
            else:
                yield from targets(value, name)
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            yield from targets(value, f"{path}[{i}]")


def conf_targets(conf: Path | None = None) -> set[str]:
    """The `_target_`s conf/ references (not following links: conf/experiment points at
    experiments/, which is checked on its own)."""
    import yaml

    from deepmine.project import config_dir

    root = Path(conf or config_dir())
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):  # followlinks=False
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            if not name.endswith((".yaml", ".yml")) or path.is_symlink():
                continue
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            found.update(target for _, target in targets(data))
    return found


def allowed(target: str, known: set[str] | None = None) -> bool:
    """Whether `target` is on the allowlist. A prefix match must also name an object defined
    under that prefix: `deepmine.reproduce.subprocess.run` reaches `subprocess.run`."""
    target = target.strip()
    if target in EXACT or target in (conf_targets() if known is None else known):
        return True
    prefix = next((p for p in PREFIXES if target.startswith(p)), None)
    if prefix is None:
        return False
    return _defined_under(target, prefix)


def refused(cfg, known: set[str] | None = None) -> list[tuple[str, str]]:
    known = conf_targets() if known is None else known
    return [(key, target) for key, target in targets(cfg) if not allowed(target, known)]


def override_targets(overrides) -> Iterator[tuple[str, str]]:
    """`_target_`s that command-line overrides set, also under `hydra.` (callbacks, launcher:
    absent from a composed job config, but instantiated by the `deepmine train` they replay)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides([str(o) for o in overrides]):
        key = override.key_or_group
        value = override.value()
        if key == "_target_" or key.endswith("._target_"):
            yield key, str(value)
        elif isinstance(value, Mapping | list):
            yield from targets(value, key)


def check_targets(cfg, trusted: bool = False, flag: str = FLAG, overrides=()) -> None:
    """Refuse a recorded config (or the recorded `overrides` it was composed with) naming a
    `_target_` outside the allowlist, in one line."""
    if trusted:
        return
    known = conf_targets()
    bad = refused(cfg, known)
    bad += [(k, t) for k, t in override_targets(overrides) if not allowed(t, known)]
    if bad:
        key, target = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DeepmineError(
            f"the recorded config sets {key}={target}{more}, a target outside deepmine's "
            "allowlist: instantiating it could run any code",
            f"pass {flag} only if you trust the store it came from",
        )


def warn_targets(cfg, where: str) -> None:
    """A warning line on stderr per `_target_` of local config `where` outside the allowlist."""
    for key, target in refused(cfg):
        print(
            f"warning: {where} sets {key}={target}, a target outside deepmine's allowlist",
            file=sys.stderr,
            flush=True,
        )


def _defined_under(target: str, prefix: str) -> bool:
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:
        return False  # not importable: instantiation would fail anyway; refuse in one line
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    return isinstance(module, str) and (module + ".").startswith(prefix)
