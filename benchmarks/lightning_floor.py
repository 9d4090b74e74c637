"""Lightning's own floor: the seed MLP at batch 32 in a bare LightningModule (functional loss,
no metrics, callbacks, logger, progress bar, checkpoints or validation) on deepmine's
`TensorBatches`, with automatic and with manual optimization, interleaved with the hand-written
loop (which also runs its validation pass). What no change inside deepmine can go below.

    python benchmarks/lightning_floor.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fashion_mnist_tensors, hand_written_epochs, make_net, median, save


def bare_epochs(manual: bool, epochs: int) -> list[float]:
    import lightning.pytorch as pl
    import torch

    from deepmine.data.batches import TensorBatches

    (x, y), _ = fashion_mnist_tensors()

    class Bare(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_net("seed_mlp")
            self.automatic_optimization = not manual

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = torch.nn.functional.cross_entropy(self.net(xb), yb)
            if manual:
                optimizer = self.optimizers()
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Timer(pl.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, *args):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
        limit_val_batches=0, deterministic=True,
    )  # fmt: skip
    trainer.fit(Bare(), train_dataloaders=TensorBatches(x, y, 32, shuffle=True))
    return timer.seconds


def main() -> None:
    results = {"hand_written": [], "automatic": [], "manual": []}
    for round_ in range(3):
        results["hand_written"] += hand_written_epochs("seed_mlp", 32, 2, seed=round_)
        results["automatic"] += bare_epochs(manual=False, epochs=2)
        results["manual"] += bare_epochs(manual=True, epochs=2)
    medians = {k: median(v) for k, v in results.items()}
    hand = medians["hand_written"]
    for name, value in medians.items():
        print(f"{name:13s} {value:.3f} s/epoch  ratio {value / hand:.2f}")
    save("lightning_floor", {"epoch_s": results, "median_s": medians})


if __name__ == "__main__":
    main()
