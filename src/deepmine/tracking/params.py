"""The resolved config as MLflow params: dotted keys, full values.

Lightning's MLFlowLogger cuts values to 250 characters; MLflow itself accepts 6000, so only
values past that are shortened (with a pointer to config/config.yaml, which is always complete).
A key that looks secret (see `deepmine.secrets`) is recorded as `***`, whatever its value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from deepmine.secrets import MASK, is_secret_key

MAX_VALUE = 6000
MAX_KEY = 250
BATCH = 100  # MLflow's per-call limit for params


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
