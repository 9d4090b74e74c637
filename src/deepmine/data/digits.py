"""scikit-learn's embedded 8x8 handwritten digits (1797 samples): a tiny, always-present set.

It has no published train/test split, so the test set is a fixed 20% carved out with a constant
seed: the same for every run and every `split_seed`.

The split arrays are kept in the decoded-array cache (`data.cache_dir`), keyed by scikit-learn's
version: reading the set is quick, but importing `sklearn.datasets` to read it took 0.28 s of a
0.65 s tiny run's own work (`debug=fast`, past the imports every run pays); `data.storage=mmap`
maps the same files. With `cache_dir=null` the set is read from scikit-learn every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepmine.data.cache import cached_arrays
from deepmine.data.in_memory import InMemoryDataModule

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0


class DigitsDataModule(InMemoryDataModule):
    """Pixel values are 0..16."""

    pixel_max = 16.0
    class_names = tuple(str(d) for d in range(10))

    def __init__(self, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from importlib.metadata import version  # not `import sklearn`: the import is the cost

        names = ("x_train", "y_train", "x_test", "y_test")
        key = f"digits-sklearn-{version('scikit-learn')}-{TEST_SPLIT_SEED}-{TEST_FRACTION}"
        arrays = cached_arrays(
            self.cache_dir,
            key,
            names,
            lambda: dict(zip(names, self._read(), strict=True)),
            mmap=self.mmap_wanted,
        )
        return tuple(arrays[name] for name in names)

    def _read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.images.astype(np.float32), bunch.target
        order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(x))
        n_test = round(TEST_FRACTION * len(x))
        test, train = order[:n_test], order[n_test:]
        return x[train], y[train], x[test], y[test]
