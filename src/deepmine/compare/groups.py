"""Which runs are "the same configuration": the grouping key every comparison shares.

Two runs belong to one group when their recorded config is equal once the keys that say nothing
about the configuration are removed: the seed, where files went (`paths.*`, the run's output
and checkpoint folders), how it was recorded (`logger.*`, `tags.*`, `claim.*`), sweep
bookkeeping (`sweep.*`) and switches that do not change what is trained (progress bar, model
summary, `print_config`, `resume`). Paths under the project root are compared relative to it,
so the same config run from two clones (or by `deepmine reproduce run` in a worktree) groups
together.

`deepmine compare`, the sweep summary, `deepmine reproduce` and the `deepmine.group` tag each run
carries all use `group_key`, so a group in the terminal is the same group in the MLflow UI.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping

#: The tag every recorded run carries: its group, for "Group by" in the MLflow UI.
GROUP_TAG = "deepmine.group"

#: Keys (fnmatch patterns over dotted param names) that do not define a configuration.
RUN_SPECIFIC = (
    "seed",
    # keys that follow the seed (`${seed}` in conf/): they differ exactly when the seed does
    "data.shuffle_seed",
    "task.seed",
    "paths.*",
    "logger.*",
    "tags.*",
    "tags",
    "claim.*",
    "sweep.*",
    "hydra.*",
    "resume",
    "print_config",
    "task_name",
    "experiment_name",
    "trust_recorded_targets",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.progress_bar.*",
    "data.cache_dir",
    "data.storage",  # memory or memory-mapped: the same batches bit for bit
)


def is_run_specific(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RUN_SPECIFIC)


def config_of(params: Mapping[str, str]) -> dict[str, str]:
    """The params that define the configuration, with project paths made relative."""
    root = str(params.get("paths.root_dir") or "").rstrip("/")
    config = {}
    for key, value in params.items():
        if is_run_specific(key):
            continue
        value = str(value)
        if root and (value == root or value.startswith(root + "/")):
            value = value[len(root) + 1 :] or "."
        config[key] = value
    return dict(sorted(config.items()))


def group_key(params: Mapping[str, str]) -> str:
    """A short stable id of the configuration (12 hex digits of a SHA-1)."""
    text = json.dumps(config_of(params), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def differing_keys(configs: list[Mapping[str, str]]) -> list[str]:
    """The keys whose value is not the same in every config (a key missing somewhere differs)."""
    keys: dict[str, None] = {}
    for config in configs:
        keys.update(dict.fromkeys(config))
    missing = object()
    return sorted(k for k in keys if len({str(c.get(k, missing)) for c in configs}) > 1)
