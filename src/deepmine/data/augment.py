"""Batch-level image augmentation for training: Keras `ImageDataGenerator` options on whole
batches, by Kornia, on the batch's device.

Why Kornia (`kornia.augmentation`): it transforms batched tensors on CPU and GPU with random
parameters per sample and needs no torchvision; a hand-written warp would be faster on tiny
batches (BENCHMARKS.md measures both) but is one more thing to get subtly wrong (interpolation,
fill, centre of rotation).

The settings are named after Keras' `ImageDataGenerator` arguments and mean what they mean there:
every sample gets its own random shift, rotation, zoom (one affine warp, bilinear, as Keras), then
a horizontal flip with probability 1/2, then a brightness factor; `rescale` is the data's own
`normalize=scale`. Kornia draws its random parameters on the CPU from torch's global generator
(also for batches on a GPU: the module is never moved), so a run's seed fixes them, the same
draws on every device, and the RNG state deepmine checkpoints (`RngStateInCheckpoint`) replays
them on resume. Under DDP every rank is seeded alike, so the ranks draw the same parameters for
their different samples.

The transforms work on pixels in [0, 1] (brightness is a factor on those, fill and clamping are
in pixel units), while batches arrive normalized: `PixelSpace` maps the datamodule's
`Normalize` back and forth. For `normalize=scale` (the default) the map is the identity, so a
sample that no transform touched comes out bit for bit as it went in.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from deepmine.errors import DeepmineError

#: every setting and its value when left out (Keras' defaults: nothing changes)
DEFAULTS = {
    "horizontal_flip": False,
    "width_shift_range": 0.0,
    "height_shift_range": 0.0,
    "rotation_range": 0.0,
    "zoom_range": 0.0,
    "brightness_range": None,
    "fill_mode": "nearest",
}
#: Keras' fill_mode -> Kornia's padding_mode (Keras' "wrap" has no Kornia counterpart)
FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


class PixelSpace:
    """A datamodule's batch normalization `(raw / scale - mean) / std`, seen as a map between
    its batches and pixels in [0, 1] (`raw / pixel_max`)."""

    def __init__(self, normalize=None, pixel_max: float = 1.0):
        scale = getattr(normalize, "scale", None)
        mean, std = getattr(normalize, "mean", None), getattr(normalize, "std", None)
        # pixels = (x * std + mean) * factor; factor is exactly 1.0 for normalize=scale
        self.factor = (scale if scale is not None else 1.0) / pixel_max
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x * self.std + self.mean
        return x * self.factor if self.factor != 1.0 else x

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels / self.factor if self.factor != 1.0 else pixels
        return (x - self.mean) / self.std if self.mean is not None else x


class BatchAugmentation(nn.Module):
    """Random transforms of a whole `(B, C, H, W)` batch, each sample with its own parameters.

    Built from the `augment` settings (see `DEFAULTS`, conf/augment/); `pixels` is the map to
    [0, 1] pixels, set by the datamodule once its normalization is known."""

    def __init__(self, settings: Mapping):
        super().__init__()
        self.steps = nn.Sequential(*_steps({**DEFAULTS, **check_settings(settings)}))
        self.pixels = PixelSpace()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.pixels.to_pixels(x)
        return self.pixels.from_pixels(self.steps(pixels)).to(x.dtype)


def batch_augmentation(settings: Mapping | None) -> BatchAugmentation | None:
    """The augmentation the settings describe; None when they are null or change nothing (no
    work at all in the training loop then)."""
    if settings is None:
        return None
    augmentation = BatchAugmentation(settings)
    return augmentation if len(augmentation.steps) else None


def check_settings(settings: Mapping) -> dict:
    """The settings as plain values, each checked: a typo or an out-of-range value is one line
    before the run starts, not a Kornia traceback in the first training step."""
    if not isinstance(settings, Mapping):
        raise DeepmineError(
            f"augment must be a mapping of settings, got {settings!r}",
            "pick a preset (augment=none|flip|standard) or set augment.<key>=<value>",
        )
    values = dict(settings)
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise DeepmineError(
            f"augment.{unknown[0]} is not an augmentation setting",
            f"use one of {', '.join(DEFAULTS)} (conf/augment/standard.yaml documents each)",
        )
    if not isinstance(values.get("horizontal_flip", False), bool):
        raise DeepmineError(
            f"augment.horizontal_flip={values['horizontal_flip']!r} is not true or false",
            "set augment.horizontal_flip=true or false",
        )
    for key, high in (
        ("width_shift_range", 1.0),
        ("height_shift_range", 1.0),
        ("zoom_range", 1.0),
        ("rotation_range", 180.0),
    ):
        value = values.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < high:
            raise DeepmineError(
                f"augment.{key}={value!r} is outside [0, {high:g})",
                "shifts and zoom are fractions of the image size, rotation is in degrees",
            )
        values[key] = float(value)
    brightness = values.get("brightness_range")
    if brightness is not None:
        pair = list(brightness) if not isinstance(brightness, str | Mapping) else []
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        if len(pair) != 2 or not numbers or not 0 <= pair[0] <= pair[1]:
            raise DeepmineError(
                f"augment.brightness_range={brightness!r} is not a range [low, high] of "
                "brightness factors with 0 <= low <= high",
                "set e.g. augment.brightness_range=[0.8,1.2], or null for no brightness change",
            )
        values["brightness_range"] = (float(pair[0]), float(pair[1]))
    fill = values.get("fill_mode", "nearest")
    if fill not in FILL_MODES:
        raise DeepmineError(
            f"augment.fill_mode={fill!r} is not one of {', '.join(FILL_MODES)}",
            "set augment.fill_mode=nearest (Keras' default)",
        )
    return values


def _steps(values: dict) -> list[nn.Module]:
    """Kornia transforms in Keras' order: one affine warp, then the flip, then brightness."""
    import kornia.augmentation as K

    steps: list[nn.Module] = []
    shift = (values["width_shift_range"], values["height_shift_range"])
    zoom, degrees = values["zoom_range"], values["rotation_range"]
    if any(shift) or zoom or degrees:
        steps.append(
            K.RandomAffine(
                degrees=degrees,
                translate=shift if any(shift) else None,
                # Keras draws the horizontal and the vertical zoom independently
                scale=(1 - zoom, 1 + zoom, 1 - zoom, 1 + zoom) if zoom else None,
                padding_mode=FILL_MODES[values["fill_mode"]],
                p=1.0,  # every sample gets its own random warp, as in Keras (Kornia's default: 0.5)
            )
        )
    if values["horizontal_flip"]:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    low_high = values["brightness_range"]
    if low_high is not None and low_high != (1.0, 1.0):
        # ColorJitter's brightness multiplies, as Keras' (PIL's) does; only that step is applied
        steps.append(K.ColorJitter(brightness=low_high, order=(0,), p=1.0))
    return steps
