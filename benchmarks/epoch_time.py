"""Benchmark 1: epoch time of `deepmine train` against the hand-written loop, interleaved in one
process and reported as the ratio of medians.

    python benchmarks/epoch_time.py --net seed_mlp --batch-size 32
    python benchmarks/epoch_time.py --net cnn --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import deepmine_run, hand_written_epochs, median, save, temp_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="seed_mlp", choices=["seed_mlp", "cnn"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--logger", default="mlflow", choices=["mlflow", "none"])
    parser.add_argument("overrides", nargs="*", help="extra deepmine overrides")
    args = parser.parse_args()
    store = temp_store()
    overrides = [
        f"net={args.net}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        f"logger={args.logger}",
        *args.overrides,
    ]
    hand, framework = [], []
    for round_ in range(args.rounds):
        hand += hand_written_epochs(args.net, args.batch_size, args.epochs, seed=round_)
        run = deepmine_run(overrides, store if args.logger == "mlflow" else None)
        framework += run["epoch_seconds"]
        print(
            f"round {round_}: hand-written {hand[-args.epochs :]}, deepmine {run['epoch_seconds']}",
            flush=True,
        )
    ratio = median(framework) / median(hand)
    print(
        f"{args.net} batch {args.batch_size}: deepmine {median(framework):.3f} s/epoch, "
        f"hand-written {median(hand):.3f} s/epoch, ratio {ratio:.3f}"
    )
    save(
        f"epoch_time_{args.net}_b{args.batch_size}_{args.logger}",
        {
            "hand_written_epoch_s": hand,
            "deepmine_epoch_s": framework,
            "median_hand_written_s": median(hand),
            "median_deepmine_s": median(framework),
            "ratio": ratio,
            "overrides": overrides,
        },
    )


if __name__ == "__main__":
    main()
