"""`deepmine reproduce <claim>` and `--all`: run a claim's seeds as one recorded sweep, judge it.

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

import json
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from deepmine.errors import DeepmineError
from deepmine.project import project_root
from deepmine.provenance.secrets import mask_overrides
from deepmine.reproduce.claims import load
from deepmine.reproduce.report import (
    REPORT_FILE,
    Outcome,
    _previous,
    _reproduction_md,
    _row,
    report_markdown,
)


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
