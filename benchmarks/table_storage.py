"""What `data.storage=mmap` saves a table: resident memory after setup and over an epoch of
batches, and the epoch's time, memory vs mmap, on a generated CSV (numeric columns and a class
target). Each storage runs in its own process, so one's pages never count for the other.

    python benchmarks/table_storage.py --rows 1000000 --columns 40

The source is parsed whole either way (pandas), so the peak (VmHWM) is the parse's; what mmap
bounds is what training holds afterwards (VmRSS after setup, the parse's freed heap handed back
with `malloc_trim`, and after the epoch).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save


def write_table(path: Path, rows: int, columns: int) -> None:
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        out.write(",".join([*(f"f{i}" for i in range(columns)), "label"]) + "\n")
        for start in range(0, rows, 100_000):  # in blocks: the writer stays small
            n = min(100_000, rows - start)
            block = rng.normal(size=(n, columns)).round(4)
            labels = (block[:, 0] + block[:, 1] > 0).astype(int)
            lines = np.column_stack([block, labels])
            np.savetxt(out, lines, delimiter=",", fmt=["%.4f"] * columns + ["%d"])


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure(table: str, storage: str, cache: str, batch_size: int) -> dict:
    """One storage, in this process: setup, then one epoch of training batches."""
    from deepmine.data.csv_table import CSVDataModule

    dm = CSVDataModule(
        path=table,
        target="label",
        targets="class",
        batch_size=batch_size,
        storage=storage,
        cache_dir=cache,
    )
    started = time.perf_counter()
    dm.setup()
    setup_s = time.perf_counter() - started
    # glibc keeps much of the parse's freed heap (measured: 650 to 850 MB after the same setup,
    # run to run); handing it back first makes the figure what the data still holds
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    after_setup = status_mb("VmRSS")
    started = time.perf_counter()
    checksum = 0.0
    for x, _ in dm.train_dataloader():
        checksum += float(x[0, 0])
    epoch_s = time.perf_counter() - started
    return {
        "storage": storage,
        "setup_s": setup_s,
        "epoch_s": epoch_s,
        "rss_after_setup_mb": after_setup,
        "rss_after_epoch_mb": status_mb("VmRSS"),
        "peak_rss_mb": status_mb("VmHWM"),
        "checksum": checksum,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--child", nargs=3, metavar=("TABLE", "STORAGE", "CACHE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.batch_size)))
        return
    with tempfile.TemporaryDirectory(prefix="deepmine-table-") as folder:
        table = Path(folder) / "table.csv"
        write_table(table, args.rows, args.columns)
        cache = str(Path(folder) / "cache")
        runs = []
        # mmap twice: the first run writes the prepared arrays, the second finds them
        for storage in ("memory", "mmap", "mmap"):
            command = [sys.executable, __file__, "--batch-size", str(args.batch_size)]
            command += ["--child", str(table), storage, cache]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        prepared_mb = args.rows * args.columns * 4 / 2**20
        print(f"table {args.rows} rows x {args.columns} columns: {prepared_mb:.0f} MB as float32")
        for run in runs:
            print(
                f"{run['storage']:7s} setup {run['setup_s']:5.1f} s  epoch {run['epoch_s']:5.2f} s"
                f"  RSS after setup {run['rss_after_setup_mb']:6.0f} MB"
                f"  after epoch {run['rss_after_epoch_mb']:6.0f} MB"
                f"  peak {run['peak_rss_mb']:6.0f} MB"
            )
        assert len({run["checksum"] for run in runs}) == 1, "the storages read different batches"
        save(
            "table_storage",
            {"rows": args.rows, "columns": args.columns, "prepared_mb": prepared_mb, "runs": runs},
        )


if __name__ == "__main__":
    main()
