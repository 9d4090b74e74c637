"""Benchmark 2: the cost of MLflow logging. The same deepmine run with `logger=mlflow` and with
`logger=none`, interleaved in one process; ratio of the median epoch times. Every metric the
mlflow runs logged is counted in the store: `train/loss` once per `log_every_n_steps` steps and
each epoch metric once per epoch.

    python benchmarks/logging_overhead.py [--net seed_mlp --batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import deepmine_run, median, save, temp_store

EPOCH_METRICS = ["train/loss_epoch", "train/acc", "val/acc", "val/loss", "val/acc_best"]


def count_in_store(store: str, summary: dict, log_every: int) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    run_id = summary["run_id"]
    counts = {
        key: len(client.get_metric_history(run_id, key)) for key in ["train/loss", *EPOCH_METRICS]
    }
    expected = {"train/loss": summary["global_step"] // log_every}
    expected.update({key: summary["epochs"] for key in EPOCH_METRICS})
    if counts != expected:
        raise SystemExit(f"metrics missing from the store: found {counts}, expected {expected}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="seed_mlp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    store = temp_store()
    base = [f"net={args.net}", f"data.batch_size={args.batch_size}",
            f"trainer.max_epochs={args.epochs}", "callbacks.early_stopping=null"]  # fmt: skip
    logged, silent, counts = [], [], []
    for round_ in range(args.rounds):
        summary = deepmine_run([*base, "logger=mlflow"], store)
        counts.append(count_in_store(store, summary, log_every=50))
        logged += summary["epoch_seconds"]
        silent += deepmine_run([*base, "logger=none"])["epoch_seconds"]
        print(f"round {round_}: mlflow {logged[-args.epochs :]}, none {silent[-args.epochs :]}")
    ratio = median(logged) / median(silent)
    print(f"logger=mlflow {median(logged):.3f} s/epoch, logger=none {median(silent):.3f} s/epoch,"
          f" ratio {ratio:.3f}; all metrics in the store: {counts[0]}")  # fmt: skip
    save(
        f"logging_overhead_{args.net}_b{args.batch_size}",
        {
            "mlflow_epoch_s": logged,
            "none_epoch_s": silent,
            "median_mlflow_s": median(logged),
            "median_none_s": median(silent),
            "ratio": ratio,
            "metrics_counted": counts,
        },
    )


if __name__ == "__main__":
    main()
