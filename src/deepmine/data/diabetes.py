"""scikit-learn's embedded diabetes set: 442 patients, 10 baseline measurements, and a
quantitative measure of disease progression one year after baseline (a regression target).

The features are read raw (`load_diabetes(scaled=False)`): scikit-learn's default scaled copy
was centered and scaled with all 442 rows, test rows included, so its statistics would leak the
test set into training. Here each feature is standardized with the mean and std of the training
split only. The target stays in its own units; tasks standardize it with `target_scaler`.

`split=tail` keeps the file order and holds out the last `test_size` rows, the split of
scikit-learn's "Linear Regression Example" (trained on all but the last 20 patients, tested on
the last 20, with `bmi` alone: `features=[bmi]`); the validation rows Lightning needs are then
drawn at random from the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from deepmine.data.mapped import mapped_splits
from deepmine.data.tables import split_rows, standardized
from deepmine.data.tensors import TensorDataModule, fit_scaler
from deepmine.errors import DeepmineError

#: scikit-learn's names of the ten columns, in file order
FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
SPLIT_KINDS = ("random", "tail")
SOURCE = "scikit-learn's diabetes set"


class DiabetesDataModule(TensorDataModule):
    """Features are stored already standardized (float32), not normalized per batch: the whole
    table is 442 x 10 numbers, so a standardized copy costs nothing, and `self.tensors` then
    holds exactly what the net sees."""

    targets: ClassVar[str] = "value"
    target_names = ("progression",)

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 512,
        val_size: float | int = 0.1,
        test_size: float | int = 0.2,
        split: str = "random",
        split_seed: int = 0,
        shuffle_seed: int = 0,
        features: Sequence[str] | None = None,
        input_shape: Sequence[int] | None = None,
        num_targets: int = 1,
        num_outputs: int | None = None,
        storage: str = "memory",
        cache_dir: str | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle_seed, storage)
        self.cache_dir = cache_dir
        if split not in SPLIT_KINDS:
            raise DeepmineError(
                f"data.split={split!r} is not one of {', '.join(SPLIT_KINDS)}",
                "use data.split=random or data.split=tail (the last test_size rows as test)",
            )
        self.features = _check_features(features)
        _check_shape(input_shape, len(self.features))
        if num_targets != 1:
            raise DeepmineError(
                f"data.num_targets={num_targets}, but the diabetes set has one target",
                "set data.num_targets=1",
            )
        self.num_targets = num_targets
        self.num_outputs = num_outputs if num_outputs is not None else num_targets
        self.val_size, self.test_size = val_size, test_size
        self.split, self.split_seed = split, split_seed
        #: rows of the file in each split, in file order (for analysis and tests)
        self.rows: dict[str, np.ndarray] = {}

    def shapes(self) -> dict:
        return {
            "input_shape": [len(self.features)],
            "num_outputs": self.num_outputs,
            "num_targets": self.num_targets,
        }

    def codec(self):
        """The features' training standardization (`TableCodec`): raw columns by name."""
        import pandas as pd

        from deepmine.data.codecs import TableCodec

        self.setup()
        frame = pd.DataFrame(self._raw, columns=list(self.features))
        numeric = {name: frame[name] for name in self.features}
        return TableCodec.fitted(
            frame,
            list(self.features),
            numeric,
            {},
            {},
            self._scaling,
            self.rows["train"],
            target_names=self.target_names,
        )

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """`(x, y)`: the raw selected feature columns and the target, in file order."""
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes(scaled=False)
        columns = [list(bunch.feature_names).index(name) for name in self.features]
        return bunch.data[:, columns], bunch.target

    def make_splits(self) -> None:
        x, y = self.load()
        self.rows = split_rows(
            len(x),
            self.test_size,
            self.val_size,
            self.split_seed,
            SOURCE,
            tail=self.split == "tail",
        )
        features, self._scaling = standardized(x, np.ones(x.shape[1], dtype=bool), self.rows)
        self._raw = x
        y = torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)
        self.tensors = {
            split: (features[split], y[torch.as_tensor(rows)]) for split, rows in self.rows.items()
        }
        if self.mmap_wanted:
            self.tensors = mapped_splits(self.tensors, self.cache_dir, "diabetes")
        self.target_scaler = fit_scaler(self.tensors["train"][1])


def _check_features(features: Sequence[str] | None) -> tuple[str, ...]:
    """The selected columns, by scikit-learn's names; null: all ten."""
    if features is None:
        return FEATURES
    if isinstance(features, str):
        features = [features]
    chosen = tuple(str(f) for f in features)
    unknown = [f for f in chosen if f not in FEATURES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        problem = (
            f"unknown column(s) {', '.join(map(repr, unknown))}"
            if unknown
            else "no column, or a column twice"
        )
        raise DeepmineError(
            f"data.features={list(chosen)}: {problem} (the diabetes columns are "
            f"{', '.join(FEATURES)})",
            "list distinct columns from those, e.g. data.features=[bmi], or null for all",
        )
    return chosen


def _check_shape(input_shape: Sequence[int] | None, n_features: int) -> None:
    if input_shape is not None and list(input_shape) != [n_features]:
        raise DeepmineError(
            f"data.features selects {n_features} column(s) but data.input_shape="
            f"{list(input_shape)}",
            f"set data.input_shape=[{n_features}] (or null: filled from the features)",
        )
