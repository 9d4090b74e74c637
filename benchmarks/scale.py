"""Benchmark: epoch time and peak RSS as Fashion-MNIST grows (1×, 4×, 16×), memory vs mmap.

python benchmarks/scale.py [--scales 1 4 16] [--storages memory mmap] [--net seed_mlp]

Each point is one real `deepmine train data=fashion_mnist data.storage=<storage>
data.data_dir=<N× set> trainer.max_epochs=3` in its own process under `/usr/bin/time -v`, in a
memory cgroup limited to 1024 MB (`--memory-limit-mb`), page cache included
(peak RSS: "Maximum resident set size"); its epoch time is the median `time/epoch_s` of the
epochs after the first (training pass plus validation pass, from metrics.json): the first
carries one-time costs (allocator and thread-pool warm-up) that would inflate the per-sample
time of small sets.
The N× sets are written by the same code as `deepmine data synth`
(`deepmine.data.synth.write_scaled`), but into a temporary folder, not into data/: a benchmark
must not re-pin the project's data. Their decoded-array cache is built once per set before any
point is timed, so every run starts from the same warm `.npy` files and no run's RSS includes
the one-time gzip decoding. Temporary files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save, temp_store

TRAIN_1X = 54_000  # Fashion-MNIST's 60k training images less the 10% validation split


def build_cache(data_dir: Path, cache_dir: Path) -> None:
    """Decode the set once into the cache (in a child process, so its memory is not ours)."""
    code = (
        "from deepmine.data.fashion_mnist import FashionMNISTDataModule as D;"
        f"D(data_dir={str(data_dir)!r}, cache_dir={str(cache_dir)!r}, storage='mmap',"
        " num_classes=10, input_shape=[1, 28, 28]).setup()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


class MemoryCgroup:
    """A child of this process's memory cgroup with a hard limit (cgroup v1
    `memory.limit_in_bytes`, or v2 `memory.max`); a process started with `join` as its
    `preexec_fn` runs, with its children, inside it. The limit counts the page cache too: a
    set larger than the limit cannot stay cached, so its pages are read from disk again."""

    def __init__(self, limit_mb: int):
        self.limit_mb = limit_mb
        self.path, limit_file = self._make_child()
        (self.path / limit_file).write_text(str(limit_mb * 2**20))

    @staticmethod
    def _make_child() -> tuple[Path, str]:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        entries = [line.split(":", 2) for line in lines]  # id, controllers, path
        v1 = [path for _, controllers, path in entries if "memory" in controllers.split(",")]
        if v1:
            parent, limit_file = (
                Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/"),
                "memory.limit_in_bytes",
            )
        else:
            v2 = next(path for _, controllers, path in entries if controllers == "")
            parent, limit_file = Path("/sys/fs/cgroup") / v2.lstrip("/"), "memory.max"
        child = parent / f"deepmine-scale-{os.getpid()}"
        try:
            child.mkdir()
            if not (child / limit_file).exists():
                child.rmdir()
                raise OSError(f"{parent} does not delegate {limit_file}")
        except OSError as error:
            raise SystemExit(
                f"--memory-limit-mb needs a writable memory cgroup ({error}); run as root in a "
                "container that delegates it, or pass --memory-limit-mb 0 (no limit)"
            ) from error
        return child, limit_file

    def join(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> float | None:
        """The group's peak usage since the last `reset` (v1 only: RSS and page cache)."""
        peak = self.path / "memory.max_usage_in_bytes"
        return int(peak.read_text()) / 2**20 if peak.exists() else None

    def reset(self) -> None:
        peak = self.path / "memory.max_usage_in_bytes"
        if peak.exists():
            peak.write_text("0")

    def remove(self) -> None:
        self.path.rmdir()  # empty: every process run in it has exited


def measured(command: list[str], cgroup: MemoryCgroup | None = None):
    """`command` run under `/usr/bin/time -v` (and in `cgroup`, reset first): the finished
    process and its point (peak RSS, the group's peak, whether the kernel killed it for
    memory, which under a limit is a result, not an error)."""
    if cgroup is not None:
        cgroup.reset()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=cgroup.join if cgroup is not None else None,
    )
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    point = {"max_rss_mb": int(rss.group(1)) / 1024 if rss else float("nan")}
    if cgroup is not None:
        point["cgroup_peak_mb"] = cgroup.peak_mb()
    point["killed"] = cgroup is not None and "terminated by signal 9" in proc.stderr
    return proc, point


def run_point(overrides: list[str], store: str, cgroup: MemoryCgroup | None = None) -> dict:
    """One training run; its epoch time (median after the first) and peak RSS. Under a memory
    limit a run the kernel kills for memory is a result (`"killed": true`), not an error."""
    out = Path(tempfile.mkdtemp(prefix="deepmine-scale-run-"))
    command = [
        sys.executable, "-m", "deepmine", "train", *overrides,
        f"hydra.run.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
    ]  # fmt: skip
    try:
        proc, point = measured(command, cgroup)
        if point["killed"]:
            return {**point, "epoch_s": float("nan")}
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    later = summary["epoch_seconds"][1:]  # the first carries one-time costs (docstring)
    return {**point, "epoch_s": statistics.median(later)}


def table(rows: list[dict], memory_limit_mb: int | None = None) -> str:
    base = {
        r["storage"]: r["us_per_sample"] for r in rows if r["scale"] == 1 and not r.get("killed")
    }
    limit = f" under a {memory_limit_mb} MB limit" if memory_limit_mb else ""
    lines = [
        "| size | train samples | decoded data (MB) | storage | epoch (s) | µs / sample | vs 1× "
        f"| peak RSS (MB) | peak memory{limit}, page cache included (MB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        data = f"{r['data_mb']:.0f}" if "data_mb" in r else "–"
        peak = f"{r['cgroup_peak_mb']:.0f}" if r.get("cgroup_peak_mb") else "–"
        if r.get("killed"):
            lines.append(
                f"| {r['scale']}× | {r['train_samples']:,} | {data} | {r['storage']} | "
                f"killed: out of memory | | | {r['max_rss_mb']:.0f} | {peak} |"
            )
            continue
        ratio = r["us_per_sample"] / base[r["storage"]] if r["storage"] in base else float("nan")
        lines.append(
            f"| {r['scale']}× | {r['train_samples']:,} | {data} | {r['storage']} | "
            f"{r['epoch_s']:.1f} | {r['us_per_sample']:.1f} | {ratio:.2f} | "
            f"{r['max_rss_mb']:.0f} | {peak} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--storages", nargs="+", default=["memory", "mmap"])
    parser.add_argument("--net", default="seed_mlp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per point (>= 2)")
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=1024,
        help="run every point in a memory cgroup with this limit (page cache included); "
        "0: no limit",
    )
    args = parser.parse_args()
    cgroup = MemoryCgroup(args.memory_limit_mb) if args.memory_limit_mb else None
    from deepmine.data.synth import write_scaled

    store = temp_store()
    work = Path(tempfile.mkdtemp(prefix="deepmine-scale-"))
    source = ROOT / "data" / "fashion_mnist"
    rows = []
    try:
        for scale in args.scales:
            data_dir = source if scale == 1 else work / f"fashion_mnist_x{scale}"
            if scale != 1:
                write_scaled(source, data_dir, scale, seed=0)
            cache = work / f"cache_x{scale}"
            build_cache(data_dir, cache)
            data_mb = sum(f.stat().st_size for f in cache.rglob("*.npy")) / 2**20
            for storage in args.storages:
                overrides = [
                    "data=fashion_mnist", f"data.data_dir={data_dir}", f"data.cache_dir={cache}",
                    f"data.storage={storage}", f"net={args.net}",
                    f"data.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}",
                ]  # fmt: skip
                point = run_point(overrides, store, cgroup)
                samples = TRAIN_1X * scale
                row = {
                    "scale": scale,
                    "storage": storage,
                    "train_samples": samples,
                    "data_mb": data_mb,
                    **point,
                    "us_per_sample": point["epoch_s"] / samples * 1e6,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            if scale != 1:
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cgroup is not None:
            cgroup.remove()
    print(table(rows, args.memory_limit_mb))
    save(
        "scale",
        {
            "net": args.net,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "memory_limit_mb": args.memory_limit_mb or None,
            "points": rows,
        },
    )


if __name__ == "__main__":
    main()
