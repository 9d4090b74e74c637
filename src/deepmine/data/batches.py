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

With `block=k` (the training split under `task.steps_per_call=k`) each item is a `BatchBlock`
of up to k consecutive batches, gathered in one indexing operation and cut into the batches
it holds, so Lightning's fetch chain (four wrapped iterators, ~35 µs) runs once per k
batches: the training step iterates over the block. The batches are the same rows in the same
order as without blocks; `max_batches` stops after that many batches, as Lightning's
`limit_train_batches` would (it counts blocks, not batches, so it is applied here).

`x` may also be `MappedRows` (`data.storage=mmap`): rows of a memory-mapped `.npy` file picked
by an index, so a split is a view of the file, not a copy, and indexing it reads only the batch.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import torch

#: bytes read through a map (contiguous slices) before its pages leave this process's resident set
RELEASE_BYTES = 64 * 2**20


class Normalize:
    """`(x / scale - mean) / std` on a batch, as float32; with no arguments only the cast.

    The operations are the ones a whole-tensor normalization would do, in the same order, so a
    batch normalized here equals the same rows of the normalized tensor bit for bit.
    """

    #: each value depends on its own input value only: a block of batches may be normalized
    #: in one call (`TensorBatches._blocks`)
    elementwise = True

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


class MappedRows:
    """Rows `index` of a read-only memory map (`np.load(mmap_mode="r")`), shaped `row_shape`.

    Indexing with a slice or an index tensor gathers those rows only and returns them as a new
    tensor, as indexing a tensor in memory would: the same values and dtype (uint8 and float32
    as stored, anything else cast to float32). A batch's rows are read in file order (sorted
    indices: neighbouring rows share pages) and put back in the batch's order, so the batch is
    identical to the in-memory one.

    Why scattered rows are read with `os.pread` from the map's file rather than through the
    map: on current kernels (6.x, ext4 with large page-cache folios) a page fault maps the
    whole folio around the faulting row, so a few thousand random rows read through the map
    made most of a 750 MB file resident in this process (measured: resident memory +700 MB at
    16× Fashion-MNIST, though each row is 784 bytes). `pread` copies just the row out of the
    same page cache, so resident memory stays flat as the file grows. Contiguous slices (a
    split in file order, the statistics chunks) are read through the map in one go, and after
    every `RELEASE_BYTES` their pages are dropped from the resident set (`MADV_DONTNEED`; the
    file is read-only, nothing is lost).
    """

    def __init__(self, array: np.ndarray, row_shape: tuple[int, ...], index=None, file=None):
        self.array, self.row_shape = array, tuple(row_shape)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.file = file if file is not None else _RowFile.of(array)
        self._read = 0

    def __len__(self) -> int:
        return len(self.array) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def detach(self) -> torch.Tensor:
        """All the rows as one tensor, for code that reads a split whole as it would a tensor
        (hashing scikit-learn's small bundled sets for the run's record)."""
        return self[:]

    def view(self, index) -> MappedRows:
        """Rows `index` of these rows: a view of the same map, not a copy."""
        index = np.asarray(index, dtype=np.int64)
        rows = index if self.index is None else self.index[index]
        return MappedRows(self.array, self.row_shape, rows, self.file)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice) and self.index is None:
            rows = np.array(self.array[key])  # contiguous: one read, in order
            self._released(rows.nbytes)
        else:
            if isinstance(key, slice):
                wanted = self.index[key]
            else:
                wanted = np.asarray(key, dtype=np.int64)
                if self.index is not None:
                    wanted = self.index[wanted]
            order = np.argsort(wanted, kind="stable")
            rows = np.empty((len(wanted), *self.array.shape[1:]), self.array.dtype)
            if self.file is None:
                rows[order] = self.array[wanted[order]]
            else:
                self.file.read_rows(rows, order, wanted[order])
        rows = rows.reshape(len(rows), *self.row_shape)
        if rows.dtype in (np.uint8, np.float32):
            return torch.from_numpy(rows)
        return torch.as_tensor(rows, dtype=torch.float32)

    def _released(self, nbytes: int) -> None:
        self._read += nbytes
        mapping = getattr(self.array, "_mmap", None)  # np.memmap's own mmap object
        if self._read >= RELEASE_BYTES and mapping is not None and hasattr(mapping, "madvise"):
            import mmap

            mapping.madvise(mmap.MADV_DONTNEED)
            self._read = 0


