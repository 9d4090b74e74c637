"""Benchmark 4: peak memory (max RSS, from `/usr/bin/time -v`) of a Fashion-MNIST run.

python benchmarks/memory.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, save, temp_store

RUNS = {
    "seed_mlp, 1 epoch": ["net=seed_mlp", "trainer.max_epochs=1"],
    "cnn batch 128, 1 epoch": ["net=cnn", "data.batch_size=128", "trainer.max_epochs=1"],
}


def max_rss_mb(overrides: list[str], store: str) -> tuple[float, float]:
    out = tempfile.mkdtemp(prefix="deepmine-memory-")
    command = [
        "/usr/bin/time", "-v", sys.executable, "-m", "deepmine", "train", *overrides,
        f"hydra.run.dir={out}", f"logger.tracking_uri={store}", "print_config=false",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
    minutes, seconds = wall.split(":")[-2:]
    return rss_kb / 1024, int(minutes) * 60 + float(seconds)


def main() -> None:
    store = temp_store()
    results = {}
    for name, overrides in RUNS.items():
        rss, wall = max_rss_mb(overrides, store)
        results[name] = {"overrides": overrides, "max_rss_mb": rss, "wall_s": wall}
        print(f"{name:25s} max RSS {rss:7.1f} MB   wall {wall:.1f} s")
    save("memory", {"runs": results})


if __name__ == "__main__":
    main()
