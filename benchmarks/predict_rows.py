"""`deepmine predict` on a CSV larger than the memory it is allowed: rows per second and peak RSS.

1. A generated table (`--rows`, default 1,000,000; `--columns` numeric features and one
   categorical one; a 3-class label from a linear rule) written as CSV chunk by chunk, and a
   20,000-row sample of the same generator.
2. A model trained on the sample (`deepmine train data=csv ... net=mlp trainer.max_epochs=2`),
   logged as its pipeline.
3. The table's decoded size: what pandas holds after reading it whole
   (`memory_usage(deep=True)`), in a process of its own.
4. `deepmine predict run_id=<run> input=<the table>` under `/usr/bin/time -v`, inside a memory
   cgroup limited to `--memory-limit-mb` (page cache included; `scale.MemoryCgroup`), chosen
   below the decoded size: the scoring must stream. Reported: its wall time, peak RSS, the
   prediction run's `rows_per_s` (reading, encoding, scoring, writing), and that the output
   has every row.

    python benchmarks/predict_rows.py                       # 1M rows, 150 columns, 900 MB
    python benchmarks/predict_rows.py --rows 200000 --memory-limit-mb 0   # no limit
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from common import save
from scale import MemoryCgroup

SAMPLE_ROWS = 20_000
REGIONS = np.array(["north", "south", "east", "west", "centre"])


def write_table(path: Path, rows: int, columns: int, seed: int, chunk: int = 100_000) -> None:
    """A CSV of `rows` rows written `chunk` rows at a time (never whole in memory)."""
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(12345).normal(size=(columns, 3))
    names = [f"x{k}" for k in range(columns)]
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        x = rng.normal(size=(n, columns)).astype(np.float32)
        frame = pd.DataFrame(x, columns=names)
        frame["region"] = REGIONS[rng.integers(0, len(REGIONS), n)]
        frame["label"] = np.array(["a", "b", "c"])[(x @ weights).argmax(1)]
        frame.to_csv(
            path,
            mode="w" if start == 0 else "a",
            header=start == 0,
            index=False,
            float_format="%.4f",
        )


def decoded_mb(path: Path) -> float:
    """What pandas holds after reading the whole CSV, measured in a process of its own."""
    code = "import pandas as pd, sys; print(pd.read_csv(sys.argv[1]).memory_usage(deep=True).sum())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 2**20


def train(sample: Path, store: str, logs: Path) -> str:
    command = [
        sys.executable,
        "-m",
        "deepmine",
        "train",
        "data=csv",
        f"data.path={sample}",
        "data.target=label",
        "data.categorical=[region]",
        "net=mlp",
        "trainer.max_epochs=2",
        f"logger.tracking_uri={store}",
        f"paths.log_dir={logs}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return re.search(r"MLflow run +([0-9a-f]{32})", out.stdout).group(1)


def predict(
    run_id: str,
    table: Path,
    output: Path,
    store: str,
    logs: Path,
    chunk_rows: int,
    cgroup: MemoryCgroup | None,
) -> dict:
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "deepmine",
        "predict",
        f"run_id={run_id}",
        f"input={table}",
        f"output={output}",
        f"chunk_rows={chunk_rows}",
        f"logger.tracking_uri={store}",
        f"paths.log_dir={logs}",
        "log_output=false",
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, preexec_fn=cgroup.join if cgroup else None
    )
    wall = time.perf_counter() - started
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = {
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "group_peak_mb": round(cgroup.peak_mb(), 1) if cgroup and cgroup.peak_mb() else None,
    }
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-2000:]
        return result
    prediction_run = re.search(r"MLflow run +([0-9a-f]{32})", proc.stdout).group(1)
    from mlflow import MlflowClient

    metrics = MlflowClient(store).get_run(prediction_run).data.metrics
    result |= {
        "rows": int(metrics["rows"]),
        "scoring_s": round(metrics["seconds"], 2),
        "rows_per_s": round(metrics["rows_per_s"]),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=150)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--memory-limit-mb", type=int, default=900, help="0: no limit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deepmine-predict-bench-") as tmp:
        tmp = Path(tmp)
        store, logs = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "logs"
        table, sample = tmp / "table.csv", tmp / "sample.csv"
        started = time.perf_counter()
        write_table(table, args.rows, args.columns, seed=1)
        write_table(sample, SAMPLE_ROWS, args.columns, seed=2)
        print(
            f"wrote {table.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - started:.0f} s"
        )
        decoded = decoded_mb(table)
        print(f"decoded size {decoded:.0f} MB")
        run_id = train(sample, store, logs)
        cgroup = MemoryCgroup(args.memory_limit_mb) if args.memory_limit_mb else None
        try:
            scored = predict(run_id, table, tmp / "out.csv", store, logs, args.chunk_rows, cgroup)
        finally:
            if cgroup:
                cgroup.remove()
        if scored["returncode"] == 0:
            with (tmp / "out.csv").open() as handle:
                scored["output_rows"] = sum(1 for _ in handle) - 1
        result = {
            "rows": args.rows,
            "columns": args.columns + 1,
            "csv_mb": round(table.stat().st_size / 2**20, 1),
            "decoded_mb": round(decoded, 1),
            "memory_limit_mb": args.memory_limit_mb or None,
            "chunk_rows": args.chunk_rows,
            "predict": scored,
        }
    print(json.dumps(result, indent=2))
    save("predict_rows", result)


if __name__ == "__main__":
    main()
