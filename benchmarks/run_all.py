# ruff: noqa: E501  (Markdown table rows)
"""Run every benchmark, one after another (never two at once: they time this machine), then
rewrite the generated blocks of BENCHMARKS.md from benchmarks/results/*.json: the results
section and the cost curve. A block whose results files are not all there is left as it is (a
partial or fresh checkout must not wipe published numbers); the text around the blocks is
written by hand and never touched.

    python benchmarks/run_all.py            # all (about 40 minutes on 2 cores)
    python benchmarks/run_all.py --render   # only rewrite BENCHMARKS.md from saved results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from scale import table as scale_table  # noqa: E402

RESULTS_FILES = [
    "epoch_time_seed_mlp_b32_mlflow", "epoch_time_cnn_b128_mlflow", "lightning_floor",
    "logging_overhead_seed_mlp_b32", "first_step", "memory", "speedrun", "sweep_overhead",
]  # fmt: skip
COST_CURVE_FILES = [
    "cost_curve_batch", "scale", "cost_curve_sweep", "cost_curve_ddp",
    "steps_per_call_seed_mlp_b32_wall", "steps_per_call_seed_mlp_b32_cpu", "steps_per_call_cnn_b128_cpu",
]  # fmt: skip

# fmt: off
BENCHMARKS = [
    ["epoch_time.py", "--net", "seed_mlp", "--batch-size", "32", "--epochs", "3", "--rounds", "3"],
    ["epoch_time.py", "--net", "cnn", "--batch-size", "128", "--epochs", "2", "--rounds", "2"],
    ["lightning_floor.py"],
    ["logging_overhead.py", "--net", "seed_mlp", "--batch-size", "32"],
    ["first_step.py", "--trials", "5"],
    ["memory.py"],
    ["speedrun.py", "--seeds", "0", "1"],
    ["sweep_overhead.py"],
    ["cost_curve.py"],
    ["scale.py"],
    ["steps_per_call.py", "--net", "seed_mlp", "--batch-size", "32", "--epochs", "2", "--rounds", "3", "--callbacks", "--clock", "wall"],
    # the same in CPU time, one thread: what the work costs, whatever else the machine runs
    ["steps_per_call.py", "--net", "seed_mlp", "--batch-size", "32", "--epochs", "2", "--rounds", "3", "--clock", "cpu"],
    ["steps_per_call.py", "--net", "cnn", "--batch-size", "128", "--epochs", "2", "--rounds", "2", "--clock", "cpu"],
    # issue 25's before/after: the tree before it, timed in the same rounds
    ["tiny_run.py", "--rounds", "5", "--before-commit", "e5ada8a"],
    ["csv_scale.py", "--memory-limit-mb", "800", "--times", "3", "--columns", "160", "--chunk-rows", "5000", "--prepare-only"],
]
#: environment a benchmark runs with, beyond this process's (keyed by its index in BENCHMARKS)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
BENCHMARK_ENV = {len(BENCHMARKS) - 4: ONE_THREAD, len(BENCHMARKS) - 3: ONE_THREAD}
# fmt: on


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    # the script as run from the repository root, wherever the checkout was
    result["command"] = re.sub(r"\S*/(benchmarks/)", r"\1", result.get("command", ""))
    return result


def render() -> str:
    lines = []
    machine = None
    rows = []
    for net, batch, target in (("seed_mlp", 32, 1.5), ("cnn", 128, 1.05)):
        r = load(f"epoch_time_{net}_b{batch}_mlflow")
        if r:
            machine = machine or r["machine"]
            met = "met" if r["ratio"] <= target else f"missed by {r['ratio'] / target - 1:.1%}"
            rows.append(
                f"| {net}, batch {batch}, logger=mlflow | {r['median_hand_written_s']:.3f} s "
                f"| {r['median_deepmine_s']:.3f} s | **{r['ratio']:.3f}** | <= {target} | {met} "
                f"| `{r['command']}` |"
            )
    if rows:
        lines += ["### 1. Epoch time, deepmine vs hand-written loop", "",
                  "| run | hand-written (median) | deepmine (median) | ratio | target | | command |",
                  "|---|---|---|---|---|---|---|", *rows, ""]  # fmt: skip
    r = load("lightning_floor")
    if r:
        m = r["median_s"]
        lines += ["Lightning's floor for the seed MLP at batch 32 (`python benchmarks/lightning_floor.py`: a bare "
                  "LightningModule, no metrics/callbacks/logger/validation): hand-written "
                  f"{m['hand_written']:.3f} s, automatic optimization {m['automatic']:.3f} s "
                  f"(**{m['automatic'] / m['hand_written']:.2f}**), manual {m['manual']:.3f} s "
                  f"(**{m['manual'] / m['hand_written']:.2f}**).", ""]  # fmt: skip
    r = load("logging_overhead_seed_mlp_b32")
    if r:
        met = "met" if r["ratio"] <= 1.03 else f"missed by {r['ratio'] / 1.03 - 1:.1%}"
        lines += ["### 2. Logging overhead", "",
                  "| run | logger=none (median) | logger=mlflow (median) | ratio | target | | metrics in the store (run 1) | command |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| seed_mlp, batch 32 | {r['median_none_s']:.3f} s | {r['median_mlflow_s']:.3f} s "
                  f"| **{r['ratio']:.3f}** | <= 1.03 | {met} | {r['metrics_counted'][0]} | `{r['command']}` |",
                  ""]  # fmt: skip
    r = load("first_step")
    if r:
        lines += [
            "### 3. Time to first training step",
            "",
            "| phase | took | at |",
            "|---|---|---|",
        ]
        previous = 0.0  # in the order they happened (results saved before first_step.py sorted)
        for p in sorted(r["phases"], key=lambda p: p["at_s"]):
            lines.append(f"| {p['phase']} | {p['at_s'] - previous:.3f} s | {p['at_s']:.3f} s |")
            previous = p["at_s"]
        lines += ["",
                  f"First step at **{r['first_step_s']:.2f} s**; a bare `import torch, lightning.pytorch` "
                  f"takes {r['bare_import_s']:.2f} s, so deepmine adds **{r['beyond_bare_import_s']:.2f} s** "
                  f"(target < 2 s). `deepmine --help`: **{r['help_s']:.3f} s** (target < 1 s). "
                  f"Command: `{r['command']}`.", ""]  # fmt: skip
    r = load("memory")
    if r:
        lines += [
            "### 4. Peak memory",
            "",
            "| run | max RSS | wall | target |",
            "|---|---|---|---|",
        ]
        lines += [f"| {name} | **{v['max_rss_mb']:.0f} MB** | {v['wall_s']:.1f} s | < 1536 MB |"
                  for name, v in r["runs"].items()]  # fmt: skip
        lines += ["", f"Command: `{r['command']}`.", ""]
    r = load("speedrun")
    if r:
        lines += ["### 5. Time to accuracy (`experiment=fashion_mnist_speedrun`)", "",
                  "| budget | seed | test/acc | training (fit) | epochs |", "|---|---|---|---|---|"]  # fmt: skip
        for s in r["short"]:
            lines.append(
                f"| 60 s | {s['overrides'][0]} | **{s['test_acc']:.4f}** | {s['fit_s']:.1f} s | {s['epochs']} |"
            )
        lo = r["long"]
        lines.append(
            f"| 5 min | {lo['overrides'][0]} ({' '.join(lo['overrides'][1:])}) | **{lo['test_acc']:.4f}** | {lo['fit_s']:.1f} s | {lo['epochs']} |"
        )
        lines += ["", f"Target (>= 0.916 within 60 s): {'met' if r['met'] else 'not met'}. Command: `{r['command']}`.", ""]  # fmt: skip
    r = load("sweep_overhead")
    if r:
        lines += ["### 6. Sweep overhead (4 jobs, `" + " ".join(r["jobs"]) + "`)", "",
                  "| mode | sweep wall | training, all jobs | overhead per job |", "|---|---|---|---|"]  # fmt: skip
        for name, m in r["modes"].items():
            lines.append(
                f"| {name} | {m['wall_s']:.1f} s | {sum(m['fit_s']):.1f} s | **{m['overhead_per_job_s']:.2f} s** |"
            )
        lines += ["", f"Command: `{r['command']}`.", ""]
    if machine:
        lines.insert(0, f"Machine: {machine['cores']} cores ({machine['cpu']}), Python {machine['python']}, "
                        f"torch {machine['torch']} ({machine['torch_threads']} threads), lightning "
                        f"{machine['lightning']}, mlflow {machine['mlflow']}.\n")  # fmt: skip
    return "\n".join(lines)


def render_cost_curve() -> str:
    """The cost curve: epoch time against batch size and dataset size, sweep wall time against
    jobs, DDP against one process, and Lightning's per-step tax with `task.steps_per_call`."""
    lines = []
    r = load("cost_curve_batch")
    lines += [f"#### Epoch time vs batch size (seed_mlp, Fashion-MNIST, {r['rounds']} rounds × {r['epochs']} epochs, medians)", "",
              "| batch | steps / epoch | hand-written | deepmine (logger=mlflow) | ratio |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for p in r["points"]:
        lines.append(
            f"| {p['batch_size']} | {-(-54_000 // p['batch_size']):,} | {p['median_hand_written_s']:.3f} s "
            f"| {p['median_deepmine_s']:.3f} s | **{p['ratio']:.2f}** |"
        )
    lines += ["", f"Command: `{r['command']}`.", ""]
    r = load("scale")
    lines += [f"#### Epoch time vs dataset size ({r['net']}, batch {r['batch_size']}, median epoch after the first of {r.get('epochs', 2)})", "",
              scale_table(r["points"], r.get("memory_limit_mb")), "", f"Command: `{r['command']}`.", ""]  # fmt: skip
    r = load("cost_curve_sweep")
    overrides = r["points"][0]["overrides"]
    lines += [f"#### Sweep wall time vs jobs (`deepmine train -m {' '.join(overrides[:2])} seed=0,...`, one process per sweep, start-up included)", "",
              "| jobs | sequential: wall | per job | joblib, 2 workers: wall | per job | training (fit), sum of jobs: sequential / joblib |",
              "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    by_jobs: dict[int, dict] = {}
    for p in r["points"]:
        by_jobs.setdefault(p["jobs"], {})[p["mode"]] = p
    for jobs, modes in by_jobs.items():
        seq, par = modes["sequential"], modes["joblib, 2 workers"]
        lines.append(
            f"| {jobs} | {seq['wall_s']:.1f} s | **{seq['per_job_s']:.2f} s** | {par['wall_s']:.1f} s "
            f"| **{par['per_job_s']:.2f} s** | {sum(seq['fit_s']):.1f} s / {sum(par['fit_s']):.1f} s |"
        )
    lines += ["", f"Command: `{r['command']}`.", ""]
    r = load("cost_curve_ddp")
    lines += ["#### DDP, 2 CPU processes vs 1 (one epoch of Fashion-MNIST, batch size per process)", "",
              "| net, batch | run | epoch (rank 0) | samples / s | vs 1 process, 2 threads | `trainer.fit` (rank 0) | test/acc |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    base = {p["net"]: p["samples_per_s"] for p in r["points"] if p["run"] == "1 process, 2 threads"}
    for p in r["points"]:
        acc = f"{p['test_acc']:.4f}" if p.get("test_acc") is not None else ""
        lines.append(
            f"| {p['net']}, {p['batch_size']} | {p['run']} | {p['epoch_s']:.2f} s | {p['samples_per_s']:,.0f} "
            f"| **{p['samples_per_s'] / base[p['net']]:.2f}** | {p['fit_s']:.1f} s | {acc} |"
        )
    lines += ["", f"Command: `{r['command']}`.", ""]
    lines += ["#### Lightning's per-step tax: `task.steps_per_call` (medians; ratios to the hand-written loop "
              "and to the hand-written loop doing the same work)", "",
              "| net, batch, clock | run | epoch | ratio | ratio to the same work |", "|---|---|---:|---:|---:|"]  # fmt: skip
    commands = []
    for name, label in (("steps_per_call_seed_mlp_b32_cpu", "seed_mlp, 32, CPU time (1 thread)"),
                        ("steps_per_call_cnn_b128_cpu", "cnn, 128, CPU time (1 thread)"),
                        ("steps_per_call_seed_mlp_b32_wall", "seed_mlp, 32, wall clock")):  # fmt: skip
        r = load(name)
        same = r.get("ratio_same_work", {})
        for run, seconds in r["median_s"].items():
            to_same = f"{same[run]:.2f}" if run in same else "–"
            lines.append(
                f"| {label} | {run} | {seconds:.3f} s | **{r['ratio'][run]:.2f}** | {to_same} |"
            )
        commands.append(f"`{r['command']}`")
    lines += [
        "",
        f"Commands: {'; '.join(commands)} (the CPU-time ones with `OMP_NUM_THREADS=1`).",
        "",
    ]
    return "\n".join(lines)


ROUND_3_FILES = [
    "steps_per_call_seed_mlp_b32_cpu", "steps_per_call_cnn_b128_cpu", "tiny_run", "csv_scale",
]  # fmt: skip


def render_round_3() -> str:
    """Issue 25's targets, each measured before and after in one run (see the text above the
    block for the suite's times, which no benchmark script takes)."""
    lines = ["| target | before | after | target | | command |", "|---|---:|---:|---:|---|---|"]

    def row(name, before, after, target, command, unit="x"):
        met = "met" if after <= target else f"missed by {after / target - 1:.0%}"
        fmt = (lambda v: f"{v:.2f}×") if unit == "x" else (lambda v: f"{v:.2f} s")
        lines.append(
            f"| {name} | {fmt(before)} | **{fmt(after)}** | ≤ {fmt(target)} | {met} | `{command}` |"
        )

    for net, batch, targets in (("seed_mlp", 32, (1.15, 1.05)), ("cnn", 128, (1.02, None))):
        r = load(f"steps_per_call_{net}_b{batch}_cpu")
        default = next(k for k in r["ratio"] if k.startswith("default"))
        row(
            f"`deepmine train` {net}, batch {batch}, CPU time / hand-written loop (before: k=1)",
            r["ratio"]["k=1"],
            r["ratio"][default],
            targets[0],
            r["command"],
        )
        if targets[1]:
            same = r["ratio_same_work"]
            row(
                f"{net}, batch {batch}, / the same-work loop",
                same["k=1"],
                same[default],
                targets[1],
                r["command"],
            )
            per_batch = next(k for k in r["ratio"] if "a fetch per batch" in k)
            lines.append(
                f"| {net}, batch {batch}: k=8 fetched batch by batch (the k-batch loop before blocks) "
                f"| | {r['ratio'][per_batch]:.2f}× ({same[per_batch]:.2f}× same work) | | | |"
            )
    r = load("tiny_run")
    if "before" in r:
        before, after = r["before"], r["current"]
        command = r["command"]
        row(
            "tiny run (`data=digits debug=fast`) / bare `import torch, lightning, mlflow`",
            before["tiny_over_import"],
            after["tiny_over_import"],
            1.3,
            command,
        )
        row(
            "each further job of a sequential 4-job sweep",
            before["per_further_job_s"],
            after["per_further_job_s"],
            0.5,
            command,
            unit="s",
        )
    r = load("csv_scale")
    fate = "killed" if r.get("killed") else "not killed"
    lines += ["", f"CSV larger than memory (`data.storage={r['storage']}`"
              f"{', preparation only' if r['prepare_only'] else ''}): {r['csv_mb']:.0f} MB, "
              f"{r['rows']:,} rows × {r['columns']} columns, under a {r['memory_limit_mb']} MB cgroup: "
              f"**{fate}**, peak RSS {r['max_rss_mb']:.0f} MB, {r['wall_s']:.0f} s. Command: `{r['command']}`.",
              "", "The CPU-time rows ran with `OMP_NUM_THREADS=1` (one thread's work, whatever else the machine runs)."]  # fmt: skip
    return "\n".join(lines)


BLOCKS = {  # marker name: (renderer, the results files it reads)
    "results": (render, RESULTS_FILES),
    "cost-curve": (render_cost_curve, COST_CURVE_FILES),
    "round-3": (render_round_3, ROUND_3_FILES),
}


def write(name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.is_file() else "# Benchmarks\n"
    if begin not in current:
        current += f"\n{begin}\n{end}\n"
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="only rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if not args.render:
        for index, benchmark in enumerate(BENCHMARKS):
            extra = BENCHMARK_ENV.get(index, {})
            print(
                f"== {' '.join([*(f'{k}={v}' for k, v in extra.items()), *benchmark])}", flush=True
            )
            subprocess.run([sys.executable, str(HERE / benchmark[0]), *benchmark[1:]], check=True,
                           cwd=ROOT, env={**os.environ, **extra})  # fmt: skip
    for name, (renderer, files) in BLOCKS.items():
        missing = [f for f in files if not (RESULTS / f"{f}.json").is_file()]
        if missing:
            print(f"kept the {name} block of BENCHMARKS.md as it is: no results for {missing}")
            continue
        write(name, renderer())
        print(f"wrote the {name} block of {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
