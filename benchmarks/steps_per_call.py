"""Lightning's per-step tax and `task.steps_per_call`: epoch time of the hand-written loop, of
`deepmine train` as it is (the default, `auto`: k batches a step, fetched as one block), with
Lightning's own loop (`task.steps_per_call=1`), with k batches a step fetched one by one (the
k-batch loop before blocks: `fast_path.hand_training_batches` switched off in this process),
and (`--callbacks`) with the per-step default callbacks switched off, interleaved in one
process, as ratios of medians to the hand-written loop, and to the hand-written loop doing the
same work (deterministic algorithms, uint8 images scaled per batch, the training scores' sums:
see common.py, also for what an "epoch" is on each side).

    python benchmarks/steps_per_call.py --net seed_mlp --batch-size 32 --callbacks
    python benchmarks/steps_per_call.py --net cnn --batch-size 128 --epochs 2 --rounds 2
    OMP_NUM_THREADS=1 python benchmarks/steps_per_call.py ... --clock cpu   # a busy machine

The `--callbacks` variant nulls the default callbacks that run code on every training step
(finite_loss: a device-side sum; progress_bar: rich, every 10 steps) and rng_state (no per-step
code, but Lightning calls every hook of every callback on every step); what remains
(model_checkpoint, early_stopping, epoch_timer) the run needs for its record and for
`time/epoch_s`.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import deepmine_run, hand_written_epochs, median, save, temp_store

#: the hand-written loop doing by hand what deepmine does on purpose (common.py)
SAME_WORK = "hand-written, same work"
FEWER_CALLBACKS = ["callbacks.finite_loss=null", "callbacks.progress_bar=null"]
FEWER_CALLBACKS.append("callbacks.rng_state=null")
#: the variant that fetches its k batches one by one (`fetch_per_batch`)
PER_BATCH = "k={k}, a fetch per batch"
#: `deepmine train` as every user gets it
DEFAULT = "default (auto: k=8, a fetch per block)"


@contextmanager
def fetch_per_batch(on: bool):
    """k batches a step, each fetched through Lightning's chain (no blocks): how
    `task.steps_per_call=k` ran before the loader handed blocks."""
    from deepmine.run import fast_path

    handed = fast_path.hand_training_batches
    if on:
        fast_path.hand_training_batches = lambda cfg, datamodule, steps: {}
    try:
        yield
    finally:
        fast_path.hand_training_batches = handed


def use_cpu_clock() -> None:
    """Both sides' epoch timers (the hand-written loop's and deepmine's `EpochTimer`) read this
    process's CPU time instead of the wall clock: on a 2-core machine that other jobs keep busy,
    wall time measures the queue for the cores, CPU time the work (run with
    OMP_NUM_THREADS=1, so that the work is one thread's). Patched in those two modules only."""
    import time
    from types import SimpleNamespace

    import common

    import deepmine.runtime.callbacks

    clock = SimpleNamespace(perf_counter=time.process_time)
    common.time = deepmine.runtime.callbacks.time = clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="seed_mlp", choices=["seed_mlp", "cnn"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--k", type=int, default=8, help="task.steps_per_call of the k run")
    parser.add_argument("--callbacks", action="store_true", help="also run k=1, fewer callbacks")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: time epochs in this process's CPU time (for a machine others are loading)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        use_cpu_clock()
    store = temp_store()
    base = [
        f"net={args.net}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "logger=mlflow",
    ]
    per_batch = PER_BATCH.format(k=args.k)
    variants = {
        "k=1": [*base, "task.steps_per_call=1"],
        per_batch: [*base, f"task.steps_per_call={args.k}"],
        DEFAULT: base,
    }
    if args.callbacks:
        variants["k=1, fewer callbacks"] = [*variants["k=1"], *FEWER_CALLBACKS]
        variants["default, fewer callbacks"] = [*base, *FEWER_CALLBACKS]
    epochs: dict[str, list[float]] = {"hand-written": [], SAME_WORK: []}
    epochs.update({name: [] for name in variants})
    for round_ in range(args.rounds):
        epochs["hand-written"] += hand_written_epochs(
            args.net, args.batch_size, args.epochs, seed=round_
        )
        epochs[SAME_WORK] += hand_written_epochs(
            args.net, args.batch_size, args.epochs, seed=round_, same_work=True
        )
        for name, overrides in variants.items():
            with fetch_per_batch(name == per_batch):
                run = deepmine_run([*overrides, f"seed={round_}"], store)
            epochs[name] += run["epoch_seconds"]
        print(
            f"round {round_}: " + ", ".join(f"{n} {v[-args.epochs :]}" for n, v in epochs.items())
        )
    medians = {name: median(values) for name, values in epochs.items()}
    hand, same = medians["hand-written"], medians[SAME_WORK]
    for name, value in medians.items():
        print(
            f"{args.net} batch {args.batch_size} {name:26s} {value:.3f} s/epoch  "
            f"{value / hand:.3f}  {value / same:.3f} of the same work"
        )
    save(
        f"steps_per_call_{args.net}_b{args.batch_size}_{args.clock}",
        {
            "epoch_s": epochs,
            "median_s": medians,
            "ratio": {name: value / hand for name, value in medians.items()},
            "ratio_same_work": {name: value / same for name, value in medians.items()},
            "overrides": variants,
            "clock": args.clock,
        },
    )


if __name__ == "__main__":
    main()
