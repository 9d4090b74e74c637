"""Benchmark: training on a CSV several times larger than the memory limit (`data.storage=mmap`).

python benchmarks/csv_scale.py [--memory-limit-mb 1024] [--times 3] [--columns 40]
                               [--chunk-rows 20000] [--epochs 2] [--prepare-only]

A table of `--columns` numeric columns and a 3-class target, `--times` × the limit in bytes, is
written to a temporary folder (one block of random rows repeated: the volume is what is
measured). One real `deepmine train data=csv data.storage=mmap net=mlp` then runs under
`/usr/bin/time -v` in a memory cgroup limited to `--memory-limit-mb` (page cache included;
`scale.MemoryCgroup`, the cgroup Fashion-MNIST's scale benchmark uses). Reported: the wall time
of the run (preparation in three passes over the file, then training), its median epoch time
after the first, its peak RSS and the group's peak. A run killed for memory is a result.

With `data.storage=memory` the same table is parsed whole by pandas (1M rows × 40 columns took
1.4-1.5 GB at peak): `--storage memory` runs that for comparison, and is expected to be killed.
Keep `--times` small on a shared machine: a 1.5 GB table takes minutes to parse three times.
`--prepare-only` times just the preparation (`CSVDataModule(...).setup()` in a child process,
same cgroup and `/usr/bin/time -v`), without training: the part that used to read the table
whole. A deepmine process needs ~500 MB before any data (torch, lightning, pandas), so the limit
must leave room for that, and ~100 bytes a row (label codes, row indices, scikit-learn's
stratified draws of the split) grow with the row count, whatever the width.

Measured on 2 shared cores (Intel Xeon, cgroup v1), 2026-12-08:
- `--memory-limit-mb 1024 --times 1.5 --prepare-only`: 1536 MB, 4.2M rows × 40 columns,
  prepared in 83 s, peak RSS 930 MB, not killed;
- `--memory-limit-mb 800 --times 1.5 --columns 160 --chunk-rows 5000 --prepare-only`: 1200 MB,
  827k rows, 94 s, peak RSS 615 MB; the same with `--storage memory`: killed after 8 s;
- `--memory-limit-mb 900 --times 0.1` (training, 2 epochs): 90 MB, 248k rows, 105 s, median
  epoch 35 s, peak RSS 682 MB. Training a table larger than the limit end to end was not run
  here (it takes well over 5 minutes on this machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save, temp_store
from scale import MemoryCgroup, measured, run_point


def prepare_point(table: Path, cache: Path, chunk_rows: int, storage: str, cgroup) -> dict:
    """Only the preparation, in a child process under `/usr/bin/time -v` (and the cgroup)."""
    code = (
        "from deepmine.data.csv_table import CSVDataModule as D;"
        f"D(path={str(table)!r}, target='y', targets='class', storage={storage!r},"
        f" cache_dir={str(cache)!r}, chunk_rows={chunk_rows}).setup()"
    )
    proc, point = measured([sys.executable, "-c", code], cgroup)
    if point["killed"]:
        return point
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed:\n{proc.stderr[-3000:]}")
    return point


def write_table(path: Path, size_bytes: int, columns: int) -> int:
    """A CSV of at least `size_bytes`: one block of 1000 random rows repeated; its row count."""
    rng = np.random.default_rng(0)
    block = rng.normal(size=(1000, columns))
    labels = np.resize(["a", "b", "c"], 1000)
    text = "".join(
        ",".join(f"{v:.6f}" for v in row) + f",{y}\n" for row, y in zip(block, labels, strict=True)
    )
    rows = 0
    with path.open("w") as handle:
        handle.write(",".join(f"c{k}" for k in range(columns)) + ",y\n")
        while handle.tell() < size_bytes:
            handle.write(text)
            rows += 1000
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-limit-mb", type=int, default=1024, help="0: no limit")
    parser.add_argument("--times", type=float, default=3.0, help="table size / memory limit")
    parser.add_argument("--columns", type=int, default=40)
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2, help="epochs (>= 2)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--storage", default="mmap", choices=["mmap", "memory"])
    parser.add_argument("--prepare-only", action="store_true", help="no training run")
    args = parser.parse_args()
    limit = args.memory_limit_mb or 1024
    cgroup = MemoryCgroup(args.memory_limit_mb) if args.memory_limit_mb else None
    work = Path(tempfile.mkdtemp(prefix="deepmine-csv-scale-"))
    try:
        table = work / "table.csv"
        rows = write_table(table, int(args.times * limit * 2**20), args.columns)
        overrides = [
            "data=csv", f"data.path={table}", "data.target=y", f"data.storage={args.storage}",
            f"data.cache_dir={work / 'cache'}", f"data.chunk_rows={args.chunk_rows}",
            f"data.batch_size={args.batch_size}", "net=mlp", f"trainer.max_epochs={args.epochs}",
        ]  # fmt: skip
        start = time.perf_counter()
        if args.prepare_only:
            point = prepare_point(table, work / "cache", args.chunk_rows, args.storage, cgroup)
        else:
            point = run_point(overrides, temp_store(), cgroup)
        result = {
            "storage": args.storage,
            "prepare_only": args.prepare_only,
            "rows": rows,
            "columns": args.columns,
            "csv_mb": table.stat().st_size / 2**20,
            "memory_limit_mb": args.memory_limit_mb or None,
            "chunk_rows": args.chunk_rows,
            "wall_s": time.perf_counter() - start,
            **point,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cgroup is not None:
            cgroup.remove()
    print(json.dumps(result, indent=1))
    save("csv_scale", result)


if __name__ == "__main__":
    main()
