"""Batches cut from in-memory tensors by indexing.

Why not `DataLoader(TensorDataset)`: it fetches samples one by one and collates them in Python,
which costs more than the forward pass of a small net. Here an epoch is one `randperm` and each
batch one advanced-indexing gather. Shuffling is seeded per epoch (`seed + epoch`), so the order
of batches is a pure function of the seed and the epoch number.

Under DDP each rank takes every `world_size`-th sample of that order, starting at its rank:
training shards are cut to equal length (ranks must run the same number of steps), evaluation
shards keep every sample once, so metrics synced across ranks cover the whole split.

A `transform` (normalization, augmentation) runs on each whole batch after it is cut, never per
sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class Normalize:
    """`(x / scale - mean) / std` on a batch, as float32; with no arguments only the cast.

    The operations are the ones a whole-tensor normalization would do, in the same order, so a
    batch normalized here equals the same rows of the normalized tensor bit for bit.
    """

    def __init__(
        self,
        scale: float | None = None,
        mean: torch.Tensor | float | None = None,
        std: torch.Tensor | float | None = None,
    ):
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together")
        self.scale, self.mean, self.std = scale, mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.scale is not None:
            x = x / self.scale
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class TensorBatches:
    """An iterable of `(x, y)` batches over tensors held in memory; Lightning accepts it as a
    dataloader (it has `__len__` and `__iter__`)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        equal_shards: bool = False,
        epoch_source: Callable[[], int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size, self.equal_shards = rank, world_size, equal_shards
        # Where the epoch number comes from (the Trainer's current epoch): a run resumed at
        # epoch k must shuffle epoch k as an uninterrupted run does, not as epoch 0. Without a
        # source, each pass over the batches counts as the next epoch.
        self.epoch_source = epoch_source
        self.epoch = 0
        self.transform = transform

    def _shard_size(self) -> int:
        n, w = len(self.x), self.world_size
        if w == 1:
            return n
        return n // w if self.equal_shards else len(range(self.rank, n, w))

    def __len__(self) -> int:
        n, b = self._shard_size(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> torch.Tensor | None:
        """The sample order of `epoch` (None: in storage order)."""
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.x), generator=generator)

    def indices(self, epoch: int) -> torch.Tensor | None:
        """This rank's sample indices for `epoch` (None: all samples in storage order)."""
        order = self.order(epoch)
        if self.world_size == 1:
            return order
        if order is None:
            order = torch.arange(len(self.x))
        return order[self.rank :: self.world_size][: self._shard_size()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        order = self.indices(self.epoch)
        self.epoch += 1
        stop = min(len(self) * self.batch_size, self._shard_size())
        transform = self.transform
        for start in range(0, stop, self.batch_size):
            if order is None:
                x = self.x[start : start + self.batch_size]
                y = self.y[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                x, y = self.x[index], self.y[index]
            yield (transform(x) if transform is not None else x), y
