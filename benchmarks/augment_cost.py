"""What batch augmentation (`augment=none|flip|standard`) costs per epoch of Fashion-MNIST.

Two measurements, each on this machine's CPU:

1. `batch`: the augmentation alone on real normalized training batches (median of many calls),
   times the batches of one epoch (54,000 training images), for the Kornia transforms deepmine
   uses and, as a yardstick, a hand-written `affine_grid`/`grid_sample` warp doing the same
   (the alternative the Kornia choice is weighed against).
2. `epoch`: `deepmine train` epochs (`time/epoch_s`: training plus the validation pass) with each
   option, interleaved in one process, `logger=none` (augmentation does not touch the logger);
   and the time spent inside the datamodule's `on_after_batch_transfer`, where the augmentation
   runs, per epoch: on a noisy machine the difference of two epoch times is mostly noise for the
   CNN (its epochs vary by seconds), the time in the hook is not.

    python benchmarks/augment_cost.py                       # both
    python benchmarks/augment_cost.py --part batch
    python benchmarks/augment_cost.py --part epoch --rounds 2 --epochs 2 --nets cnn
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, deepmine_run, fashion_mnist_datamodule, median, save

OPTIONS = ("none", "flip", "standard")
#: (net, batch size) pairs: the seed MLP at the article's batch, the CNN at the speedrun's
RUNS = (("seed_mlp", 32), ("cnn", 128))


def preset(option: str) -> dict | None:
    """The settings of conf/augment/<option>.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "augment" / f"{option}.yaml")
    return OmegaConf.to_container(cfg.augment) if cfg.augment is not None else None


def hand_written_standard(x):
    """The `standard` preset by hand (rotation ±10°, shifts ±0.1, zoom 0.9-1.1 per axis, border
    fill, flip 1/2, brightness 0.8-1.2): the yardstick, not used by deepmine."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    angle = (torch.rand(b) * 2 - 1) * math.radians(10)
    zoom = 1 + (torch.rand(b, 2) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2) * 2 - 1) * 0.2  # grid units: 2 per image side
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos / zoom[:, 0], -sin / zoom[:, 0], shift[:, 0]], 1),
            torch.stack([sin / zoom[:, 1], cos / zoom[:, 1], shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = torch.where((torch.rand(b) < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
    return (x * (0.8 + 0.4 * torch.rand(b, 1, 1, 1))).clamp(0, 1)


def per_batch(batch_size: int, calls: int) -> dict:
    """Median milliseconds per call of each augmentation on real batches of `batch_size`."""
    import torch

    from deepmine.data.augment import PixelSpace, batch_augmentation

    dm = fashion_mnist_datamodule(batch_size)
    batches = [x for x, _ in itertools.islice(dm.train_dataloader(), 50)]
    n_batches = len(dm.train_dataloader())
    functions = {}
    for option in ("flip", "standard"):
        augmentation = batch_augmentation(preset(option))
        augmentation.pixels = PixelSpace(dm.transform, dm.pixel_max)  # as a run sets it
        functions[f"kornia {option}"] = augmentation
    functions["hand-written standard"] = hand_written_standard
    torch.manual_seed(0)
    # round-robin, one call of each per turn: load from elsewhere on the machine hits all alike
    times: dict[str, list[float]] = {name: [] for name in functions}
    for i in range(calls + 20):
        x = batches[i % len(batches)]
        for name, function in functions.items():
            start = time.perf_counter()
            function(x)
            if i >= 20:  # warm-up calls are not counted
                times[name].append(time.perf_counter() - start)
    result = {"batches_per_epoch": n_batches, "ms_per_batch": {}, "s_per_epoch": {}}
    for name in functions:
        ms = median(times[name]) * 1e3
        result["ms_per_batch"][name] = ms
        result["s_per_epoch"][name] = ms * n_batches / 1e3
        print(f"batch {batch_size}: {name}: {ms:.3f} ms/batch, {ms * n_batches / 1e3:.2f} s/epoch")
    return result


def per_epoch(net: str, batch_size: int, epochs: int, rounds: int) -> dict:
    """`time/epoch_s` of `deepmine train` with each option, interleaved round by round, and the
    time spent in the datamodule's `on_after_batch_transfer` (the augmentation, in the run)."""
    from deepmine.data.in_memory import InMemoryDataModule

    hook = InMemoryDataModule.on_after_batch_transfer
    spent = [0.0]

    def timed(self, batch, dataloader_idx):
        start = time.perf_counter()
        try:
            return hook(self, batch, dataloader_idx)
        finally:
            spent[0] += time.perf_counter() - start

    seconds: dict[str, list[float]] = {option: [] for option in OPTIONS}
    in_hook: dict[str, list[float]] = {option: [] for option in OPTIONS}
    InMemoryDataModule.on_after_batch_transfer = timed
    try:
        for round_ in range(rounds):
            for option in OPTIONS:
                spent[0] = 0.0
                run = deepmine_run(
                    [
                        f"net={net}",
                        f"data.batch_size={batch_size}",
                        f"trainer.max_epochs={epochs}",
                        f"augment={option}",
                        "logger=none",
                    ]
                )
                seconds[option] += run["epoch_seconds"]
                in_hook[option].append(spent[0] / len(run["epoch_seconds"]))
                print(
                    f"round {round_} {net} b{batch_size} augment={option}: epochs "
                    f"{run['epoch_seconds']}, augmentation {in_hook[option][-1]:.3f} s/epoch"
                )
    finally:
        InMemoryDataModule.on_after_batch_transfer = hook
    medians = {option: median(values) for option, values in seconds.items()}
    return {
        "epoch_s": seconds,
        "median_epoch_s": medians,
        "added_s": {option: medians[option] - medians["none"] for option in OPTIONS},
        "augmentation_s_per_epoch": in_hook,
        "median_augmentation_s_per_epoch": {o: median(v) for o, v in in_hook.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["batch", "epoch", "all"], default="all")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per augmentation")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per deepmine run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--nets", nargs="+", default=[net for net, _ in RUNS], choices=[net for net, _ in RUNS]
    )
    args = parser.parse_args()
    result: dict = {}
    if args.part in ("batch", "all"):
        result["batch"] = {f"b{b}": per_batch(b, args.calls) for net, b in RUNS if net in args.nets}
    if args.part in ("epoch", "all"):
        result["epoch"] = {
            f"{net}_b{b}": per_epoch(net, b, args.epochs, args.rounds)
            for net, b in RUNS
            if net in args.nets
        }
        for name, r in result["epoch"].items():
            print(name, {k: f"{v:.3f} s" for k, v in r["median_epoch_s"].items()})
            print(name, {k: f"{v:.3f} s" for k, v in r["median_augmentation_s_per_epoch"].items()})
    result["load_average_1min_at_end"] = os.getloadavg()[0]  # other work on the machine
    save(f"augment_cost_{args.part}_{'_'.join(args.nets)}", result)


if __name__ == "__main__":
    main()
