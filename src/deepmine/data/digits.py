"""scikit-learn's embedded 8x8 handwritten digits (1797 samples): a tiny, always-present set.

It has no published train/test split, so the test set is a fixed 20% carved out with a constant
seed: the same for every run and every `split_seed`.
"""

from __future__ import annotations

import numpy as np

from deepmine.data.in_memory import InMemoryDataModule

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0


class DigitsDataModule(InMemoryDataModule):
    """Pixel values are 0..16."""

    pixel_max = 16.0
    class_names = tuple(str(d) for d in range(10))

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.images.astype(np.float32), bunch.target
        order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(x))
        n_test = round(TEST_FRACTION * len(x))
        test, train = order[:n_test], order[n_test:]
        return x[train], y[train], x[test], y[test]
