"""`deepmine reproduce`: run a claim's seeds as one recorded sweep and judge the claim.

`deepmine reproduce <experiment> [overrides]` runs `deepmine train -m experiment=<name>
seed=<the claim's seeds>` (a subprocess: the sweep is recorded exactly like any other, one
MLflow parent with a child per seed), reads the claimed metric of every child, and writes a
report (Markdown table "published vs reproduced" and a PNG chart with the published value
marked) to the sweep folder and into the parent run. Exit 0 when the mean is within tolerance
(or a baseline was measured), 1 otherwise.

`deepmine reproduce --all` does this for every claim (or `--only a,b`) and regenerates
REPRODUCTION.md at the project root.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from deepmine.claims import Claim, load
from deepmine.compare.stats import Summary as Stats
from deepmine.compare.stats import summarize
from deepmine.errors import DeepmineError
from deepmine.project import project_root
from deepmine.provenance.secrets import mask_overrides

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


def reproduce(name: str, overrides: list[str] = (), launcher: str | None = None) -> Outcome:
    """Run every seed of claim `name`, record and report; returns the outcome."""
    claim, cfg = load(name, overrides)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = Path(cfg.paths.log_dir) / "reproduce" / name / stamp
    seeds = ",".join(str(s) for s in claim.seeds)
    args = [
        "train",
        "-m",
        f"experiment={name}",
        f"seed={seeds}",
        *([f"launcher={launcher}"] if launcher else []),
        *overrides,
    ]
    # recorded in the report and REPRODUCTION.md: a secret override is masked there
    command = "deepmine reproduce " + " ".join(
        [name, *([f"--launcher {launcher}"] if launcher else []), *mask_overrides(overrides)]
    )
    outcome = Outcome(claim, command, sweep_dir=str(sweep_dir), date=stamp[:10])
    started = time.perf_counter()
    print(f"reproduce  {name}: {len(claim.seeds)} seeds ({seeds}) -> {sweep_dir}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "deepmine", *args, f"hydra.sweep.dir={sweep_dir}"], check=False
    )
    outcome.wall_s = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some seeds failed, still recorded and summarized
        raise DeepmineError(
            f"the runs of '{name}' could not start (exit {done.returncode})",
            "see the error above",
        )
    store, parent_run_id = _sweep_store(sweep_dir)
    _collect(outcome, store, parent_run_id)
    _report(outcome, store, sweep_dir)
    return outcome


def _sweep_store(sweep_dir: Path):
    """The store of the sweep recorded in `sweep_dir`, and its parent run id."""
    from deepmine.sweeps.record import SweepInfo
    from deepmine.tracking.store import connect

    info = SweepInfo.load(sweep_dir)
    if info is None or not info.parent_run_id:
        raise DeepmineError(
            f"no recorded sweep in {sweep_dir}",
            "reproduce needs the MLflow logger (drop logger=none)",
        )
    return connect(info.tracking_uri), info.parent_run_id


def _collect(outcome: Outcome, store, parent_run_id: str) -> None:
    from deepmine.tracking.sweep import child_runs

    parent = store.client.get_run(parent_run_id)
    outcome.parent_run_id = parent_run_id
    children = child_runs(store, parent.info.experiment_id, parent_run_id)
    seeds = outcome.claim.seeds
    for job, seed in enumerate(seeds):
        child = children.get(job)
        value = child.metrics.get(outcome.claim.metric) if child else None
        if child:
            outcome.run_ids[seed] = child.run_id
        if child is None or child.status != "FINISHED" or value is None or math.isnan(value):
            outcome.failed_seeds.append(seed)
        else:
            outcome.values[seed] = value


def _report(outcome: Outcome, store, sweep_dir: Path) -> None:
    from deepmine.reproduce.plots import reproduction_png
    from deepmine.tracking.sweep import set_tags

    folder = sweep_dir / "reproduction"
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / "report.md"
    markdown.write_text(report_markdown(outcome))
    chart = reproduction_png(
        outcome.claim.name,
        outcome.claim.metric,
        outcome.values,
        outcome.claim.published,
        outcome.claim.tolerance,
        folder / "chart.png",
    )
    (folder / "outcome.json").write_text(json.dumps(_row(outcome), indent=2))
    for path in (markdown, chart, folder / "outcome.json"):
        store.client.log_artifact(outcome.parent_run_id, str(path), "reproduction")
    set_tags(
        store,
        outcome.parent_run_id,
        {
            "deepmine.reproduce.claim": outcome.claim.name,
            "deepmine.reproduce.verdict": outcome.verdict,
            "deepmine.reproduce.ok": str(outcome.ok).lower(),
        },
    )
    if outcome.mean is not None:
        metric = outcome.claim.metric
        store.client.log_metric(outcome.parent_run_id, f"reproduced/{metric}/mean", outcome.mean)
        store.client.log_metric(outcome.parent_run_id, f"reproduced/{metric}/std", outcome.std)
    print(markdown.read_text(), flush=True)
    print(f"report     {markdown}\nchart      {chart}", flush=True)


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


def reproduce_all(names: list[str], overrides: list[str], launcher: str | None) -> list[Outcome]:
    """Every claim in `names`, one after another; REPRODUCTION.md keeps the rows of claims not
    rerun this time."""
    started = time.perf_counter()
    outcomes = [reproduce(name, overrides, launcher) for name in names]
    total = time.perf_counter() - started
    path = project_root() / REPORT_FILE
    rows, notes = _previous(path)
    rows.update({o.claim.name: _row(o) for o in outcomes})
    path.write_text(_reproduction_md(rows, total, names, notes))
    print(f"wrote      {path} ({len(outcomes)} claims in {total / 60:.1f} min)", flush=True)
    return outcomes


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


# --- deepmine reproduce run <run_id> ------------------------------------------------------


@dataclass
class RunCheck:
    """What differs between a recorded run's origin and this checkout."""

    warnings: list[str] = field(default_factory=list)
    version_diffs: list[tuple[str, str, str]] = field(default_factory=list)  # pkg, then, now


