"""A LightningDataModule whose whole dataset lives in memory as tensors.

Subclasses only say how to load arrays (`load`); splitting, normalization and batching are
shared. The validation split is cut from the training set by a generator seeded with
`split_seed` (independent of the run seed, so runs with different seeds are validated on the same
samples); the test set is never touched before `trainer.test`.

Images are kept as stored (uint8 pixels stay uint8) and normalized per batch, on the batch
being fed: a quarter of the memory of a float32 copy of the whole set (Fashion-MNIST: 47 MB
instead of 188 MB, with no float copies made while splitting), and the same values bit for bit,
since normalization is elementwise.

Training batches can be augmented (`augment`, the Keras `ImageDataGenerator` options, see
`deepmine.data.augment`): on the batch's device, after Lightning moved it there
(`on_after_batch_transfer`), only while the Trainer trains; validation, sanity checks, test and
predict see the data as stored.

`storage="mmap"` (`data.storage=mmap`) keeps the arrays on disk: a subclass's `load()` returns
read-only memory maps of the decoded-array cache's `.npy` files (`mmap_wanted` tells it to),
the splits are index views of those maps (`MappedRows`), and each batch is gathered from the
file and only then becomes a tensor. Batches are the same, bit for bit, as with
`storage="memory"` for `normalize=scale|none`; with `normalize=standardize` the training
statistics are accumulated in float64 over chunks (the split is never in memory whole), which
may differ from the in-memory float32 reduction in the last bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

from deepmine.data.augment import PixelSpace, batch_augmentation
from deepmine.data.batches import MappedRows, Normalize
from deepmine.data.tensors import TensorDataModule, split_count
from deepmine.errors import DeepmineError

NORMALIZATIONS = ("scale", "standardize", "none")
#: rows per chunk when standardize statistics are gathered from a memory map
STATS_CHUNK = 65_536


class InMemoryDataModule(TensorDataModule):
    """Base class: `load()` returns `(x_train, y_train, x_test, y_test)` numpy arrays."""

    targets: ClassVar[str] = "class"
    #: Largest raw pixel value, used by `normalize="scale"`.
    pixel_max: ClassVar[float] = 255.0
    class_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int],
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        val_size: float | int = 0.1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        normalize: str = "scale",
        num_outputs: int | None = None,
        augment: Mapping | None = None,
        storage: str = "memory",
    ):
        super().__init__(batch_size, eval_batch_size, shuffle_seed, storage)
        if normalize not in NORMALIZATIONS:
            raise DeepmineError(
                f"data.normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}",
                "pick one of them, e.g. data.normalize=scale",
            )
        self.num_classes = num_classes
        # one logit per class: the width nets read as ${data.num_outputs}
        self.num_outputs = num_outputs if num_outputs is not None else num_classes
        self.input_shape = tuple(input_shape)
        self.val_size = val_size
        self.split_seed = split_seed
        self.normalize = normalize
        # checked here, when the config is built: a bad setting stops the run before it opens
        self.augmentation = batch_augmentation(augment)
        if self.augmentation is not None and len(self.input_shape) != 3:
            raise DeepmineError(
                f"augment needs images of shape [channels, height, width], but data.input_shape "
                f"is {list(self.input_shape)}",
                "set input_shape to [C, H, W], or augment=none",
            )

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def shapes(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "num_outputs": self.num_outputs,
        }

    def make_splits(self) -> None:
        x_train, y_train, x_test, y_test = self.load()
        x_train = self._as_images(x_train, "train")
        x_test = self._as_images(x_test, "test")
        y_train, y_test = np.array(y_train), np.array(y_test)  # labels: small, always in memory
        y_train = torch.as_tensor(y_train, dtype=torch.long)
        y_test = torch.as_tensor(y_test, dtype=torch.long)
        labels = int(max(y_train.max(), y_test.max())) + 1
        if labels > self.num_classes:
            raise DeepmineError(
                f"the data has {labels} classes but data.num_classes={self.num_classes}",
                "fix num_classes in the data config",
            )
        n_val = split_count(self.val_size, len(x_train), "data.val_size")
        order = torch.randperm(
            len(x_train), generator=torch.Generator().manual_seed(self.split_seed)
        )
        val_idx, fit_idx = order[:n_val], order[n_val:]

        def rows(x, index):  # a map's split is a view; a tensor's a copy, as it always was
            return x.view(index.numpy()) if isinstance(x, MappedRows) else x[index]

        self.tensors = {
            "train": (rows(x_train, fit_idx), y_train[fit_idx]),
            "val": (rows(x_train, val_idx), y_train[val_idx]),
            "test": (x_test, y_test),
        }
        self.transform = self._normalization(self.tensors["train"][0])
        if self.augmentation is not None:
            self.augmentation.pixels = PixelSpace(self.transform, self.pixel_max)

    def codec(self):
        """The images' training size, colour and normalization (`ImageCodec`)."""
        from deepmine.data.codecs import ImageCodec

        self.setup()
        return ImageCodec.fitted(
            self.input_shape,
            self.pixel_max,
            self.transform,
            self.tensors["train"][0],
            self.class_names,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment a training batch on its device; any other batch passes as it is. With no
        augmentation this is one `None` check per batch (Lightning calls the task's no-op hook
        instead when a datamodule has none, so the call itself costs nothing more)."""
        if self.augmentation is None or not (self.trainer is not None and self.trainer.training):
            return batch
        x, y = batch
        return self.augmentation(x), y

    def _as_images(self, x: np.ndarray, split: str) -> torch.Tensor | MappedRows:
        n_features = int(np.prod(self.input_shape))
        values = int(np.prod(np.shape(x)[1:]))
        if values != n_features:
            raise DeepmineError(
                f"{split} samples have {values} values, data.input_shape "
                f"{list(self.input_shape)} needs {n_features}",
                "fix input_shape in the data config",
            )
        if self.storage == "mmap":
            if isinstance(x, MappedRows):  # already rows of a map (a subclass's own split)
                return x
            if not isinstance(x, np.memmap):
                raise DeepmineError(
                    f"data.storage=mmap needs the decoded-array cache, but "
                    f"{type(self).__name__} gave its {split} images in memory",
                    "set data.cache_dir to a folder (the cache), or use data.storage=memory",
                )
            return MappedRows(x, self.input_shape)
        x = np.asarray(x)
        # uint8 pixels are kept as they are; anything else becomes float32
        x = torch.from_numpy(x) if x.dtype == np.uint8 else torch.as_tensor(x, dtype=torch.float32)
        return x.reshape(len(x), *self.input_shape).contiguous()

    def _normalization(self, x_fit: torch.Tensor) -> Normalize:
        if self.normalize == "none":
            return Normalize()
        if self.normalize == "scale":
            return Normalize(scale=self.pixel_max)
        # Statistics of the training split only: the val and test sets must not leak in.
        if isinstance(x_fit, MappedRows):
            mean, std = _chunked_statistics(x_fit, self.pixel_max)
            return Normalize(self.pixel_max, mean, std.clamp_min(1e-8))
        scaled = x_fit.to(torch.float32) / self.pixel_max  # transient: freed on return
        return Normalize(self.pixel_max, scaled.mean(), scaled.std().clamp_min(1e-8))


def _chunked_statistics(x: MappedRows, pixel_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of `x / pixel_max` over all values, read chunk by chunk from
    the map (never the whole split in memory), accumulated in float64; float32 results."""
    chunks = [slice(start, start + STATS_CHUNK) for start in range(0, len(x), STATS_CHUNK)]
    total, count = 0.0, 0
    for chunk in chunks:
        part = x[chunk].to(torch.float32) / pixel_max
        total += float(part.to(torch.float64).sum())
        count += part.numel()
    mean = total / count
    squares = 0.0
    for chunk in chunks:
        part = x[chunk].to(torch.float32) / pixel_max
        squares += float(((part.to(torch.float64) - mean) ** 2).sum())
    std = (squares / max(count - 1, 1)) ** 0.5
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
