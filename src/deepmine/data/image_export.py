"""Write an in-memory image set out as class folders of PNGs: the input `data=image_folder` reads.

Why: the folder path (listing, decoding, resizing, caching, bad-input checks) must be tested on
real images, and nothing may be downloaded; Fashion-MNIST and scikit-learn's digits are on every
machine. Exported folders are also what a user can look at, or hand to another tool.

Pixels are written as uint8: uint8 data as it is (a PNG read back gives the same bytes), float
data scaled from 0..`pixel_max` to 0..255 and rounded. Class names become folder names made
safe for any filesystem ("T-shirt/top" -> "T-shirt_top").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deepmine.errors import DeepmineError

SPLITS = ("train", "val", "test")


def safe_name(name: str) -> str:
    """A folder name for a class: anything but letters, digits, `-`, `_`, `.`, space becomes
    `_`, and no leading dot (the folder reader skips hidden folders)."""
    cleaned = re.sub(r"[^\w\-. ]", "_", str(name)).strip().lstrip(".")
    return cleaned or "_"


def folder_names(class_names, num_classes: int) -> list[str]:
    """One distinct safe folder name per class index (the label itself when names are
    unknown); names that collide once made safe get their label appended."""
    names = list(class_names) if len(class_names) == num_classes else range(num_classes)
    safe = [safe_name(str(n)) for n in names]
    return [
        f"{s}_{label}" if safe.count(s) > 1 or s.lower() in ("train", "test") else s
        for label, s in enumerate(safe)
    ]


def as_uint8(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """Pixels as uint8: uint8 data unchanged, anything else scaled from 0..pixel_max."""
    if x.dtype == np.uint8:
        return x
    scaled = np.rint(x.astype(np.float64) / pixel_max * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def export_images(
    datamodule, split: str, out_dir: Path, limit_per_class: int | None = None
) -> dict[str, int]:
    """Write split `split` of an in-memory image datamodule as `out_dir/<class>/<index>.png`
    (index: the sample's position in the split, zero-padded so names sort in split order).
    Returns the number of images written per class folder."""
    from PIL import Image

    if split not in SPLITS:
        raise DeepmineError(f"split {split!r} is not one of {', '.join(SPLITS)}", "e.g. test")
    if limit_per_class is not None and limit_per_class < 1:
        raise DeepmineError(f"--per-class {limit_per_class} writes nothing", "give 1 or more")
    datamodule.setup()
    x, y = datamodule.tensors[split]
    x, y = x.numpy(), y.numpy()
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DeepmineError(
            "this data has no class labels to name folders by", "export a classification set"
        )
    images = _as_hwc(x)
    pixels = as_uint8(images, float(getattr(datamodule, "pixel_max", 255.0)))
    num_classes = int(getattr(datamodule, "num_classes", 0) or (y.max() + 1))
    names = folder_names(getattr(datamodule, "class_names", ()), num_classes)
    out_dir = Path(out_dir)
    width = len(str(max(len(y) - 1, 0)))
    written = dict.fromkeys(names, 0)
    for index, label in enumerate(y.tolist()):
        name = names[label]
        if limit_per_class is not None and written[name] >= limit_per_class:
            continue
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        image = pixels[index]
        mode = "L" if image.shape[-1] == 1 else "RGB"
        Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(
            folder / f"{index:0{width}d}.png"
        )
        written[name] += 1
    return {name: n for name, n in written.items() if n}


def _as_hwc(x: np.ndarray) -> np.ndarray:
    """Images `(N, C, H, W)` with C 1 or 3 (or `(N, H, W)`) as `(N, H, W, C)`."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DeepmineError(
            f"samples of shape {list(x.shape[1:])} are not grayscale or RGB images",
            "export an image set (channels 1 or 3, height, width), e.g. fashion_mnist or digits",
        )
    return x.transpose(0, 2, 3, 1)


def compose_data(name: str, overrides: list[str] | tuple[str, ...] = ()):
    """The datamodule of `conf/data/<name>.yaml` (with `overrides` of its keys, e.g.
    `data.val_size=0.2`), composed as `deepmine train data=<name>` would compose it."""
    from deepmine.config import checked_instantiate, compose_train

    return checked_instantiate(compose_train([f"data={name}", *overrides]).data)
