"""The summary of a sweep: the configurations ranked over seeds, one row per job, figures.

Researchers compare configurations, not single runs: jobs that differ only in a swept seed
(`seed`, or a key ending in `.seed`) are one configuration, summarized by n, mean ± std, min
and max of the objective (`deepmine.compare.stats`, the statistics `deepmine compare` prints)
and ranked by the task's direction; each other configuration is tested against the best
(difference of means, its 95% confidence interval, Welch's t-test p-value, and a note when n is
too small to say). Without a swept seed every job is its own configuration.

Written to `<sweep dir>/summary/` and logged to the parent run under `summary/`:
`configs.csv` (one row per configuration), `trials.csv` and `trials.md` (the configurations
table first, then every job: status, objective, swept params, child run, and a note: the error
of a failed job, where a pruned one stopped; in Markdown each child run id links to its page in
the MLflow UI), `best.json`, `objective_per_trial.png`, `objective_vs_params.png` (one panel
per param) and, when seeds were swept, `objective_per_config.png` (seeds as dots).

It is one module on purpose: the ranking, the table of jobs and the files written from them
share one set of rows, and splitting them would pass those rows between modules for no reader's
gain.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from deepmine.compare.stats import Difference, compare_means, summarize
from deepmine.compare.stats import Summary as Stats
from deepmine.sweeps.names import is_seed_key, label

#: Job states that count as a failure of the sweep (PRUNED is a normal outcome of a search).
FAILED_STATES = ("FAILED", "FAIL", "KILLED")


@dataclass
class JobRow:
    job: int
    status: str  # FINISHED | FAILED | KILLED | PRUNED | RUNNING
    objective: float | None
    params: dict[str, object] = field(default_factory=dict)
    run_id: str = ""
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATES

    @property
    def scored(self) -> bool:
        return self.status == "FINISHED" and _finite(self.objective)


@dataclass
class Config:
    """One configuration: the jobs whose swept values are equal but for the seed."""

    values: dict[str, object]  # the swept values, seed axis left out
    label: str  # `lr=0.01`, as children are named
    rows: list[JobRow]
    stats: Stats
    rank: int | None = None  # 1 = best; None: no job of it scored
    versus_best: Difference | None = None  # this config - the best one

    @property
    def scores(self) -> list[float]:
        return [float(r.objective) for r in self.rows if r.scored]


@dataclass
class Summary:
    rows: list[JobRow]
    objective_name: str
    direction: str  # maximize | minimize
    experiment_id: str = ""  # with it, the Markdown links each child run to its UI page
    title: str = ""  # the sweep's name (`grid lr×seed`), in the figures' titles
    digits: int | None = None  # significant digits of floats in config labels (Optuna's)

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.failed]

    @property
    def best(self) -> JobRow | None:
        """The single best job."""
        scored = [r for r in self.rows if r.scored]
        if not scored:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(scored, key=lambda r: r.objective)

    @property
    def param_names(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row.params))
        return list(names)

    @property
    def seed_keys(self) -> list[str]:
        """The swept keys a configuration is repeated over."""
        return [p for p in self.param_names if is_seed_key(p)]

    @property
    def config_keys(self) -> list[str]:
        seeds = self.seed_keys
        return [p for p in self.param_names if p not in seeds]

    @cached_property
    def configs(self) -> list[Config]:
        """The configurations, best first (by mean, in the direction), then those with no
        scored job; each but the best with its difference to the best."""
        seeds, keys = self.seed_keys, self.config_keys
        groups: dict[tuple, list[JobRow]] = {}
        for row in sorted(self.rows, key=lambda r: r.job):
            ident = tuple(repr(row.params.get(k)) for k in keys) if seeds else (row.job,)
            groups.setdefault(ident, []).append(row)
        configs = []
        for rows in groups.values():
            values = {k: rows[0].params[k] for k in keys if k in rows[0].params}
            text = label(values, self.param_names, self.digits) or "base config"
            scores = [r.objective for r in rows if r.scored]
            configs.append(Config(values, text, rows, summarize(scores)))
        labels = [c.label for c in configs]
        for config in configs:
            if labels.count(config.label) > 1:
                config.label += f" (job {config.rows[0].job})"
        sign = -1.0 if self.direction == "maximize" else 1.0
        scored = sorted(
            (c for c in configs if c.stats.n), key=lambda c: (sign * c.stats.mean, c.rows[0].job)
        )
        for rank, config in enumerate(scored, start=1):
            config.rank = rank
            if rank > 1:
                # this config - the best, by Welch's t-test
                config.versus_best = compare_means(config.scores, scored[0].scores)
        return [*scored, *(c for c in configs if not c.stats.n)]

    @property
    def best_config(self) -> Config | None:
        configs = self.configs
        return configs[0] if configs and configs[0].rank == 1 else None

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        files = [
            self._configs_csv(folder / "configs.csv"),
            self._csv(folder / "trials.csv"),
            self._markdown(folder / "trials.md"),
        ]
        best, config = self.best, self.best_config
        (folder / "best.json").write_text(
            json.dumps(
                {
                    "objective": self.objective_name,
                    "direction": self.direction,
                    "best": asdict(best) if best else None,
                    "best_config": {
                        "config": config.label,
                        "values": config.values,
                        "jobs": [r.job for r in config.rows],
                        **asdict(config.stats),
                    }
                    if config
                    else None,
                    "counts": self.counts(),
                },
                indent=2,
                default=str,
            )
        )
        files.append(folder / "best.json")
        files.extend(self._plots(folder))
        return files

    # --- configurations ----------------------------------------------------------------------

    def _configs_csv(self, path: Path) -> Path:
        keys = self.config_keys
        header = ["rank", "config", *keys, "jobs", "n", "mean", "std", "min", "max"]
        header += ["diff_vs_best", "ci_low", "ci_high", "p_value", "note"]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for config in self.configs:
                stats, versus = config.stats, config.versus_best
                numbers = [stats.mean, stats.std, stats.min, stats.max]
                if versus:
                    numbers += [versus.diff, versus.ci_low, versus.ci_high, versus.p_value]
                else:
                    numbers += [None] * 4
                writer.writerow(
                    [
                        config.rank or "",
                        config.label,
                        *(str(config.values.get(k, "")) for k in keys),
                        " ".join(str(r.job) for r in config.rows),
                        stats.n,
                        *("" if v is None else repr(float(v)) for v in numbers),
                        _note(config),
                    ]
                )
        return path

    def configs_markdown(self) -> list[str]:
        seeds = ", ".join(self.seed_keys)
        over = f"over seeds ({seeds})" if seeds else "(no seed swept: every job is its own)"
        lines = [
            "## Configurations",
            "",
            f"Ranked by mean {self.objective_name} ({self.direction}) {over}; each against the "
            "best: difference of means [95% CI] and Welch's t-test p-value.",
            "",
        ]
        header = ["rank", "config", "n", "mean ± std", "min", "max", "Δ vs best [95% CI]", "p"]
        header += ["note", "jobs"]
        body = []
        for config in self.configs:
            stats, versus = config.stats, config.versus_best
            spread = f"{stats.mean:.4g} ± {stats.std:.2g}" if stats.n else "-"
            body.append(
                [
                    str(config.rank or "-"),
                    config.label,
                    str(stats.n),
                    spread,
                    _g(stats.min),
                    _g(stats.max),
                    _difference(versus) if versus else ("best" if config.rank == 1 else "-"),
                    _g(versus.p_value, 3) if versus else "",
                    _note(config),
                    ", ".join(str(r.job) for r in config.rows),
                ]
            )
        return [*lines, *_table_lines(header, body)]

    # --- jobs --------------------------------------------------------------------------------

    def _table(self, exact: bool) -> tuple[list[str], list[list[str]]]:
        """Header and rows; `exact` keeps every digit of the objective and the full run id
        (CSV), else 6 digits and the run id as a link to the run's page in the UI (Markdown)."""
        params = self.param_names
        header = ["job", "status", self.objective_name, *params, "run_id", "note"]
        body = []
        for row in sorted(self.rows, key=lambda r: r.job):
            if row.objective is None:
                value = ""
            else:
                value = repr(float(row.objective)) if exact else f"{row.objective:.6g}"
            cells = [str(row.params.get(p, "")) for p in params]
            run = row.run_id if exact else self.run_link(row.run_id)
            body.append([str(row.job), row.status, value, *cells, run, row.error])
        return header, body

    def run_link(self, run_id: str) -> str:
        """`[1a2b3c4d](#/experiments/<id>/runs/<run id>)`: a link relative to the MLflow UI's
        page, so it opens the run in whichever UI shows this description or file."""
        if not run_id:
            return "-"
        if not self.experiment_id:
            return run_id
        return f"[{run_id[:8]}](#/experiments/{self.experiment_id}/runs/{run_id})"

    def _csv(self, path: Path) -> Path:
        header, body = self._table(exact=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(body)
        return path

    def markdown(self) -> str:
        header, body = self._table(exact=False)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        lines = [f"{len(self.rows)} jobs: {counts}.", "", *self.configs_markdown(), ""]
        best = self.best
        if best:
            shown = label(best.params, self.param_names)
            lines += [
                f"Best job ({self.direction} {self.objective_name}): job {best.job}, "
                f"{best.objective:.6g}, run {self.run_link(best.run_id)}; {shown}",
                "",
            ]
        lines += ["## Jobs", "", *_table_lines(header, body)]
        return "\n".join(lines) + "\n"

    def _markdown(self, path: Path) -> Path:
        path.write_text(self.markdown())
        return path

    def _plots(self, folder: Path) -> list[Path]:
        from deepmine.sweeps.plots import (
            objective_per_config_png,
            objective_per_trial_png,
            objective_vs_params_png,
        )

        points = [(r.job, r.objective, r.status) for r in self.rows]
        files = [
            objective_per_trial_png(
                points,
                self.objective_name,
                self.direction,
                folder / "objective_per_trial.png",
                title=self.title,
            )
        ]
        scored = [r for r in self.rows if r.scored]
        if self.param_names:
            files.append(
                objective_vs_params_png(
                    {p: [r.params.get(p) for r in scored] for p in self.param_names},
                    [r.objective for r in scored],
                    self.objective_name,
                    folder / "objective_vs_params.png",
                    title=self.title,
                )
            )
        ranked = [c for c in self.configs if c.rank]
        if self.seed_keys and ranked:
            files.append(
                objective_per_config_png(
                    {c.label: c.scores for c in ranked},
                    self.objective_name,
                    self.direction,
                    folder / "objective_per_config.png",
                    title=self.title,
                )
            )
        return files


def _note(config: Config) -> str:
    if not config.stats.n:
        return "no scored job"
    return config.versus_best.note if config.versus_best else ""


def _difference(versus: Difference) -> str:
    if versus.diff is None:
        return "-"
    if versus.ci_low is None:
        return f"{versus.diff:+.4g}"
    return f"{versus.diff:+.4g} [{versus.ci_low:+.3g}, {versus.ci_high:+.3g}]"


def _g(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _table_lines(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *map(line, body)]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
