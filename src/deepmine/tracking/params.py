"""The resolved config as MLflow params: dotted keys, full values.

Lightning's MLFlowLogger cuts values to 250 characters; MLflow itself accepts 6000, so only
values past that are shortened (with a pointer to config/config.yaml, which is always complete).
A key that looks secret (`provenance.secrets`) is recorded as `***`, whatever its value.

Params are what the MLflow UI and `deepmine compare` diff between runs, so they hold no machine
paths (`portable`): the same config run from two clones, or twice, logs the same params. Paths
under the project root are logged relative to it (`data.data_dir=data/fashion_mnist`); where this
run's files went and which store recorded it are left out (they are the tags
`deepmine.output_dir` and `deepmine.root_dir`, the run's own store, and the complete config is
the artifact config/config.yaml).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from deepmine.provenance.secrets import MASK, is_secret_key

MAX_VALUE = 6000
MAX_KEY = 250
BATCH = 100  # MLflow's per-call limit for params

#: Where this run's files went and where it was recorded: different for every run or machine.
RUN_LOCATION_KEYS = (
    "paths.root_dir",
    "paths.log_dir",
    "paths.output_dir",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
    "logger.tracking_uri",
    "logger.artifact_location",
)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}, "c": [1, 2]}` -> `{"a.b": "1", "c": "[1, 2]"}`."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if is_secret_key(key) and value is not None:
            flat[name] = MASK
        elif isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = _as_text(value)
    return flat


def portable(params: Mapping[str, str]) -> dict[str, str]:
    """`params` (flat) without `RUN_LOCATION_KEYS`, values under `paths.root_dir` made relative
    to it (`.` for the root itself), so they are equal wherever the project lives."""
    root = str(params.get("paths.root_dir") or "").rstrip("/")
    kept = {}
    for key, value in params.items():
        if key in RUN_LOCATION_KEYS:
            continue
        if root and (value == root or value.startswith(root + "/")):
            value = value[len(root) + 1 :] or "."
        kept[key] = value
    return kept


def _as_text(value: object) -> str:
    structured = isinstance(value, list | tuple | dict)
    text = json.dumps(value, default=str) if structured else str(value)
    if len(text) > MAX_VALUE:
        marker = "...[cut at MLflow's 6000-char limit; full value in config/config.yaml]"
        text = text[: MAX_VALUE - len(marker)] + marker
    return text


def batches(params: dict[str, str]) -> list[dict[str, str]]:
    items = [(k[:MAX_KEY], v) for k, v in sorted(params.items())]
    return [dict(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]
