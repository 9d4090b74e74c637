"""From selected runs to a comparison of configurations: groups, their numbers, their labels,
the config keys that tell them apart, and the best group tested against each other one.

Everything here is plain data in, plain data out (no store, no terminal), so the numbers a
researcher reads are tested on their own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from deepmine.compare.groups import config_of, differing_keys, group_key
from deepmine.compare.select import RunRecord, Selection
from deepmine.compare.stats import Difference, Summary, compare_means, summarize
from deepmine.errors import DeepmineError

#: Equal-everywhere keys worth naming in the folded line, besides each group's class.
NOTABLE = ("optimizer.lr", "trainer.max_epochs", "data.batch_size")
#: A group's label names at most this many of its differing values (the table shows all).
LABEL_PARTS = 3
TOP_LEVEL = "(top level)"


@dataclass
class Group:
    key: str
    runs: list[RunRecord]
    config: dict[str, str]
    label: str = ""
    stats: dict[str, Summary] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        return [v for _, v in self.points(metric)]

    def points(self, metric: str) -> list[tuple[RunRecord, float]]:
        """(run, value) of every run that logged a finite `metric`."""
        found = []
        for run in self.runs:
            value = run.metrics.get(metric)
            if value is not None and math.isfinite(value):
                found.append((run, float(value)))
        return found

    def by_seed(self, metric: str) -> dict[str, float]:
        """`metric` per seed (the mean, should a seed have been run twice)."""
        seeds: dict[str, list[float]] = {}
        for run, value in self.points(metric):
            seeds.setdefault(str(run.seed), []).append(value)
        return {seed: statistics.fmean(values) for seed, values in seeds.items()}


@dataclass
class Contrast:
    """The best group minus `other` on one metric."""

    metric: str
    best: Group
    other: Group
    difference: Difference
    seeds: list[str] | None = None  # paired: the seeds both groups ran


@dataclass
class Comparison:
    groups: list[Group]  # best first by metrics[0]
    metrics: list[str]
    direction: str  # max | min
    differing: list[str]
    same: dict[str, str]
    contrasts: list[Contrast]
    paired: bool
    selection: Selection

    @property
    def best(self) -> Group:
        return self.groups[0]

    @property
    def runs(self) -> int:
        return sum(len(g.runs) for g in self.groups)

    def by_config_group(self) -> dict[str, list[str]]:
        return layout(self.differing)

    def folded(self) -> str:
        return folded_line(self.same, len(self.groups))


def compare(
    selection: Selection,
    metrics: list[str] | None = None,
    direction: str | None = None,
    paired: bool = False,
) -> Comparison:
    runs = selection.runs
    metrics = choose_metrics(runs, metrics)
    direction = direction or task_direction(runs)
    groups = group_runs(runs)
    for group in groups:
        group.stats = {m: summarize(group.values(m)) for m in metrics}
    groups = rank(groups, metrics[0], direction)
    configs = [g.config for g in groups]
    differing = differing_keys(configs)
    for group, label in zip(groups, labels(configs, differing), strict=True):
        group.label = label
    same = {k: v for k, v in configs[0].items() if k not in differing}
    contrasts = [
        contrast(groups[0], other, metric, paired) for other in groups[1:] for metric in metrics
    ]
    return Comparison(groups, metrics, direction, differing, same, contrasts, paired, selection)


def group_runs(runs: list[RunRecord]) -> list[Group]:
    """Runs that differ only in seed (and run-specific keys) together, in selection order."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = group_key(run.params)
        if key not in groups:
            groups[key] = Group(key, [], config_of(run.params))
        groups[key].runs.append(run)
    return list(groups.values())


def choose_metrics(runs: list[RunRecord], asked: list[str] | None) -> list[str]:
    """The metrics asked for, else each run's `optimized_metric` and its task's test metric."""
    logged = sorted({k for run in runs for k in run.metrics})
    if asked:
        for metric in asked:
            if metric not in logged:
                import difflib

                close = difflib.get_close_matches(metric, logged, n=3, cutoff=0.4)
                hint = ", ".join(close or logged[:8])
                raise DeepmineError(
                    f"no selected run logged the metric '{metric}'",
                    f"pass one they logged, e.g. --metric {(close or logged or ['val/acc'])[0]} "
                    f"({'close' if close else 'logged'}: {hint})",
                )
        return list(dict.fromkeys(asked))
    chosen: dict[str, None] = {}
    for run in runs:
        if run.params.get("optimized_metric"):
            chosen[run.params["optimized_metric"]] = None
    for run in runs:
        if run.params.get("task.monitor"):
            chosen[f"test/{run.params['task.monitor']}"] = None
    found = [m for m in chosen if m in logged]
    if not found:
        raise DeepmineError(
            "the selected runs name no metric to compare (no optimized_metric or task.monitor "
            "param with a logged value)",
            f"name one: --metric {(logged or ['val/acc'])[0]} (logged: {', '.join(logged[:8])})",
        )
    return found


