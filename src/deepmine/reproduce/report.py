"""What a claim's reproduction reports: its outcome (values per seed, mean ± std, verdict), the
Markdown table "published vs reproduced" of one claim, and REPRODUCTION.md over all of them.
Rendering only: running the seeds is `deepmine.reproduce.claim_run`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepmine.compare.stats import Summary as Stats
from deepmine.compare.stats import summarize
from deepmine.reproduce.claims import Claim

REPORT_FILE = "REPRODUCTION.md"

_RESULTS_MARK = "<!-- deepmine:results "

_NOTES = "## Notes"


@dataclass
class Outcome:
    claim: Claim
    command: str
    values: dict[int, float] = field(default_factory=dict)  # seed -> metric
    run_ids: dict[int, str] = field(default_factory=dict)  # seed -> child run id
    parent_run_id: str = ""
    wall_s: float = 0.0
    sweep_dir: str = ""
    failed_seeds: list[int] = field(default_factory=list)
    date: str = ""

    @property
    def stats(self) -> Stats:
        """n, mean and sample std over the seeds: the statistics `deepmine compare` and the
        sweep summary print for a configuration."""
        return summarize(list(self.values.values()))

    @property
    def mean(self) -> float | None:
        return self.stats.mean

    @property
    def std(self) -> float | None:
        return self.stats.std

    @property
    def ok(self) -> bool:
        if self.failed_seeds or self.mean is None:
            return False
        return self.claim.holds(self.mean)

    @property
    def verdict(self) -> str:
        if self.failed_seeds:
            return f"not reproduced: seeds {self.failed_seeds} failed"
        if self.mean is None:
            return "not reproduced: no run reported the metric"
        if self.claim.is_baseline:
            return "baseline measured (no published number)"
        gap = self.mean - self.claim.published
        if self.claim.kind != "within":
            side = "at least" if self.claim.kind == "at_least" else "at most"
            verdict = "holds" if self.ok else "does not hold"
            return f"claim {verdict}: {self.mean:.4f} vs {side} {self.claim.published:.4f}"
        inside = "within" if self.ok else "outside"
        return f"{inside} tolerance ({gap:+.4f} vs ±{self.claim.tolerance:g})"

    def reproduced(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.4f} ± {self.std:.4f} (n={len(self.values)})"


def report_markdown(outcome: Outcome) -> str:
    claim = outcome.claim
    published = claim.stated()
    lines = [
        f"# Reproduction of `{claim.name}`",
        "",
        f"Source: {claim.source}",
        "",
        "| metric | published | reproduced (mean ± std, n seeds) | verdict |",
        "|---|---|---|---|",
        f"| {claim.metric} | {published} | {outcome.reproduced()} | {outcome.verdict} |",
        "",
        "| seed | value | MLflow run |",
        "|---|---|---|",
    ]
    for seed in claim.seeds:
        value = outcome.values.get(seed)
        shown = f"{value:.4f}" if value is not None else "failed"
        lines.append(f"| {seed} | {shown} | {outcome.run_ids.get(seed, '-')} |")
    lines += [
        "",
        f"Command: `{outcome.command}` — wall time {outcome.wall_s / 60:.1f} min; "
        f"MLflow parent run `{outcome.parent_run_id}`.",
    ]
    return "\n".join(lines) + "\n"


def _row(outcome: Outcome) -> dict:
    return {
        "claim": asdict(outcome.claim),
        "command": outcome.command,
        "values": {str(k): v for k, v in outcome.values.items()},
        "run_ids": {str(k): v for k, v in outcome.run_ids.items()},
        "parent_run_id": outcome.parent_run_id,
        "wall_s": round(outcome.wall_s, 1),
        "mean": outcome.mean,
        "std": outcome.std,
        "verdict": outcome.verdict,
        "ok": outcome.ok,
        "date": outcome.date,
    }


def _previous(path: Path) -> tuple[dict, str]:
    """The rows of the last REPRODUCTION.md (kept for claims not rerun) and its hand-written
    `## Notes` section (the explanation of each verdict), kept verbatim."""
    if not path.is_file():
        return {}, ""
    text = path.read_text()
    rows = {}
    for line in text.splitlines():
        if line.startswith(_RESULTS_MARK):
            rows = json.loads(line[len(_RESULTS_MARK) : -len(" -->")])
    notes = text[text.index(_NOTES) :].split(_RESULTS_MARK)[0] if _NOTES in text else ""
    return rows, notes.rstrip() + "\n" if notes else ""


def _reproduction_md(rows: dict, total_s: float, rerun: list[str], notes: str = "") -> str:
    lines = [
        "# Reproduction",
        "",
        "Every claim in `experiments/`, run by `deepmine reproduce --all` on this project's",
        "machine (2 CPU cores). *Reproduced* is the mean ± sample std over the claim's seeds of",
        "the claimed metric, each seed an MLflow child run of the parent listed.",
        "",
        "| claim | source | metric | published | reproduced (mean ± std, n) | verdict | command "
        "| wall time | MLflow parent (children) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        row = rows[name]
        claim = row["claim"]
        published = Claim(**{"kind": "within", **claim}).stated()
        if row["mean"] is None:
            reproduced = "-"
        else:
            reproduced = f"{row['mean']:.4f} ± {row['std']:.4f} (n={len(row['values'])})"
        children = ", ".join(row["run_ids"].values())
        lines.append(
            f"| `{name}` | {claim['source']} | {claim['metric']} | {published} | {reproduced} "
            f"| {row['verdict']} | `{row['command']}` | {row['wall_s'] / 60:.1f} min "
            f"| `{row['parent_run_id']}` ({children}) |"
        )
    lines += [
        "",
        f"Last `--all` run: {', '.join(rerun)} in {total_s / 60:.1f} min.",
        "",
        notes
        or f"{_NOTES}\n\n(Explain each verdict here; this section is kept when the "
        "table is regenerated.)\n",
        _RESULTS_MARK + json.dumps(rows, sort_keys=True) + " -->",
    ]
    return "\n".join(lines) + "\n"
