"""The words a sweep is shown by: run names and config labels that say what differs.

MLflow's run lists, legends and compare view show the run name first and cut it at about 20
characters, so a child is named by its swept values (`lr=0.01 seed=2`), an Optuna trial by its
number and rounded values (`trial 3 lr=0.0123 wd=1.2e-05`), and the parent by its space
(`grid lr×seed`, `optuna lr×wd (20 trials)`). Keys are cut to their last dotted part
(`optimizer.lr` -> `lr`) unless two swept keys would then read the same; then each keeps the
shortest dotted suffix that tells it apart. The full keys stay in the `sweep.*` params.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: MLflow keeps run names up to this length.
MAX_RUN_NAME = 250
#: Significant digits of the floats an Optuna trial is named by (the sampled values have ~17).
TRIAL_DIGITS = 3


def bare_key(key: str) -> str:
    """A swept key without Hydra's `+`/`++`/`~` prefix (`+trainer.foo` -> `trainer.foo`)."""
    return str(key).lstrip("+~")


def is_seed_key(key: str) -> bool:
    """`seed` or `<anything>.seed`: the keys a sweep repeats a configuration over."""
    key = bare_key(key)
    return key == "seed" or key.endswith(".seed")


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Each key -> its shortest dotted suffix that no other key ends with."""
    keys = list(dict.fromkeys(keys))
    parts = {key: bare_key(key).split(".") for key in keys}
    short = {}
    for key, mine in parts.items():
        others = [p for k, p in parts.items() if k != key]
        for n in range(1, len(mine) + 1):
            suffix = mine[-n:]
            if not any(other[-n:] == suffix for other in others if len(other) >= n):
                break
        short[key] = ".".join(suffix)
    return short


def shown(value: object, digits: int | None = None) -> str:
    """A value as a config would write it: `null`, `true`, `0.001`, `[128, 64]`; floats to
    `digits` significant digits when given (names of Optuna trials, which sample floats with
    many digits)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and digits:
        return f"{value:.{digits}g}"
    return str(value)


def label(values: Mapping[str, object], keys: Iterable[str] | None = None, digits=None) -> str:
    """`lr=0.01 seed=2`: `values` with their keys shortened among `keys` (default: their own);
    a secret key's value is masked."""
    from deepmine.provenance.secrets import MASK, is_secret_key

    short = short_keys(keys if keys is not None else values)
    return " ".join(
        f"{short.get(k, bare_key(k))}={MASK if is_secret_key(k) else shown(v, digits)}"
        for k, v in values.items()
    )


def job_run_name(kind: str, swept: list[str], job: int, values: Mapping[str, object]) -> str:
    """A child's run name: its swept values, in the order the keys were swept."""
    ordered = {k: values[k] for k in swept if k in values}
    if kind == "optuna":
        name = f"trial {job} {label(ordered, swept, digits=TRIAL_DIGITS)}".strip()
    else:
        name = label(ordered, swept) or f"job {job}"
    return name[:MAX_RUN_NAME]


def sweep_run_name(kind: str, swept: list[str], trials: int | None = None) -> str:
    """The parent's run name: the kind of sweep and its axes, `grid lr×seed`."""
    short = short_keys(swept)
    axes = "×".join(short[k] for k in swept)
    name = " ".join(part for part in (kind, axes) if part)
    if trials is not None:
        name += f" ({trials} trials)"
    return name[:MAX_RUN_NAME]