def task_direction(runs: list[RunRecord]) -> str:
    """`task.mode` of the runs (max when not recorded); runs that disagree need --direction."""
    modes = sorted({run.params.get("task.mode", "max") for run in runs})
    if len(modes) > 1:
        raise DeepmineError(
            f"the selected runs disagree on the direction of their metric (task.mode: "
            f"{', '.join(modes)})",
            "compare runs of one kind of task, or say which is better: --direction max|min",
        )
    mode = modes[0]
    if mode not in ("max", "min"):
        raise DeepmineError(
            f"the runs record task.mode={mode}, neither max nor min", "pass --direction max|min"
        )
    return mode


def rank(groups: list[Group], metric: str, direction: str) -> list[Group]:
    """Best first by the mean of `metric`; groups without it last."""

    def order(group: Group):
        mean = group.stats[metric].mean
        if mean is None:
            return (1, 0.0)
        return (0, -mean if direction == "max" else mean)

    return sorted(groups, key=order)


def contrast(best: Group, other: Group, metric: str, paired: bool) -> Contrast:
    if not paired:
        return Contrast(
            metric, best, other, compare_means(best.values(metric), other.values(metric))
        )
    a, b = best.by_seed(metric), other.by_seed(metric)
    seeds = sorted(set(a) & set(b), key=_seed_order)
    difference = compare_means([a[s] for s in seeds], [b[s] for s in seeds], paired=True)
    return Contrast(metric, best, other, difference, seeds)


def _seed_order(seed: str):
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def short(key: str, value: str | None, width: int = 40) -> str:
    """A value as shown: a `_target_` class path by its class name, long values cut."""
    if value is None:
        return "—"
    value = str(value)
    if key.endswith("_target_") and "." in value:
        value = value.rsplit(".", 1)[1]
    return value if len(value) <= width else value[: width - 1] + "…"


def labels(configs: list[Mapping[str, str]], differing: list[str]) -> list[str]:
    """Each group named by its differing values ("optimizer.lr=0.01"); a group whose class
    differs (`net._target_`) is named by the class alone ("net=CNN"), not by every key of it."""
    if not differing:
        return ["all runs" for _ in configs] if len(configs) == 1 else [""] * len(configs)
    classes = [k.removesuffix("._target_") for k in differing if k.endswith("._target_")]
    shown = [k for k in differing if k.endswith("._target_")]
    shown += [
        k
        for k in differing
        if not k.endswith("._target_") and not any(k.startswith(c + ".") for c in classes)
    ]
    names = []
    for config in configs:
        parts = [
            f"{k.removesuffix('._target_')}={short(k, config.get(k), 24)}"
            for k in shown[:LABEL_PARTS]
        ]
        if len(shown) > LABEL_PARTS:
            parts.append(f"+{len(shown) - LABEL_PARTS} keys")
        names.append(" ".join(parts))
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # a cut label may repeat: number the repeats
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} ({seen[name]})"
    return names


def config_group(key: str) -> str:
    return key.split(".", 1)[0] if "." in key else TOP_LEVEL


def layout(keys: list[str]) -> dict[str, list[str]]:
    """Keys by config group (`net`, `optimizer`, ...), top-level keys first."""
    grouped: dict[str, list[str]] = {}
    for key in sorted(keys, key=lambda k: (config_group(k) != TOP_LEVEL, k)):
        grouped.setdefault(config_group(key), []).append(key)
    return grouped


def folded_line(same: Mapping[str, str], groups: int) -> str:
    """The keys equal in every group, folded: how many, each config group's class, and the
    few values a reader looks for first."""
    if not same:
        return "no key is the same in all groups"
    named = [
        f"{k.removesuffix('._target_')}={short(k, v)}"
        for k, v in same.items()
        if k.endswith("._target_")
        and k.count(".") == 1
        and short(k, v).lower() != k.removesuffix("._target_")  # not "trainer=Trainer"
    ]
    named += [f"{k}={short(k, same[k])}" for k in NOTABLE if k in same]
    where = "in all groups" if groups > 1 else "config"
    return (
        f"same {where}: {len(same)} keys ({', '.join(named)})"
        if named
        else (f"same {where}: {len(same)} keys")
    )
