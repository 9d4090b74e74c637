"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

Safe loading: the header is validated against the file length before anything is allocated, so a
truncated or tampered file fails with a clear message instead of a garbage array.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from deepmine.data.version import restore_command
from deepmine.errors import DeepmineError

# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian as stored.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into a numpy array of its stored shape and type."""
    path = Path(path)
    if not path.is_file():
        raise DeepmineError(f"{path} is missing", f"run `{restore_command(path)}`")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DeepmineError(
                f"{path} is not a valid gzip file ({exc})",
                f"run `{restore_command(path)}` to restore it",
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DeepmineError(
            f"{path} is not an IDX file (bad magic number)",
            f"run `{restore_command(path)}` to restore it",
        )
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DeepmineError(
            f"{path} holds {len(raw)} bytes but its header {shape} needs {expected}",
            f"run `{restore_command(path)}` to restore it",
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )
