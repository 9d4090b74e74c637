"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from the four IDX files in `data/fashion_mnist/`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmine.data.cache import cache_key, cached_arrays
from deepmine.data.idx import read_idx
from deepmine.data.in_memory import InMemoryDataModule
from deepmine.data.version import restore_command
from deepmine.errors import DeepmineError

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


class FashionMNISTDataModule(InMemoryDataModule):
    """60k training and 10k test 28x28 grayscale images of 10 clothing classes."""

    dvc_tracked = True
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )

    def __init__(self, data_dir: str, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.data_dir.is_dir():
            raise DeepmineError(
                f"{self.data_dir} does not exist", f"run `{restore_command(self.data_dir)}`"
            )
        sources = [self.data_dir / file for file in FILES.values()]
        for source in sources:
            if not source.is_file():
                raise DeepmineError(f"{source} is missing", f"run `{restore_command(source)}`")
        arrays = cached_arrays(
            self.cache_dir,
            f"fashion_mnist-{cache_key(sources)}",
            tuple(FILES),
            lambda: {name: read_idx(self.data_dir / file) for name, file in FILES.items()},
            mmap=self.mmap_wanted,
        )
        for split in ("train", "test"):
            if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
                raise DeepmineError(
                    f"Fashion-MNIST {split} images and labels differ in count",
                    f"run `{restore_command(self.data_dir)}` to restore data/",
                )
        return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
