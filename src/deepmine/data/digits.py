"""scikit-learn's embedded 8x8 handwritten digits (1797 samples): a tiny, always-present set.

It has no published train/test split, so the test set is a fixed 20% carved out with a constant
seed: the same for every run and every `split_seed`.

The set is read from scikit-learn on every run (it is tiny); only `data.storage=mmap` stores it
in the decoded-array cache, as the memory maps that mode reads.
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
        if not self.mmap_wanted:
            return self._read()
        import sklearn

        names = ("x_train", "y_train", "x_test", "y_test")
        key = f"digits-sklearn-{sklearn.__version__}-{TEST_SPLIT_SEED}-{TEST_FRACTION}"
        arrays = cached_arrays(
            self.cache_dir,
            key,
            names,
            lambda: dict(zip(names, self._read(), strict=True)),
            mmap=True,
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
