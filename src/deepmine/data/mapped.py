"""`data.storage=mmap` for datamodules that compute their arrays: tables and series.

Images are decoded into the decoded-array cache and mapped from there (`InMemoryDataModule`).
A table's features or a series' values are instead *computed* from the source file (one-hot
columns, imputed gaps, standardization with training statistics), so what gets mapped is the
result: written once as `.npy` under `data.cache_dir`, in an entry named by a hash of the bytes
themselves (two runs that prepare the same arrays share one entry; a changed file or option
makes a new one, never reading a stale entry), then reopened as a memory map. Training then
holds a batch, not the split; the source is still read whole once at setup (the diabetes table
and series are small; the images' decoders read their files whole too). A user's CSV, which may
be larger than memory, is not prepared here: `deepmine.data.csv_chunks` reads it in chunks
straight into an entry of the same cache, named by the file's MD5 and options instead.

Batches are the same, bit for bit, as with `storage=memory`: the stored bytes are the prepared
tensors' bytes, and `MappedRows` gathers rows as indexing the tensor would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from deepmine.data.batches import MappedRows
from deepmine.data.cache import cached_arrays
from deepmine.errors import DeepmineError


def mapped_arrays(
    arrays: Mapping[str, np.ndarray], cache_dir: str | Path | None, what: str, mode: str = "r"
) -> dict[str, np.memmap]:
    """`arrays` stored under `cache_dir/<what>-<hash of their bytes>/` and returned as memory
    maps (`mode`: "r" read-only, "c" copy-on-write, for a tensor that views the map)."""
    if cache_dir is None:
        raise DeepmineError(
            f"data.storage=mmap keeps the prepared {what} arrays in data.cache_dir, which is null",
            "set data.cache_dir to a folder, or use data.storage=memory",
        )
    digest = hashlib.sha1()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(memoryview(array).cast("B"))
    names = tuple(arrays)
    maps = cached_arrays(
        Path(cache_dir), f"{what}-{digest.hexdigest()[:16]}", names, lambda: arrays, mmap=mode
    )
    if not all(isinstance(maps[name], np.memmap) for name in names):
        raise DeepmineError(
            f"data.storage=mmap could not write the prepared {what} arrays to {cache_dir}",
            "make data.cache_dir a writable folder with free space, or use data.storage=memory",
        )
    return maps


def mapped_splits(
    tensors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    cache_dir: str | Path | None,
    what: str,
) -> dict[str, tuple[MappedRows, torch.Tensor]]:
    """Each split's `x` replaced by `MappedRows` of its stored copy; `y` (one value or a few per
    row) stays in memory, as the images' labels do."""
    maps = mapped_arrays({s: x.numpy() for s, (x, _) in tensors.items()}, cache_dir, what)
    return {
        split: (MappedRows(maps[split], tuple(x.shape[1:])), y) for split, (x, y) in tensors.items()
    }
