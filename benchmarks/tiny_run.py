"""Benchmark: what a tiny run and each further job of a small sweep cost, against the bare
`import torch, lightning, mlflow` every run pays anyway (issue 25).

Every case is a whole process, timed from launch to exit, as a researcher waits for it:

- import:  `python -c "import torch, lightning, mlflow"`
- tiny:    `deepmine train data=digits debug=fast` into a fresh temporary SQLite store
- sweep 1: `deepmine train -m data=digits debug=fast seed=0` (fresh store)
- sweep 4: `deepmine train -m data=digits debug=fast seed=0,1,2,3` (fresh store);
           per further job = (sweep 4 - sweep 1) / 3

Why paired and alternated: the machine is shared, so its load drifts; each round runs every
case (and every checkout) once, in reverse order on odd rounds, and the medians over rounds are
compared. `--before-src DIR` times a second source tree (e.g. `git archive <commit> | tar -x -C
DIR`) with the same interpreter in the same rounds, so before/after numbers share the load.

    python benchmarks/tiny_run.py [--rounds 5] [--python PATH] [--before-src DIR]
    python benchmarks/tiny_run.py --before-commit e5ada8a   # the tree before issue 25
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, median, save

TINY = ["data=digits", "debug=fast"]
CASES = ("import", "tiny", "sweep1", "sweep4")


def _command(case: str, python: str, out: Path) -> list[str]:
    if case == "import":
        return [python, "-c", "import torch, lightning, mlflow"]
    if case == "tiny":
        return [python, "-m", "deepmine", "train", *TINY, f"hydra.run.dir={out}"]
    seeds = "0" if case == "sweep1" else "0,1,2,3"
    return [
        python, "-m", "deepmine", "train", "-m", *TINY, f"seed={seeds}",
        f"hydra.sweep.dir={out}",
    ]  # fmt: skip


def _env(src: str | None, store: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONDONTWRITEBYTECODE": "1"}
    if src:  # the other tree's package wins over the venv's editable install
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def timed(case: str, python: str, src: str | None) -> float:
    """Seconds of one whole process of `case`, into a store and output folder of its own."""
    scratch = Path(tempfile.mkdtemp(prefix="deepmine-tiny-"))
    command = _command(case, python, scratch / "out")
    env = _env(src, f"sqlite:///{scratch}/mlflow.db")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def _which_deepmine(python: str, src: str | None) -> str:
    """The deepmine package an interpreter (and PYTHONPATH) imports: proof of what is timed."""
    code = "import deepmine; print(deepmine.__file__)"
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=_env(src, "sqlite://")
    )
    return done.stdout.strip()


def _unpacked(commit: str) -> str:
    """`commit`'s tree unpacked (`git archive`) into a temporary folder: its src/ path."""
    folder = Path(tempfile.mkdtemp(prefix=f"deepmine-{commit[:8]}-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return str(folder / "src")


def summarize(times: dict[str, list[float]], all_cases: bool) -> dict:
    med = {case: median(values) for case, values in times.items()}
    if not all_cases:
        return {"median_s": med, "times_s": times}
    return {
        "median_s": med,
        "tiny_over_import": med["tiny"] / med["import"],
        "per_further_job_s": (med["sweep4"] - med["sweep1"]) / 3,
        "times_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time")
    parser.add_argument("--before-src", help="a second source tree's src/, timed alongside")
    parser.add_argument(
        "--before-commit", help="a commit of this repository, unpacked and timed as --before-src"
    )
    parser.add_argument("--cases", default=",".join(CASES), help="a subset, comma-separated")
    args = parser.parse_args()
    variants = {"current": None}
    if args.before_commit:
        args.before_src = _unpacked(args.before_commit)
    if args.before_src:
        variants["before"] = str(Path(args.before_src).resolve())
    cases = args.cases.split(",")
    packages = {name: _which_deepmine(args.python, src) for name, src in variants.items()}
    for name, path in packages.items():
        print(f"{name:8s} deepmine from {path}", flush=True)
    plan = [(name, case) for case in cases for name in variants]
    times = {name: {case: [] for case in cases} for name in variants}
    timed(cases[-1], args.python, None)  # warm the page cache
    for round_ in range(args.rounds):
        for name, case in plan if round_ % 2 == 0 else plan[::-1]:
            seconds = timed(case, args.python, variants[name])
            times[name][case].append(seconds)
            print(f"round {round_} {name:8s} {case:7s} {seconds:6.2f} s", flush=True)
    result = {"rounds": args.rounds, "python": args.python, "packages": packages}
    if args.before_commit:
        result["before_commit"] = args.before_commit
    for name in variants:
        result[name] = summary = summarize(times[name], set(cases) == set(CASES))
        line = ", ".join(f"{case} {seconds:.2f} s" for case, seconds in summary["median_s"].items())
        if "tiny_over_import" in summary:
            line += (
                f"; tiny/import {summary['tiny_over_import']:.2f}x, "
                f"per further job {summary['per_further_job_s']:.2f} s"
            )
        print(f"{name:8s} medians: {line}")
    print(f"saved {save('tiny_run', result)}")


if __name__ == "__main__":
    main()
