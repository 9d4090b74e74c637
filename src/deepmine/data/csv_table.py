"""A user's own table: a CSV file, one row per sample, one target column.

The file is read by pandas, with the delimiter `data.sep` names or, by default, the one guessed
from its head (`deepmine.data.csv_sep`: UCI-style `;` tables read as they are). Numeric feature
columns are standardized with statistics of the training split; columns listed as categorical are
one-hot encoded with the categories of the training split (a category met only in validation or
test rows encodes as an all-zero row). Every problem with the table (a missing column, a word in a
numeric column, missing values, a target with one class, an empty split) stops the run before
training, in one line naming the file and the column.

Features are stored already standardized (float32), not normalized per batch: tables are small
next to the model's work, one-hot columns must stay 0/1 so a per-batch transform would need
per-column exceptions, and `self.tensors` then holds exactly what the net sees.

With `data.storage=mmap` the file is never read whole: `deepmine.data.csv_chunks` prepares it
in chunks straight into the cache, with the same arrays bit for bit.

The file's identity is part of a run's record: a file inside the project's DVC-tracked `data/`
is versioned by DVC (`dvc_tracked`); any other file is identified by its path and MD5
(`source_tags`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepmine.data import csv_chunks, csv_sep, tables
from deepmine.data.tensors import TensorDataModule, fit_scaler
from deepmine.errors import DeepmineError
from deepmine.project import project_root

TARGET_KINDS = ("class", "value")
NOT_NUMERIC_FIX = "list it under data.categorical, or fix the values"
VALUE_TARGET_FIX = (
    "a value target must be numeric: fix the column, or use a classification task "
    "(data.targets=class)"
)


class CSVDataModule(TensorDataModule):
    """Options are the keys of conf/data/csv.yaml, documented there."""

    def __init__(
        self,
        path: str,
        target: str | None,
        targets: str = "auto",
        sep: str = "auto",
        features: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        impute: str | None = None,
        split_column: str | None = None,
        test_size: float | int = 0.2,
        val_size: float | int = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 1000,
        shuffle_seed: int = 0,
        input_shape: Sequence[int] | None = None,
        num_outputs: int | None = None,
        num_classes: int | None = None,
        num_targets: int | None = None,
        storage: str = "memory",
        cache_dir: str | None = None,
        chunk_rows: int = 20_000,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle_seed, storage)
        self.cache_dir = cache_dir
        self.chunk_rows = csv_chunks.checked_chunk_rows(chunk_rows)
        self.targets = _check_choice("targets", targets, TARGET_KINDS, auto_hint=True)
        if impute is not None:
            _check_choice("impute", impute, tables.IMPUTATIONS)
        self.path = resolve(path)
        if not self.path.is_file():
            raise DeepmineError(
                f"table {self.path} (data.path={path}) does not exist",
                "set data.path to a CSV file (relative: to this directory, else to the project)",
            )
        self.dvc_tracked = self.path.is_relative_to(project_root() / "data")
        #: data.sep as configured (auto, or a delimiter); `delimiter` is the one read with
        self.sep = csv_sep.checked(sep)
        self.delimiter: str | None = None
        #: None: a table without labels (clustering only; every label is -1)
        self.target = None if target is None else str(target)
        self.target_names = () if target is None else (self.target,)
        self.features = _names(features)
        self.categorical = _names(categorical) or []
        self.impute = impute
        self.split_column = split_column
        self.test_size, self.val_size, self.split_seed = test_size, val_size, split_seed
        #: shape keys as configured (null: filled from the table); checked against the table
        self.configured = {
            "input_shape": list(input_shape) if input_shape is not None else None,
            "num_outputs": num_outputs,
            "num_classes": num_classes,
            "num_targets": num_targets,
        }
        #: names of the columns of x: numeric columns as in the file, one-hot ones `column=value`
        self.feature_names: list[str] = []
        #: rows of the table (after `impute=drop`) in each split, in file order
        self.rows: dict[str, np.ndarray] = {}

    def source_tags(self) -> dict[str, str]:
        """What identifies the table in a run's record: its absolute path and the MD5 of its
        bytes (a file outside `data/` has no DVC version)."""
        return {
            "deepmine.data.csv.path": str(self.path),
            "deepmine.data.csv.md5": tables.file_md5(self.path),
        }

    def read_tags(self) -> dict[str, str]:
        """Run tags about how the table was read, known once it is (`deepmine train` adds them
        to the run's start tags): the delimiter, which data.sep=auto leaves to the file."""
        return csv_sep.tags(self.delimiter) if self.delimiter else {}

    def shapes(self) -> dict:
        """Read from the table, so reading it (once) comes first."""
        self.setup()
        return self._found_shapes()

    def _found_shapes(self) -> dict:
        shapes = {"input_shape": [len(self.feature_names)]}
        if self.targets == "class":
            k = len(self.class_names) or None  # None: no labels, nothing to count
            return {**shapes, "num_outputs": k, "num_classes": k}
        outputs = self.configured["num_outputs"]
        return {**shapes, "num_outputs": outputs if outputs is not None else 1, "num_targets": 1}

    def make_splits(self) -> None:
        if self.mmap_wanted:  # read in chunks straight into the cache: `csv_chunks`
            self.tensors = csv_chunks.prepare(self)
        else:
            self._prepare_in_memory()
        if self.targets == "value":
            self.target_scaler = fit_scaler(self.tensors["train"][1])

    def _prepare_in_memory(self) -> None:
        frame, features, numeric, y = self._checked_table()
        self.rows = self._split(frame, y)
        raw_numeric, fills = numeric, {}
        if self.impute in ("mean", "median"):
            numeric, fills = tables.impute(numeric, self.rows["train"], self.impute)
        x, is_numeric = self._feature_matrix(frame, features, numeric)
        self._check_configured_shapes()
        x_splits, scaling = tables.standardized(x, is_numeric, self.rows)
        self._codec_parts = (frame, features, raw_numeric, fills, scaling)
        self.tensors = {
            split: (x_splits[split], y[torch.as_tensor(rows)]) for split, rows in self.rows.items()
        }

    def codec(self):
        """The table's preprocessing as fitted on the training rows (`TableCodec`)."""
        from deepmine.data.codecs import TableCodec

        self.setup()
        if self.mmap_wanted:
            return csv_chunks.codec(self)
        frame, features, numeric, fills, scaling = self._codec_parts
        return TableCodec.fitted(
            frame,
            features,
            numeric,
            self.categories,
            fills if self.impute in ("mean", "median") else {},
            scaling,
            self.rows["train"],
            self.class_names if self.targets == "class" else (),
            self.target_names if self.targets == "value" else (),
        )

    def _checked_table(self) -> tuple[pd.DataFrame, list[str], dict[str, pd.Series], torch.Tensor]:
        """The table with every check done before any split: columns, types, gaps (rows with
        gaps dropped here under `impute=drop`), classes. Returns the remaining rows, the feature
        columns, the numeric ones as float64 and the encoded target."""
        self.delimiter = csv_sep.resolved(self.path, self.sep)
        frame = tables.read_table(self.path, self.delimiter)
        features = self._feature_columns(frame)
        used = [*features, *self._reserved()]
        numeric = {
            c: tables.numeric_column(frame, c, self.path, NOT_NUMERIC_FIX)
            for c in features
            if c not in self.categorical
        }
        y_raw = self._target_values(frame)
        keep = self._complete_rows(frame, used)
        frame, y_raw = frame[keep].reset_index(drop=True), y_raw[keep].reset_index(drop=True)
        numeric = {c: v[keep].reset_index(drop=True) for c, v in numeric.items()}
        tables.require_rows(frame, self.path, after=" left after data.impute=drop")
        return frame, features, numeric, self._encode_target(y_raw)

    def _feature_columns(self, frame: pd.DataFrame) -> list[str]:
        """The feature columns: those listed, or every column but the target and split column."""
        if self.target is not None:
            tables.require_columns(frame, [self.target], "data.target", self.path)
        if self.split_column is not None:
            tables.require_columns(frame, [self.split_column], "data.split_column", self.path)
        reserved = set(self._reserved())
        if self.features is None:
            features = [str(c) for c in frame.columns if c not in reserved]
        else:
            tables.require_columns(frame, self.features, "data.features", self.path)
            features = self.features
        tables.require_columns(frame, self.categorical, "data.categorical", self.path)
        clash = [c for c in features if c in reserved]
        stray = [c for c in self.categorical if c not in features]
        if clash or stray:
            raise DeepmineError(
                f"column(s) {', '.join(map(repr, clash or stray))} of {self.path} "
                + ("are the target or split column, not features" if clash else "are not features"),
                "list only feature columns in data.features and data.categorical",
            )
        if not features:
            raise DeepmineError(
                f"{self.path} has no feature columns besides the target {self.target!r}",
                "add feature columns to the table",
            )
        return features

    def _reserved(self) -> list[str]:
        """The target and split columns, where set: not features."""
        return [c for c in (self.target, self.split_column) if c is not None]

    def _target_values(self, frame: pd.DataFrame) -> pd.Series:
        if self.target is None:
            return pd.Series(np.full(len(frame), -1, dtype=np.int64))
        if self.targets == "class":
            return frame[self.target]
        return tables.numeric_column(frame, self.target, self.path, VALUE_TARGET_FIX)

    def _complete_rows(self, frame: pd.DataFrame, used: list[str]) -> np.ndarray:
        """Rows to keep: all of them, unless `impute=drop` removes those with a gap. Missing
        values that nothing will fill stop the run, naming each column and its count."""
        counts = tables.missing_counts(frame, used)
        self.check_gaps(counts)
        if self.impute == "drop" or not counts:
            return frame[used].notna().all(axis=1).to_numpy()
        return np.ones(len(frame), dtype=bool)

    def check_gaps(self, counts: dict[str, int]) -> None:
        """Missing values (`counts` per column) that nothing will fill stop the run."""
        tables.check_gaps(counts, self.impute, self._reserved(), self.path)

    def _encode_target(self, values: pd.Series) -> torch.Tensor:
        """Class targets become indices into `class_names` (the sorted labels); value targets a
        float32 column in their own units."""
        if self.targets == "value":
            return torch.from_numpy(values.to_numpy(np.float32, copy=True)).reshape(-1, 1)
        if self.target is None:
            return torch.from_numpy(values.to_numpy(np.int64, copy=True))
        self.class_names = self.checked_classes(values, len(values))
        codes = pd.Categorical(tables.as_labels(values), categories=self.class_names).codes
        return torch.from_numpy(codes.astype(np.int64))

    def checked_classes(self, values: pd.Series, rows: int) -> tuple[str, ...]:
        """Sorted labels of a class target: all its `rows` values, or their distinct ones."""
        if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values, 1) == 0):
            raise DeepmineError(
                f"target {self.target!r} of {self.path} holds fractional numbers, e.g. "
                f"{values[np.mod(values, 1) != 0].iloc[0]}: not class labels",
                "use a regression task (data.targets=value), or a column of labels",
            )
        names = tuple(tables.sorted_labels(values))
        if len(names) < 2:
            raise DeepmineError(
                f"target {self.target!r} of {self.path} has a single class {names[0]!r} in all "
                f"{rows} rows",
                "classification needs at least two classes: pick another target column",
            )
        return names

    def _split(self, frame: pd.DataFrame, y: torch.Tensor) -> dict[str, np.ndarray]:
        if self.split_column is not None:
            return tables.rows_by_column(frame[self.split_column], self.split_column, self.path)
        return tables.split_rows(
            len(frame),
            self.test_size,
            self.val_size,
            self.split_seed,
            self.path,
            labels=y.numpy() if self.targets == "class" and self.target is not None else None,
        )

    def _feature_matrix(
        self, frame: pd.DataFrame, features: list[str], numeric: dict[str, pd.Series]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(x, is_numeric)`: features in the table's order, each categorical column expanded in
        place into its one-hot columns; `is_numeric` marks the columns to standardize."""
        blocks, flags, names = [], [], []
        self.categories = {}
        for column in features:
            if column in numeric:
                blocks.append(numeric[column].to_numpy(np.float32)[:, None])
                flags.append(True)
                names.append(column)
                continue
            categories, matrix = tables.one_hot(frame[column], self.rows["train"])
            self.categories[column] = categories
            blocks.append(matrix)
            flags.extend([False] * len(categories))
            names.extend(f"{column}={c}" for c in categories)
        self.feature_names = names
        return np.concatenate(blocks, axis=1), np.array(flags, dtype=bool)

    def _check_configured_shapes(self) -> None:
        """A shape key set in the config must agree with the table (null: filled from it)."""
        for key, found in self._found_shapes().items():
            wanted = self.configured.get(key)
            if wanted is not None and wanted != found:
                raise DeepmineError(
                    f"data.{key}={wanted}, but {self.path} gives {found}",
                    f"set data.{key}={found}, or null to have it filled from the table",
                )


def resolve(path: str | Path) -> Path:
    """An absolute path. A relative one is read from the current directory when the file is
    there (what a user typing it means), else from the project root (so `data/houses.csv`
    works from anywhere in the project). `deepmine train` makes it absolute before the run is
    recorded, so a recorded config never depends on where it was started."""
    path = Path(str(path)).expanduser()
    if path.is_absolute():
        return path.resolve()
    here = Path.cwd() / path
    return (here if here.exists() else project_root() / path).resolve()


def _names(columns: Sequence[str] | str | None) -> list[str] | None:
    if columns is None:
        return None
    return [str(columns)] if isinstance(columns, str) else [str(c) for c in columns]


def _check_choice(key: str, value: str, choices: tuple[str, ...], auto_hint: bool = False) -> str:
    if value == "auto" and auto_hint:
        raise DeepmineError(
            "data.targets=auto reached the CSV datamodule undecided (the task decides it when "
            "the run is built)",
            "set data.targets=class or data.targets=value",
        )
    if value not in choices:
        raise DeepmineError(
            f"data.{key}={value!r} is not one of {', '.join(choices)}",
            f"set data.{key} to one of them",
        )
    return value
