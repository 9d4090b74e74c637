"""What a run is called and how it describes itself in the MLflow UI: its name (`run_name`, what
differs: `cnn-fashion_mnist lr=0.003 seed=1`), its summary tag (`summary_line`) and its
description once it has a result (`description`)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

#: longest run name made up by `run_name` (MLflow's lists and legends cut longer ones)
RUN_NAME_CHARS = 60

#: overrides a run name leaves out (fnmatch patterns): net and data lead the name; the rest say
#: where things are written or recorded, or switch checks and printing, not what is trained
NAME_SKIPS = (
    "net",
    "data",
    "register",
    "paths.*",
    "logger.*",
    "tags.*",
    "hydra.*",
    "hydra/*",
    "print_config",
    "allow_data_mismatch",
    "trust_recorded_targets",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
)


def run_name(hydra_cfg, overrides: list[str], secrets: set[str] = frozenset()) -> str:
    """`<net>-<data>` and the overrides that say what else was chosen, each key shortened to
    its last part unless that is ambiguous: `cnn-fashion_mnist lr=0.003 seed=1`. Overrides of
    where things are written or recorded (`NAME_SKIPS`: `paths.*`, `logger.*`, `tags.*`, ...)
    are left out, secret values masked; the same command line gives the same name. At most
    `RUN_NAME_CHARS` characters."""
    from fnmatch import fnmatchcase

    from deepmine.provenance.secrets import mask_overrides
    from deepmine.sweeps.names import short_keys

    choices = hydra_cfg.runtime.choices
    chosen = []
    for override in mask_overrides(overrides, secrets):
        key, given, value = override.lstrip("+~").partition("=")
        if not given or any(fnmatchcase(key, pattern) for pattern in NAME_SKIPS):
            continue
        if "/" in value:  # a path: its last part says which
            value = value.rstrip("/").rsplit("/", 1)[-1]
        chosen.append((key, value))
    # keys shortened as a sweep's children are named: to the last part unless that is ambiguous
    short = short_keys(key for key, _ in chosen)
    words = [f"{choices.get('net') or 'net'}-{choices.get('data') or 'data'}"]
    words += [f"{short[key]}={value}" for key, value in chosen]
    name = " ".join(words)
    return name if len(name) <= RUN_NAME_CHARS else name[: RUN_NAME_CHARS - 1] + "…"


def summary_line(cfg: DictConfig, seed: int) -> str:
    """The values that tell runs apart at a glance: net, optimizer and lr, data, seed
    (`cnn adam lr=0.003 fashion_mnist seed=2`); the run's `deepmine.summary` tag."""
    choices = HydraConfig.get().runtime.choices
    words = [choices.get("net"), choices.get("optimizer")]
    lr = (cfg.get("optimizer") or {}).get("lr")
    if isinstance(lr, int | float):
        words.append(f"lr={lr:g}")
    words += [choices.get("data"), f"seed={seed}"]
    return " ".join(str(w) for w in words if w)


def description(summary: str, cfg: DictConfig, task, result: dict) -> str:
    """The run's description in the MLflow UI: its summary line and what it reached,
    `cnn adam lr=0.003 fashion_mnist seed=2 → val/acc_best 0.912, test/acc 0.905`."""
    reached = []
    metric, value = cfg.get("optimized_metric"), result["objective"]
    if metric and value is not None:
        reached.append(f"{metric} {value:.4g}")
    test = f"test/{getattr(task, 'monitor', '')}"
    if test != metric and test in result["metrics"]:
        reached.append(f"{test} {result['metrics'][test]:.4g}")
    return f"{summary} → {', '.join(reached)}" if reached else summary