def reproduce_run(
    run_id: str, tracking_uri: str | None, checkout: bool, trust: bool = False
) -> bool:
    """Re-execute recorded run `run_id` from what MLflow holds and compare every final metric;
    True when all are identical. The recorded overrides are untrusted: their composed config's
    `_target_`s are checked (`provenance.trust`) unless `trust`; a masked secret is refused."""
    import tempfile

    from deepmine.config import compose_train
    from deepmine.provenance.trust import check_targets
    from deepmine.tracking.fetch import get_run, recorded_overrides
    from deepmine.tracking.store import connect
    from deepmine.tracking.ui import default_tracking_uri

    root = project_root()
    store = connect(tracking_uri or default_tracking_uri())
    run = get_run(store, run_id, example=lambda i: f"`deepmine reproduce run {i}`")
    names = {a.path for a in store.client.list_artifacts(run_id, "config")}
    if "config/config.yaml" not in names:
        raise DeepmineError(
            f"run {run_id} was recorded without a config artifact (config/config.yaml)",
            "only runs recorded by deepmine train can be re-executed",
        )
    with tempfile.TemporaryDirectory() as tmp:
        overrides = recorded_overrides(
            store,
            run_id,
            Path(tmp),
            fix="`deepmine reproduce run` cannot take it: run `deepmine train` with the run's "
            "overrides (tag deepmine.overrides) and that key set again",
        )
    check_targets(compose_train(overrides), trusted=trust, flag="--trust", overrides=overrides)
    tags = run.data.tags
    check = _check_origin(tags, root, checkout)
    for line in check.warnings:
        print(f"warning: {line}", flush=True)
    if check.version_diffs:
        print("package versions differ from the run's:", flush=True)
        for name, then, now in check.version_diffs:
            print(f"  {name:14} {then:>14} -> {now}", flush=True)
    command = [
        "train",
        *overrides,
        f"logger.tracking_uri={store.uri}",
        # the original's name, so the re-run sits beside it in the UI's lists and groups (its
        # own overrides differ, which would give it another `<net>-<data>-<hash>`)
        *([f"logger.run_name={quoted(run.info.run_name)}"] if run.info.run_name else []),
        f"+tags.reproduces={run_id}",
    ]
    print(f"re-running  deepmine {' '.join(mask_overrides(command))}", flush=True)
    env = None
    with contextlib.ExitStack() as stack:
        if checkout:
            commit = tags.get("deepmine.git.commit", "unknown")
            worktree = stack.enter_context(_worktree(root, commit))
            env = {**os.environ, "PYTHONPATH": str(worktree / "src"), "DEEPMINE_ROOT": str(root)}
            print(f"checked out {commit} in {worktree}", flush=True)
        done = subprocess.run([sys.executable, "-m", "deepmine", *command], env=env, check=False)
    if done.returncode != 0:
        raise DeepmineError(
            f"the re-run of {run_id} failed (exit {done.returncode})", "see its error above"
        )
    again = store.client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.reproduces = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    return _print_metric_diff(run, again)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value, read back exactly as it is (spaces, `=`,
    quotes; `${` is not an interpolation in a run name)."""
    import re

    # Hydra reads a backslash as an escape only before a quote (or the closing quote)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped.replace("${", "\\${") + "'"


def _check_origin(tags: dict, root: Path, checkout: bool) -> RunCheck:
    from deepmine.data.version import DVC_FILE, check, pull_command, read_pin
    from deepmine.provenance.lineage import git_state, package_versions

    result = RunCheck()
    commit = tags.get("deepmine.git.commit", "unknown")
    if not checkout:
        git = git_state(root)
        if git.commit != commit or git.dirty:
            state = f"{git.commit or 'no commit'}{' (dirty)' if git.dirty else ''}"
            result.warnings.append(
                f"the run was recorded at commit {commit}; this tree is at {state}: results "
                "may differ (--checkout runs the recorded commit in a git worktree)"
            )
    if tags.get("deepmine.data.dvc_tracked") == "true":
        recorded = tags.get("deepmine.data.md5", "unknown")
        pinned = read_pin(root).md5 if (root / DVC_FILE).is_file() else "none"
        if recorded != pinned:
            raise DeepmineError(
                f"the run trained on data version {recorded}; data.dvc pins {pinned}",
                f"restore that version: `git -C {root} checkout {commit} -- data.dvc`, then "
                f"`{pull_command(root, force=True)}`, then re-run",
            )
        state = check(root)
        if not state.matches:
            raise DeepmineError(
                "data/ does not match data.dvc", f"run `{pull_command(root, force=True)}` first"
            )
    now = package_versions()
    for name, version in sorted(now.items()):
        then = tags.get(f"deepmine.version.{name}")
        if then is not None and then != version and name != "deepmine":
            result.version_diffs.append((name, then, version))
    threads = tags.get("deepmine.torch.num_threads")
    if threads:
        import torch

        here = torch.get_num_threads()
        if threads != str(here):
            result.warnings.append(
                f"the run used {threads} torch threads, this machine gives {here}: float sums "
                "may differ in the last digits"
            )
    return result


@contextlib.contextmanager
def _worktree(root: Path, commit: str):
    import tempfile

    if commit == "unknown":
        raise DeepmineError("the run recorded no git commit", "re-run it without --checkout")
    with tempfile.TemporaryDirectory(prefix="deepmine-reproduce-") as tmp:
        path = Path(tmp) / commit[:12]
        added = subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(path), commit],
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise DeepmineError(
                f"cannot check out commit {commit}: {added.stderr.strip().splitlines()[-1:]}",
                "fetch the commit (git fetch) or re-run without --checkout",
            )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(path)],
                capture_output=True,
                check=False,
            )


def _print_metric_diff(original, again) -> bool:
    before, after = original.data.metrics, again.data.metrics
    keys = sorted(set(before) | set(after))
    identical = True
    lines = [
        f"{'metric':24} {'original':>12} {'reproduced':>12} {'difference':>12}",
    ]
    for key in keys:
        a, b = before.get(key), after.get(key)
        same = a == b
        # wall times (time/epoch_s) measure the machine at that moment, not the result
        timing = key.startswith("time/")
        identical &= same or timing
        diff = "identical" if same else ("missing" if a is None or b is None else f"{b - a:+.3g}")
        if timing and not same:
            diff = "timing"
        shown = [f"{v:12.6f}" if v is not None else f"{'-':>12}" for v in (a, b)]
        lines.append(f"{key:24} {shown[0]} {shown[1]} {diff:>12}")
    print("\n".join(lines), flush=True)
    verdict = "all metrics identical" if identical else "metrics differ"
    print(f"{verdict}: run {again.info.run_id} re-ran {original.info.run_id}", flush=True)
    return identical
