"""A decoded-array cache: the `.npy` files of a dataset's arrays, keyed by its source files.

Why: decompressing and decoding Fashion-MNIST's gzip IDX files takes ~0.3 s of every run's
start; loading the same arrays from `.npy` takes ~0.03 s. The key is a hash of every source
file's name, size and modification time (the bytes themselves are checked against `data.dvc` by
DVC before a run starts), so `deepmine data pull` or any edit of data/ writes files with a new
key and a stale entry is never read. Files
are written to a temporary name and renamed into place, so a run killed while writing leaves no
half-written entry. The cache lives outside the DVC-tracked `data/` folder.

With `mmap=True` (`data.storage=mmap`) the entry's files are opened as read-only memory maps
(`np.load(mmap_mode="r")`) instead of read: a set larger than memory is paged in batch by batch.
A freshly decoded entry is written first and then mapped, so the decoded copy is freed on return.
`mmap="c"` maps them copy-on-write instead: writable as far as numpy and torch can tell (a tensor
made from a read-only array warns), while the file itself is never written.

A dataset larger than memory cannot be decoded whole before it is written: with `mmap` and a
`write` function, the entry's files are written by it, straight to disk (e.g. into
`np.lib.format.open_memmap` files, batch by batch), in a scratch folder renamed into place when
complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_key(sources: list[Path]) -> str:
    digest = hashlib.sha1()
    for path in sorted(sources):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_arrays(
    directory: Path | None,
    key: str,
    names: tuple[str, ...],
    decode: Callable[[], dict[str, np.ndarray]],
    mmap: bool | str = False,
    write: Callable[[Path], None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays `names`, from `directory/key/` if present there, else from `decode()` (and
    then stored there). `directory=None` switches the cache off. `mmap`: the stored files are
    returned as read-only memory maps, or copy-on-write ones with `mmap="c"` (arrays decoded
    but not stored stay in memory). `write(folder)`, used instead of `decode` under `mmap`,
    writes `folder/<name>.npy` for every name itself, with memory bounded by what it holds."""
    if directory is None:
        return decode()
    entry = Path(directory) / key
    files = {name: entry / f"{name}.npy" for name in names}
    mode = mmap if isinstance(mmap, str) else "r" if mmap else None

    def stored() -> dict[str, np.ndarray]:
        return {name: np.load(f, mmap_mode=mode, allow_pickle=False) for name, f in files.items()}

    if all(f.is_file() for f in files.values()):
        try:
            return stored()
        except (OSError, ValueError):
            pass  # unreadable entry: decode again and overwrite it
    if mmap and write is not None:
        entry.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=entry, prefix=".writing-"))
        try:
            write(scratch)
            for name, path in files.items():
                os.replace(scratch / f"{name}.npy", path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return stored()
    arrays = decode()
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            with tempfile.NamedTemporaryFile(dir=entry, suffix=".tmp", delete=False) as tmp:
                np.save(tmp, arrays[name], allow_pickle=False)
            os.replace(tmp.name, path)
    except OSError:
        return arrays  # a read-only or full disk costs speed, not the run
    return stored() if mmap else arrays
