"""The summary of a sweep: one row per job, the best one, and two figures.

Written to `<sweep dir>/summary/` and logged to the parent run under `summary/`:
`trials.csv` and `trials.md` (job, status, objective, every swept param, child run id, and a
note: the error of a failed job, where a pruned one stopped),
`best.json`, `objective_per_trial.png` and `objective_vs_params.png` (one panel per param).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
class Summary:
    rows: list[JobRow]
    objective_name: str
    direction: str  # maximize | minimize

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.failed]

    @property
    def best(self) -> JobRow | None:
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

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        files = [self._csv(folder / "trials.csv"), self._markdown(folder / "trials.md")]
        best = self.best
        (folder / "best.json").write_text(
            json.dumps(
                {
                    "objective": self.objective_name,
                    "direction": self.direction,
                    "best": asdict(best) if best else None,
                    "counts": self.counts(),
                },
                indent=2,
                default=str,
            )
        )
        files.append(folder / "best.json")
        files.extend(self._plots(folder))
        return files

    def _table(self, exact: bool) -> tuple[list[str], list[list[str]]]:
        """Header and rows; `exact` keeps every digit of the objective (CSV), else 6 (Markdown)."""
        params = self.param_names
        header = ["job", "status", self.objective_name, *params, "run_id", "note"]
        body = []
        for row in sorted(self.rows, key=lambda r: r.job):
            if row.objective is None:
                value = ""
            else:
                value = repr(float(row.objective)) if exact else f"{row.objective:.6g}"
            cells = [str(row.params.get(p, "")) for p in params]
            body.append([str(row.job), row.status, value, *cells, row.run_id, row.error])
        return header, body

    def _csv(self, path: Path) -> Path:
        header, body = self._table(exact=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(body)
        return path

    def markdown(self) -> str:
        header, body = self._table(exact=False)

        def line(cells):
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        best = self.best
        lines = [f"{len(self.rows)} jobs: {counts}.", ""]
        if best:
            shown = ", ".join(f"{k}={v}" for k, v in best.params.items())
            lines += [
                f"Best ({self.direction} {self.objective_name}): job {best.job}, "
                f"{best.objective:.6g}, run {best.run_id or '-'}; {shown}",
                "",
            ]
        lines += [line(header), line(["---"] * len(header)), *map(line, body)]
        return "\n".join(lines) + "\n"

    def _markdown(self, path: Path) -> Path:
        path.write_text(self.markdown())
        return path

    def _plots(self, folder: Path) -> list[Path]:
        from deepmine.plots import objective_per_trial_png, objective_vs_params_png

        points = [(r.job, r.objective, r.status) for r in self.rows]
        files = [
            objective_per_trial_png(
                points, self.objective_name, self.direction, folder / "objective_per_trial.png"
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
                )
            )
        return files


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
