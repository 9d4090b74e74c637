"""An image set's fitted preprocessing: image files or arrays of any size in, the normalized
batch the net saw out.

Files are decoded as in training (`deepmine.data.image_folder.decode_image`: Pillow, the
training colour mode, bilinear resize to the training size), so an image of the training folder
gives the training pixels bit for bit. Arrays are taken in the data's own pixel scale
(0..`pixel_max`: 0..255 for Fashion-MNIST and folders, 0..16 for digits) and resized the same
way when their size differs; pixels of a file (0..255) are brought to that scale first. Then the
training normalization (`Normalize`: the same operations, in the same order).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepmine.data.batches import Normalize
from deepmine.data.drift import numeric_reference
from deepmine.errors import DeepmineError

#: the input columns an image model reads: a file path, or a file's bytes (base64 in JSON)
PATH_COLUMN, BYTES_COLUMN = "path", "image"
#: the one drift feature of images: each image's mean pixel, as a share of `pixel_max`
DRIFT_FEATURE = "pixel_mean"


class ImageCodec:
    kind = "image"

    def __init__(
        self,
        shape: Sequence[int],
        pixel_max: float,
        scale: float | None,
        mean: float | None,
        std: float | None,
        class_names: Sequence[str] = (),
        references: dict[str, dict] | None = None,
    ):
        self.shape = tuple(int(n) for n in shape)  # (channels, height, width)
        self.pixel_max = float(pixel_max)
        self.scale, self.mean, self.std = scale, mean, std
        self.class_names = tuple(class_names)
        self.target_names: tuple[str, ...] = ()
        self.references = references or {}

    @classmethod
    def fitted(cls, shape, pixel_max: float, normalize: Normalize, train_x, class_names=()):
        """The codec of an image set: `normalize` is its training `Normalize`, `train_x` the
        training images as stored (a tensor, or rows of a memory map: read in chunks)."""
        means = [
            _pixel_means(train_x[start : start + 8192], pixel_max)
            for start in range(0, len(train_x), 8192)
        ]
        values = np.concatenate(means) if means else np.zeros(0)

        def plain(v):
            return None if v is None else float(torch.as_tensor(v).reshape(-1)[0])

        return cls(
            shape,
            pixel_max,
            plain(normalize.scale),
            plain(normalize.mean),
            plain(normalize.std),
            class_names,
            {DRIFT_FEATURE: numeric_reference(values)},
        )

    @property
    def input_columns(self) -> list[str]:
        return [PATH_COLUMN, BYTES_COLUMN]

    @property
    def mode(self) -> str:
        return "L" if self.shape[0] == 1 else "RGB"

    def encode(self, data, on_unseen: str = "zeros", drift=None) -> torch.Tensor:
        """A normalized `(N, C, H, W)` batch of `data`: a DataFrame with a `path` column (image
        files) or an `image` column (the files' bytes), or an array (or list of arrays) of
        images `(H, W)`, `(N, H, W)`, `(N, C, H, W)` or `(N, H, W, C)` in the data's pixel
        scale. `drift` (`deepmine.data.drift.DriftCounter`) is given each image's mean pixel."""
        pixels = self.pixels(data)
        if drift is not None:
            drift.add({DRIFT_FEATURE: _pixel_means(pixels, self.pixel_max)})
        normalize = Normalize(
            self.scale,
            None if self.mean is None else torch.tensor(self.mean),
            None if self.std is None else torch.tensor(self.std),
        )
        return normalize(pixels)

    def pixels(self, data) -> torch.Tensor:
        """The images of `data` at the training size and colour, in the data's pixel scale
        (uint8 where that scale is 0..255, as training stores them)."""
        if isinstance(data, pd.DataFrame):
            return self._from_files(data)
        if isinstance(data, dict) and (PATH_COLUMN in data or BYTES_COLUMN in data):
            return self._from_files(pd.DataFrame(data))
        arrays = [np.asarray(a) for a in data] if isinstance(data, list) else None
        if arrays is not None and arrays and arrays[0].ndim >= 2:
            return torch.cat([self._from_array(a[None]) for a in arrays])
        return self._from_array(np.asarray(data))

    def _from_files(self, frame: pd.DataFrame) -> torch.Tensor:
        from deepmine.data.image_folder import decode_image

        column = PATH_COLUMN if PATH_COLUMN in frame.columns else BYTES_COLUMN
        if column not in frame.columns:
            raise DeepmineError(
                f"the input has neither a {PATH_COLUMN!r} column (image files) nor an "
                f"{BYTES_COLUMN!r} column (their bytes); its columns: "
                f"{', '.join(map(str, frame.columns))}",
                f"name the column of image paths {PATH_COLUMN!r}",
            )
        size = self.shape[1:]
        images = []
        for i, value in enumerate(frame[column]):
            source = Path(str(value)) if column == PATH_COLUMN else io.BytesIO(_as_bytes(value))
            try:
                images.append(decode_image(source, size, self.mode))
            except (OSError, ValueError, SyntaxError) as exc:
                shown = source if column == PATH_COLUMN else f"row {i}"
                raise DeepmineError(
                    f"cannot read image {shown}: {exc}",
                    "replace it with a readable PNG or JPEG, or leave it out of the input",
                ) from None
        pixels = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, *self.shape)
        if self.pixel_max != 255.0:
            pixels = pixels.to(torch.float32) * (self.pixel_max / 255.0)
        return pixels

    def _from_array(self, x: np.ndarray) -> torch.Tensor:
        channels, height, width = self.shape
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3:  # (N, H, W): gray images
            x = x[:, None]
        elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # channels last
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DeepmineError(
                f"an image array of shape {list(x.shape)} is not (H, W), (N, H, W), "
                "(N, C, H, W) or (N, H, W, C) with 1 or 3 channels",
                f"pass images shaped like the training ones, {list(self.shape)}",
            )
        if x.shape[1] != channels:  # gray to colour or back, as Pillow converts
            x = np.repeat(x, 3, axis=1) if channels == 3 else x.mean(1, keepdims=True)
        if x.shape[2:] != (height, width):
            x = np.stack([_resized(image, height, width) for image in x])
        if x.dtype == np.uint8:
            return torch.from_numpy(np.ascontiguousarray(x))
        return torch.as_tensor(x, dtype=torch.float32)


def _resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """One (C, H, W) image resized bilinearly per channel by Pillow (as files are)."""
    from PIL import Image

    channels = [
        np.asarray(
            Image.fromarray(c.astype(np.float32), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in image
    ]
    out = np.stack(channels)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else out


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    import base64

    return base64.b64decode(str(value))


def _pixel_means(x, pixel_max: float) -> np.ndarray:
    x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    return (x.to(torch.float32).flatten(1).mean(1) / pixel_max).numpy().astype(np.float64)
