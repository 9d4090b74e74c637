"""The cost curve: how deepmine's time grows with the work, measured side by side in one run.

    python benchmarks/cost_curve.py                      # all three parts (~6 min on 2 cores)
    python benchmarks/cost_curve.py --parts batch sweep  # some of them

- batch: epoch time of the seed MLP on Fashion-MNIST at batch 32 ... 1024, `deepmine train`
  (default settings, logger=mlflow into a temporary store, in this process, as epoch_time.py)
  against the hand-written loop (common.py), interleaved per batch size; ratio of medians.
- sweep: wall time of `deepmine train -m data=digits trainer.max_epochs=1 seed=0,...,n-1` for
  n = 1, 2, 4, 8, one job after another (the basic launcher) and `launcher=joblib` (2 workers);
  each sweep a fresh process, as a researcher would start it, so it includes the start-up.
- ddp: one epoch of `trainer=ddp` (2 gloo processes, one torch thread each: deepmine sets
  OMP_NUM_THREADS to cores / ranks) against one process with torch's 2 threads and with 1;
  each run a fresh process. Throughput is samples of the epoch (training + validation pass,
  `time/epoch_s` of rank 0) per second; the batch size is per process, so DDP's optimizer step
  sees twice the samples.

Epoch time against dataset size is benchmarks/scale.py's; run_all.py renders both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, deepmine_run, hand_written_epochs, median, save, temp_store

BATCH_SIZES = [32, 64, 128, 256, 512, 1024]
SWEEP_JOBS = [1, 2, 4, 8]
SWEEP_MODES = {
    "sequential": [],
    "joblib, 2 workers": ["launcher=joblib", "hydra.launcher.n_jobs=2"],
}
DDP_RUNS = {
    "1 process, 2 threads": ([], {}),
    "1 process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "2 processes (trainer=ddp), 1 thread each": (["trainer=ddp"], {}),
}
FASHION_MNIST_EPOCH_SAMPLES = 60_000  # 54,000 training + 6,000 validation images


def batch_part(epochs: int, rounds: int, store: str) -> dict:
    points = []
    for batch in BATCH_SIZES:
        overrides = [
            "net=seed_mlp",
            f"data.batch_size={batch}",
            f"trainer.max_epochs={epochs}",
            "logger=mlflow",
        ]
        hand, framework = [], []
        for round_ in range(rounds):
            hand += hand_written_epochs("seed_mlp", batch, epochs, seed=round_)
            framework += deepmine_run([*overrides, f"seed={round_}"], store)["epoch_seconds"]
        point = {
            "batch_size": batch,
            "hand_written_epoch_s": hand,
            "deepmine_epoch_s": framework,
            "median_hand_written_s": median(hand),
            "median_deepmine_s": median(framework),
            "ratio": median(framework) / median(hand),
            "overrides": overrides,
        }
        points.append(point)
        print(
            f"batch {batch:5d}: hand-written {point['median_hand_written_s']:.3f} s, "
            f"deepmine {point['median_deepmine_s']:.3f} s, ratio {point['ratio']:.2f}",
            flush=True,
        )
    return {"net": "seed_mlp", "epochs": epochs, "rounds": rounds, "points": points}


def sweep_once(jobs: int, extra: list[str], store: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="deepmine-cost-sweep-"))
    seeds = ",".join(str(s) for s in range(jobs))
    overrides = ["data=digits", "trainer.max_epochs=1", f"seed={seeds}", *extra]
    command = [
        sys.executable, "-m", "deepmine", "train", "-m", *overrides,
        f"hydra.sweep.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
        "experiment_name=cost_curve",
    ]  # fmt: skip
    try:
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
        fits = [json.loads(p.read_text())["fit_seconds"] for p in out.glob("*/metrics.json")]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if len(fits) != jobs:
        raise SystemExit(f"expected {jobs} jobs, found {len(fits)}")
    return {"jobs": jobs, "overrides": overrides, "wall_s": wall, "fit_s": fits}


def sweep_part(store: str) -> dict:
    points = []
    for jobs in SWEEP_JOBS:
        for mode, extra in SWEEP_MODES.items():
            point = {"mode": mode, **sweep_once(jobs, extra, store)}
            point["per_job_s"] = point["wall_s"] / jobs
            points.append(point)
            print(
                f"{jobs} jobs, {mode:18s}: wall {point['wall_s']:.1f} s, "
                f"{point['per_job_s']:.2f} s a job",
                flush=True,
            )
    return {"points": points}


def ddp_once(overrides: list[str], env: dict, store: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="deepmine-cost-ddp-"))
    command = [
        sys.executable, "-m", "deepmine", "train", *overrides,
        f"hydra.run.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
    ]  # fmt: skip
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    epoch = summary["epoch_seconds"][-1]
    return {
        "epoch_s": epoch,
        "fit_s": summary["fit_seconds"],
        "wall_s": wall,
        "samples_per_s": FASHION_MNIST_EPOCH_SAMPLES / epoch,
        "test_acc": summary.get("metrics", {}).get("test/acc"),
    }


def ddp_part(nets: list[str], store: str) -> dict:
    points = []
    for net in nets:
        batch = 32 if net == "seed_mlp" else 128
        base = [f"net={net}", f"data.batch_size={batch}", "trainer.max_epochs=1"]
        for name, (extra, env) in DDP_RUNS.items():
            overrides = [*base, *extra]
            point = {"net": net, "batch_size": batch, "run": name, "env": env,
                     "overrides": overrides, **ddp_once(overrides, env, store)}  # fmt: skip
            points.append(point)
            print(
                f"{net} batch {batch} {name:42s}: epoch {point['epoch_s']:.2f} s, "
                f"{point['samples_per_s']:.0f} samples/s, wall {point['wall_s']:.1f} s",
                flush=True,
            )
    return {"points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["batch", "sweep", "ddp"],
                        choices=["batch", "sweep", "ddp"])  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (batch part)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (batch part)")
    parser.add_argument("--ddp-nets", nargs="+", default=["seed_mlp", "cnn"],
                        choices=["seed_mlp", "cnn"])  # fmt: skip
    args = parser.parse_args()
    store = temp_store()
    parts = {
        "batch": lambda: batch_part(args.epochs, args.rounds, store),
        "sweep": lambda: sweep_part(store),
        "ddp": lambda: ddp_part(args.ddp_nets, store),
    }
    for part in args.parts:  # one results file per part: run_all.py renders each on its own
        print(f"wrote {save(f'cost_curve_{part}', parts[part]())}", flush=True)


if __name__ == "__main__":
    main()
