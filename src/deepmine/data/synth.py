"""`deepmine data synth fashion_mnist --scale N`: an honest large set, N× Fashion-MNIST.

Why: measuring how training scales with data size needs a set larger than memory that still
means something. The training split is written N times: the original images once, then N-1
copies with label-preserving augmentation (a random shift of up to `MAX_SHIFT` pixels with
zero fill, and a horizontal flip half of the time: a garment or shoe seen mirrored is the same
class), seeded per copy, so the same command writes the same bytes. The test split is copied
unchanged, so test accuracy stays comparable with the original set.

The files are gzip IDX, named as Fashion-MNIST's, so `data=fashion_mnist
data.data_dir=data/<name>` trains on them; they are written copy by copy (one 1× chunk in
memory, never N×) into a staging folder and then added to `data/` and pinned in `data.dvc` by
`version.add_folder`, as `deepmine data add` does.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deepmine.data import version
from deepmine.data.fashion_mnist import FILES
from deepmine.data.idx import read_idx
from deepmine.errors import DeepmineError

SOURCES = ("fashion_mnist",)
#: largest shift, in pixels, of an augmented copy (each axis, either direction)
MAX_SHIFT = 2
#: gzip level of the written files: 1 writes several times faster than 9 for ~10% more bytes
GZIP_LEVEL = 1


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`images` (N, H, W) uint8, each shifted by a random (dy, dx) in [-MAX_SHIFT, MAX_SHIFT]
    with zeros shifted in, and flipped left-right with probability 1/2. Vectorized per
    (dy, dx, flip) group: no per-image Python work."""
    n = len(images)
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    out = np.zeros_like(images)
    height, width = images.shape[1:]
    for sy in range(-MAX_SHIFT, MAX_SHIFT + 1):
        for sx in range(-MAX_SHIFT, MAX_SHIFT + 1):
            for mirrored in (False, True):
                group = np.flatnonzero((dy == sy) & (dx == sx) & (flip == mirrored))
                if not len(group):
                    continue
                part = images[group][:, :, ::-1] if mirrored else images[group]
                src_y = slice(max(0, -sy), height - max(0, sy))
                src_x = slice(max(0, -sx), width - max(0, sx))
                dst_y = slice(max(0, sy), height - max(0, -sy))
                dst_x = slice(max(0, sx), width - max(0, -sx))
                out[group, dst_y, dst_x] = part[:, src_y, src_x]
    return out


def _idx_header(count: int, shape: tuple[int, ...]) -> bytes:
    """The IDX header of `count` uint8 items of `shape` (type code 0x08)."""
    dims = (count, *shape)
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def write_scaled(source: Path, target: Path, scale: int, seed: int) -> None:
    """Write N× `source`'s training split (and its test split as is) into `target`."""
    images = read_idx(source / FILES["x_train"])
    labels = read_idx(source / FILES["y_train"])
    target.mkdir(parents=True)
    x_path, y_path = target / FILES["x_train"], target / FILES["y_train"]
    with (
        gzip.open(x_path, "wb", compresslevel=GZIP_LEVEL) as x_out,
        gzip.open(y_path, "wb", compresslevel=GZIP_LEVEL) as y_out,
    ):
        x_out.write(_idx_header(scale * len(images), images.shape[1:]))
        y_out.write(_idx_header(scale * len(labels), ()))
        for copy in range(scale):
            chunk = images if copy == 0 else augment(images, np.random.default_rng([seed, copy]))
            x_out.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
            y_out.write(labels.astype(np.uint8).tobytes())
    for name in ("x_test", "y_test"):
        shutil.copy2(source / FILES[name], target / FILES[name])
    provenance = {
        "source": source.name,
        "scale": scale,
        "seed": seed,
        "train": scale * len(images),
        "augmentation": f"shift <= {MAX_SHIFT} px (zero fill), horizontal flip p=0.5; "
        "copy 0 is the original; the test split is unchanged",
    }
    (target / "synth.json").write_text(json.dumps(provenance, indent=2) + "\n")


def synth(
    root: Path, source: str, scale: int, name: str | None = None, seed: int = 0, force=False
) -> str:
    """Make `data/<name>` (default `<source>_x<scale>`) and pin it in `data.dvc`; returns what
    to tell the user."""
    if source not in SOURCES:
        raise DeepmineError(
            f"data synth cannot scale {source!r}", f"use one of: {', '.join(SOURCES)}"
        )
    if scale < 1:
        raise DeepmineError(f"--scale {scale} is not a positive integer", "pass e.g. --scale 4")
    folder = root / version.DATA_DIR / source
    for file in FILES.values():
        if not (folder / file).is_file():
            raise DeepmineError(
                f"{folder / file} is missing", f"run `{version.restore_command(folder / file)}`"
            )
    name = name or f"{source}_x{scale}"
    # staged outside data/, so data/ keeps matching its pin until add_folder moves it in
    with tempfile.TemporaryDirectory(prefix=".deepmine-synth-", dir=root) as staging:
        staged = Path(staging) / name
        write_scaled(folder, staged, scale, seed)
        added = version.add_folder(root, staged, name, force=force)
    target = (root / version.DATA_DIR / name).resolve()
    lines = [
        f"train on it with: deepmine train data={source} data.data_dir={target}"
        if line.startswith("train on it with:")
        else line.replace(str(staged.resolve()), f"{scale}x {source}")
        for line in added.splitlines()
    ]
    return "\n".join(lines)
