"""Benchmark: epoch time and peak RSS as Fashion-MNIST grows (1×, 4×, 16×), memory vs mmap.

python benchmarks/scale.py [--scales 1 4 16] [--storages memory mmap] [--net seed_mlp]

Each point is one real `deepmine train data=fashion_mnist data.storage=<storage>
data.data_dir=<N× set> trainer.max_epochs=2` in its own process under `/usr/bin/time -v`
(peak RSS: "Maximum resident set size"); its epoch time is the second epoch's `time/epoch_s`
(training pass plus validation pass, from metrics.json): the first carries one-time costs
(allocator and thread-pool warm-up) that would inflate the per-sample time of small sets.
The N× sets are written by the same code as `deepmine data synth`
(`deepmine.data.synth.write_scaled`), but into a temporary folder, not into data/: a benchmark
must not re-pin the project's data. Their decoded-array cache is built once per set before any
point is timed, so every run starts from the same warm `.npy` files and no run's RSS includes
the one-time gzip decoding. Temporary files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
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


def run_point(overrides: list[str], store: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="deepmine-scale-run-"))
    command = [
        "/usr/bin/time", "-v", sys.executable, "-m", "deepmine", "train", *overrides,
        f"hydra.run.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "metrics.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"epoch_s": summary["epoch_seconds"][-1], "max_rss_mb": rss_kb / 1024}


def table(rows: list[dict]) -> str:
    base = {r["storage"]: r["us_per_sample"] for r in rows if r["scale"] == 1}
    lines = [
        "| size | train samples | storage | epoch (s) | µs / sample | vs 1× | peak RSS (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["us_per_sample"] / base[r["storage"]] if r["storage"] in base else float("nan")
        lines.append(
            f"| {r['scale']}× | {r['train_samples']:,} | {r['storage']} | {r['epoch_s']:.1f} | "
            f"{r['us_per_sample']:.1f} | {ratio:.2f} | {r['max_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--storages", nargs="+", default=["memory", "mmap"])
    parser.add_argument("--net", default="seed_mlp")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
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
            for storage in args.storages:
                overrides = [
                    "data=fashion_mnist", f"data.data_dir={data_dir}", f"data.cache_dir={cache}",
                    f"data.storage={storage}", f"net={args.net}",
                    f"data.batch_size={args.batch_size}", "trainer.max_epochs=2",
                ]  # fmt: skip
                point = run_point(overrides, store)
                samples = TRAIN_1X * scale
                row = {
                    "scale": scale,
                    "storage": storage,
                    "train_samples": samples,
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
    print(table(rows))
    save("scale", {"net": args.net, "batch_size": args.batch_size, "points": rows})


if __name__ == "__main__":
    main()
