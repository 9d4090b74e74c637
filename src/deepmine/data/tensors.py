"""The base of every deepmine datamodule: splits held as tensors, batched by indexing.

A datamodule says how to make its splits (`make_splits`); this base owns what all of them
share: the `train`/`val`/`test` tensors, the per-batch transform, batching by indexing
(`TensorBatches`, DDP shards included), and the contract tasks and nets rely on:

- `targets` says what `y` is: `"class"` (int64 labels, shape `(B,)`), `"value"` (float32,
  `(B, num_targets)`, in the data's own units) or `"series"` (float32,
  `(B, horizon, num_targets)`, in the series' own units). A task accepts one kind; `build`
  refuses a task/data pair that disagrees, before any run exists.
- `target_scaler` (value and series targets): the mean and standard deviation of every
  target over the training split only; tasks learn on standardized targets and report
  metrics in the data's units.
- `shapes()`: the keys nets and tasks read by interpolation (`input_shape`, `num_outputs`,
  `num_classes` or `num_targets`), so a config may leave them null when only the data can tell
  (a CSV's columns); `build` fills them in before the net is made.
- `storage` (`data.storage`): `"memory"` keeps the splits as tensors; `"mmap"` keeps each
  split's `x` in a read-only memory-mapped `.npy` file and reads a batch at a time (images:
  `InMemoryDataModule`; tables and series: `deepmine.data.mapped`). Every datamodule gives the
  same batches, bit for bit, either way.
"""

from __future__ import annotations

from typing import ClassVar

import lightning.pytorch as pl
import torch

from deepmine.data.batches import TensorBatches
from deepmine.errors import DeepmineError
from deepmine.runtime import timeline

TARGET_KINDS = ("class", "value", "series")
STORAGES = ("memory", "mmap")


class TensorDataModule(pl.LightningDataModule):
    """Base class: `make_splits()` fills `self.tensors` (split -> `(x, y)`) and may set
    `self.transform`, the batch transform applied to `x` of every split."""

    #: what `y` holds: "class" | "value" | "series" (see the module docstring)
    targets: ClassVar[str] = "class"
    #: True when the data is read from the DVC-tracked `data/` folder, so a run must verify it.
    dvc_tracked: ClassVar[bool] = False
    class_names: tuple[str, ...] = ()
    #: names of the target columns (value and series targets), for plots and summaries
    target_names: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        shuffle_seed: int = 0,
        storage: str = "memory",
    ):
        super().__init__()
        if storage not in STORAGES:
            raise DeepmineError(
                f"data.storage={storage!r} is not one of {', '.join(STORAGES)}",
                "use data.storage=memory (arrays in RAM) or data.storage=mmap (memory-mapped)",
            )
        self.storage = storage
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle_seed = shuffle_seed
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.transform = None
        self.target_scaler: tuple[torch.Tensor, torch.Tensor] | None = None
        #: training batches per loader item and the epoch's batch limit (`train_in_blocks`)
        self.train_block, self.train_max_batches = 1, None

    def train_in_blocks(self, block: int, max_batches: int | None) -> None:
        """Hand the training batches `block` at a time (`TensorBatches`' blocks), at most
        `max_batches` an epoch: what `deepmine.run.fast_path` asks for under
        `task.steps_per_call=block`, Lightning then fetching once per block."""
        self.train_block, self.train_max_batches = block, max_batches

    def make_splits(self) -> None:
        raise NotImplementedError

    @property
    def mmap_wanted(self) -> bool:
        """True when the splits should be memory maps (`data.storage=mmap`)."""
        return self.storage == "mmap"

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        self.make_splits()
        timeline.mark("data_loaded")

    def shapes(self) -> dict:
        """The values of the data config's shape keys, read from the data itself."""
        raise NotImplementedError

    def codec(self):
        """The fitted preprocessing a logged model carries (`deepmine.data.codecs`): raw input
        in, the net's input out. Read after `setup()`."""
        raise DeepmineError(
            f"{type(self).__name__} has no prediction pipeline (codec)",
            "log models of runs on a table, image or series data config",
        )

    def normalized(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split as the net sees it (float32, normalized): for analysis and tests;
        training normalizes batch by batch."""
        self.setup()
        x, y = self.tensors[split]
        if not isinstance(x, torch.Tensor):
            x = x[:]  # memory-mapped rows (data.storage=mmap): read the whole split
        return (self.transform(x) if self.transform is not None else x), y

    def _batches(
        self, split: str, batch_size: int, shuffle: bool, block: int = 1, max_batches=None
    ) -> TensorBatches:
        self.setup()
        x, y = self.tensors[split]
        trainer = self.trainer  # None outside a Trainer (tests, eval helpers)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return TensorBatches(
            x,
            y,
            batch_size,
            shuffle=shuffle,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world,
            equal_shards=split == "train",
            epoch_source=(lambda: trainer.current_epoch) if trainer and shuffle else None,
            transform=self.transform,
            block=block,
            max_batches=max_batches,
        )

    def train_dataloader(self) -> TensorBatches:
        """Training batches; in blocks (`train_in_blocks`) only for the fit that asked for
        them: anyone else reading the training split (analysis, tests) gets `(x, y)` batches."""
        trainer = self.trainer
        if trainer is None or (trainer.state.fn, trainer.state.status) != ("fit", "running"):
            return self._batches("train", self.batch_size, shuffle=True)
        return self._batches(
            "train", self.batch_size, True, self.train_block, self.train_max_batches
        )

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)


def split_count(size: float | int, n: int, key: str) -> int:
    """A split's size from a fraction in (0, 1) or a sample count, leaving both sides non-empty."""
    count = round(size * n) if isinstance(size, float) and size < 1 else int(size)
    if not 0 < count < n:
        raise DeepmineError(
            f"{key}={size} leaves an empty split out of {n} samples",
            "use a fraction in (0, 1) or a count in [1, n)",
        )
    return count


def fit_scaler(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and std of `values` (rows: samples), std floored so a constant column
    scales to zeros instead of NaN. Fitted on the training split only, by every caller."""
    values = values.to(torch.float64)
    mean = values.mean(0)
    std = values.std(0) if len(values) > 1 else torch.ones_like(mean)
    return mean.to(torch.float32), std.clamp_min(1e-8).to(torch.float32)
