"""Benchmark 6: what a 4-job multirun spends outside training, per job, run one after another
in one process and with `launcher=joblib` (2 workers).

Per job, "training" is `trainer.fit` (metrics.json's fit_seconds); the rest of the sweep's
wall time (start-up, composing, data checks, MLflow parent/child runs, testing, artifacts,
summary) is the overhead, divided over the jobs (with 2 workers, over twice the wall time).

    python benchmarks/sweep_overhead.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save, temp_store

JOBS = ["seed=0,1,2,3", "trainer.max_epochs=1"]
MODES = {"sequential": ([], 1), "joblib, 2 workers": (["launcher=joblib"], 2)}


def sweep(extra: list[str], store: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="deepmine-sweep-"))
    command = [
        sys.executable, "-m", "deepmine", "train", "-m", *JOBS, *extra,
        f"hydra.sweep.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
        "experiment_name=sweep_overhead",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    jobs = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
    if len(jobs) != 4:
        raise SystemExit(f"expected 4 jobs in {out}, found {len(jobs)}")
    return {"wall_s": wall, "fit_s": [j["fit_seconds"] for j in jobs]}


def main() -> None:
    store = temp_store()
    results = {}
    for name, (extra, workers) in MODES.items():
        measured = sweep(extra, store)
        overhead = (workers * measured["wall_s"] - sum(measured["fit_s"])) / 4
        results[name] = {**measured, "workers": workers, "overhead_per_job_s": overhead}
        print(
            f"{name:20s} wall {measured['wall_s']:6.1f} s, training "
            f"{sum(measured['fit_s']):6.1f} s in all, overhead {overhead:5.2f} s per job"
        )
    save("sweep_overhead", {"jobs": JOBS, "modes": results})


if __name__ == "__main__":
    main()