class _RowFile:
    """The `.npy` file behind a C-ordered map, read row by row with `os.pread`; opened once
    per process (a forked or spawned worker opens its own descriptor)."""

    def __init__(self, path: str, offset: int, row_bytes: int):
        self.path, self.offset, self.row_bytes = path, offset, row_bytes
        self._fd: int | None = None
        self._pid: int | None = None

    @classmethod
    def of(cls, array: np.ndarray) -> _RowFile | None:
        if not isinstance(array, np.memmap) or array.filename is None:
            return None
        if not array.flags.c_contiguous or array.ndim < 1:
            return None
        return cls(str(array.filename), int(array.offset), array.itemsize * array[0].size)

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def read_rows(self, out: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> None:
        """`out[positions[i]] = row rows[i]` of the file, rows ascending (file order)."""
        if not len(out):
            return
        fd, size, offset = self._descriptor(), self.row_bytes, self.offset
        flat = out.reshape(len(out), -1).view(np.uint8)
        for position, row in zip(positions.tolist(), rows.tolist(), strict=True):
            if os.preadv(fd, [flat[position]], offset + row * size) != size:
                raise OSError(f"{self.path} is shorter than its header says (row {row})")

    def __getstate__(self):  # a descriptor means nothing in another process
        return {**self.__dict__, "_fd": None, "_pid": None}


#: bytes a batch's first row is aligned to when it is a view into a block's gathered rows: a
#: fresh CPU tensor is 64-byte aligned, and some matrix kernels take another path (summing in
#: another order) on unaligned input, so a batch that would start unaligned is copied
ALIGNMENT = 64


class BatchBlock(tuple):
    """Up to k consecutive `(x, y)` batches of one epoch, one item of a blocked `TensorBatches`;
    `first` is the epoch's index of its first batch."""

    first: int

    def __new__(cls, batches, first: int):
        block = super().__new__(cls, batches)
        block.first = first
        return block


def _rows(x, index: torch.Tensor):
    """Rows `index` of `x`, a tensor or `MappedRows`. For a tensor `index_select` rather than
    `x[index]`: the same rows, but advanced indexing computes an offset per element and, with
    deterministic algorithms on (`trainer.deterministic`, the default), took 883 µs for 256
    Fashion-MNIST rows against 153 µs (one row copy each)."""
    if isinstance(x, torch.Tensor):
        return torch.index_select(x, 0, index)
    return x[index]


def _cut(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """`x` split along its rows into parts of `sizes`, each aligned as a fresh tensor would be
    (see `ALIGNMENT`): views where the rows allow it, copies where they do not."""
    parts = torch.split(x, sizes)
    if all(p.data_ptr() % ALIGNMENT == 0 for p in parts):
        return parts
    return tuple(p.clone() for p in parts)


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
        block: int = 1,
        max_batches: int | None = None,
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
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block, self.max_batches = block, max_batches

    def _shard_size(self) -> int:
        n, w = len(self.x), self.world_size
        if w == 1:
            return n
        return n // w if self.equal_shards else len(range(self.rank, n, w))

    def batches(self) -> int:
        """How many batches an epoch has (not blocks)."""
        n, b = self._shard_size(), self.batch_size
        count = n // b if self.drop_last else -(-n // b)
        return count if self.max_batches is None else min(count, self.max_batches)

    def __len__(self) -> int:
        """Items an epoch yields: batches, or with `block=k` blocks of up to k batches."""
        return -(-self.batches() // self.block)

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
        stop = min(self.batches() * self.batch_size, self._shard_size())
        if self.block > 1:
            yield from self._blocks(order, stop)
            return
        transform = self.transform
        for start in range(0, stop, self.batch_size):
            if order is None:
                x = self.x[start : start + self.batch_size]
                y = self.y[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                x, y = _rows(self.x, index), _rows(self.y, index)
            yield (transform(x) if transform is not None else x), y

    def _blocks(self, order: torch.Tensor | None, stop: int) -> Iterator[BatchBlock]:
        """The epoch's batches `block` at a time: one gather of the block's rows, cut into
        batches. The transform runs on each batch, as without blocks (an augmentation draws
        its randomness batch by batch); one that says it is `elementwise` (normalization) runs
        once on the block, as its values do not depend on which rows share a call."""
        transform, size = self.transform, self.batch_size
        whole = transform is not None and getattr(transform, "elementwise", False)
        span = self.block * size
        for first, start in enumerate(range(0, stop, span)):
            end = min(start + span, stop)
            if order is None:
                x, y = self.x[start:end], self.y[start:end]
            else:
                index = order[start:end]
                x, y = _rows(self.x, index), _rows(self.y, index)
            if whole:
                x = transform(x)
            sizes = [min(size, end - s) for s in range(start, end, size)]
            xs, ys = _cut(x, sizes), _cut(y, sizes)
            if transform is not None and not whole:
                xs = [transform(part) for part in xs]
            yield BatchBlock(zip(xs, ys, strict=True), first * self.block)
