"""Benchmark 3: time to the first training step of `deepmine train`, and where it goes.

Each trial is a fresh process (a warm page cache, as on a researcher's machine after the first
run): the launch-to-CLI time (interpreter, `deepmine.cli`), then deepmine's own start-up marks
(deepmine.runtime.timeline, in the run's metrics.json). Compared with the bare `import torch,
lightning.pytorch` of a fresh interpreter, and `deepmine --help`.

    python benchmarks/first_step.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, median, save, temp_store

PYTHON = sys.executable
PHASES = [
    ("cli_start", "interpreter + deepmine.cli"),
    ("composed", "Hydra: compose the config"),
    ("imported", "import torch + lightning (the datamodule class)"),
    ("data_checked", "DVC: check data/ against data.dvc"),
    ("store_ready", "MLflow: import, open the store"),
    ("built", "build datamodule, net, trainer"),
    ("run_opened", "MLflow: create the run, log config"),
    ("data_loaded", "load the dataset (.npy cache)"),
    ("first_step", "sanity check, first step"),
]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def one_run(store: str) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="deepmine-first-step-"))
    command = [
        PYTHON, "-m", "deepmine", "train", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "trainer.num_sanity_val_steps=2", f"hydra.run.dir={out}", f"logger.tracking_uri={store}",
        "print_config=false",
    ]  # fmt: skip
    launched = time.time()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    startup = json.loads((out / "metrics.json").read_text())["startup"]
    marks = {"cli_start": startup["cli_start_unix"] - launched}
    for name, _ in PHASES[1:]:
        marks[name] = marks["cli_start"] + startup[name]
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    store = temp_store()
    one_run(store)  # warm the page cache, the decoded-data cache and the store's schema
    trials = [one_run(store) for _ in range(args.trials)]
    bare = [timed([PYTHON, "-c", "import torch, lightning.pytorch"]) for _ in range(args.trials)]
    help_s = [timed([PYTHON, "-m", "deepmine", "--help"]) for _ in range(args.trials)]
    at = {name: median([t[name] for t in trials]) for name, _ in PHASES}
    phases, previous = [], 0.0
    # in the order they happened (the dataset is read while the parts are built)
    for name, label in sorted(PHASES, key=lambda phase: at[phase[0]]):
        phases.append(
            {"phase": label, "mark": name, "at_s": at[name], "took_s": at[name] - previous}
        )
        previous = at[name]
    first_step, bare_import = at["first_step"], median(bare)
    for p in phases:
        print(f"{p['phase']:45s} {p['took_s']:6.3f} s   (at {p['at_s']:.3f} s)")
    print(
        f"first step {first_step:.3f} s; bare torch+lightning import {bare_import:.3f} s; "
        f"beyond it {first_step - bare_import:.3f} s; deepmine --help {median(help_s):.3f} s"
    )
    save(
        "first_step",
        {
            "phases": phases,
            "first_step_s": first_step,
            "bare_import_s": bare_import,
            "beyond_bare_import_s": first_step - bare_import,
            "help_s": median(help_s),
            "trials": trials,
        },
    )


if __name__ == "__main__":
    main()
