"""What every tabular datamodule shares: reading a table, checking its columns, filling gaps,
splitting rows, one-hot encoding and standardizing.

The order matters, and is the same for every table: rows are dropped (`impute=drop`) before
splitting, so the split sizes count the rows that are really used; everything learned from the
data afterwards (imputed means and medians, the categories of a one-hot column, the scaling
statistics) is learned from the training split only, so nothing about the validation or test rows
leaks into what the model sees.

Each split keeps the table's row order (its indices are sorted): a split is a set of rows, easy
to compare between runs and to look up in the file; training order is shuffled per epoch anyway.

Every mistake a user can fix is a `DeepmineError` naming the file, the column and the count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence, Sized
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepmine.data.tensors import split_count
from deepmine.errors import DeepmineError

SPLITS = ("train", "val", "test")
IMPUTATIONS = ("mean", "median", "drop")


def read_table(path: Path, sep: str = ",") -> pd.DataFrame:
    """The CSV at `path` read by pandas with delimiter `sep` (`csv_sep.resolved` gives it); a
    missing file or a table with no rows stops the run."""
    if not path.is_file():
        raise DeepmineError(
            f"table {path} does not exist",
            "set data.path to a CSV file (a relative path is read from the project root)",
        )
    try:
        frame = pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeepmineError(f"cannot parse {path} as CSV: {first}", "fix the file") from exc
    require_rows(frame, path)
    return frame


def require_rows(rows: Sized, path: Path | str, after: str = "") -> None:
    """Refuse an empty table (`rows`: its frame, or anything as long as its row count; `after`:
    what emptied it, for the message)."""
    if len(rows) == 0:
        raise DeepmineError(
            f"table {path} has no rows{after}",
            "point data.path at a CSV with a header line and at least one row per split",
        )


def require_columns(frame: pd.DataFrame, columns: Sequence[str], key: str, path: Path) -> None:
    """Every name in `columns` (read from config key `key`) is a column of the table."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DeepmineError(
            f"{key} names column(s) {', '.join(map(repr, missing))} that {path} does not have "
            f"(columns: {', '.join(map(str, frame.columns))})",
            f"set {key} to column(s) of the table",
        )


def numeric_column(frame: pd.DataFrame, column: str, path: Path, fix: str) -> pd.Series:
    """`column` as float64, missing values kept as NaN; a value that is not a number stops the run
    with a sample of it (pandas reads a column with one stray word as text)."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64)
    numbers, bad = as_numbers(values)
    if len(bad):
        raise not_numeric(column, path, len(bad), bad.iloc[0], bad.index[0], fix)
    return numbers.astype(np.float64)


def not_numeric(column: str, path: Path, count: int, sample, row, fix: str) -> DeepmineError:
    """The error of a numeric column holding `count` values that are not numbers, `sample` the
    first of them (at data row `row`): one message whether the table was read whole or in
    chunks (`deepmine.data.csv_chunks` counts over every chunk before raising it)."""
    return DeepmineError(
        f"column {column!r} of {path} has {count} non-numeric value(s), e.g. {sample!r} "
        f"(row {row})",
        fix,
    )


def as_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """`(numbers, bad)`: `values` as numbers (missing ones NaN), and the values that are
    present but not numbers (pandas reads a column with one stray word as text)."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers, values[values.notna() & numbers.isna()]


def as_labels(values: pd.Series) -> pd.Series:
    """Values as label strings, missing kept as NaN; integral floats lose their `.0`, since
    pandas reads an integer column with a gap as floats (`3` and `3.0` are the same label)."""
    if pd.api.types.is_float_dtype(values):
        present = values.dropna()
        if np.all(np.mod(present, 1) == 0):
            return values.map(lambda v: v if pd.isna(v) else str(int(v)))
    return values.map(lambda v: v if pd.isna(v) else str(v))


def sorted_labels(values: pd.Series) -> list[str]:
    """The distinct labels in a stable order: numerically for numbers (2 before 10), else as
    text; returned as strings."""
    present = values.dropna()
    if pd.api.types.is_numeric_dtype(present):
        distinct = np.unique(present.to_numpy())
        return list(as_labels(pd.Series(distinct, dtype=present.dtype)))
    return sorted(as_labels(present).unique())


def missing_counts(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, int]:
    """Columns among `columns` with missing values, and how many each has."""
    counts = frame[list(columns)].isna().sum()
    return {str(c): int(n) for c, n in counts.items() if n}


def check_gaps(
    counts: dict[str, int], impute: str | None, reserved: Sequence[str], path: Path
) -> None:
    """Refuse missing values (`counts` per column) that `impute` will not drop or fill: any,
    without `impute`; those of the target or split column (`reserved`) under mean|median."""
    if impute == "drop" or not counts:
        return
    if impute is None:
        raise DeepmineError(
            f"{path} has missing values in column(s) {describe_counts(counts)}",
            "set data.impute=drop (drop those rows) or data.impute=mean|median (fill "
            "numeric features from the training split)",
        )
    unfillable = {c: n for c, n in counts.items() if c in reserved}
    if unfillable:
        raise DeepmineError(
            f"{path} has missing values in column(s) {describe_counts(unfillable)}, which "
            f"data.impute={impute} cannot fill",
            "fill them in the file, or set data.impute=drop to drop those rows",
        )


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{column!r}: {n}" for column, n in counts.items())


def split_rows(
    n: int,
    test_size: float | int,
    val_size: float | int,
    seed: int,
    path: Path | str,
    labels: np.ndarray | None = None,
    tail: bool = False,
) -> dict[str, np.ndarray]:
    """Row indices of each split. `test_size` and `val_size` are fractions of the whole table or
    row counts (`val_size=0`: validate on the training rows). The test rows are drawn at random
    (`tail`: the last `test_size` rows), then the validation rows from the rest, both with
    `seed`; with `labels` the draws are stratified whenever every class can be represented on
    both sides, so a rare class is not left out of a split by chance."""
    n_test = _count(test_size, n, "data.test_size", path)
    n_val = 0 if val_size == 0 else _count(val_size, n, "data.val_size", path)
    if n_test + n_val >= n:
        raise DeepmineError(
            f"data.test_size={test_size} ({n_test} rows) and data.val_size={val_size} "
            f"({n_val} rows) leave no training rows out of the {n} rows of {path}",
            "make data.test_size and data.val_size smaller",
        )
    rows = np.arange(n)
    if tail:
        rest, test = rows[: n - n_test], rows[n - n_test :]
    else:
        rest, test = _draw(rows, n_test, seed, labels)
    if n_val == 0:
        # no held-out validation: validate on the training rows, as sources that fit on every
        # non-test row do (checkpoint choice then follows the training fit)
        train, val = rest, rest
    else:
        train, val = _draw(rest, n_val, seed, labels)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _count(size: float | int, n: int, key: str, path: Path | str) -> int:
    try:
        return split_count(size, n, key)
    except DeepmineError as exc:
        raise DeepmineError(f"{path}: {exc.problem}", exc.fix) from None


def _draw(
    rows: np.ndarray, count: int, seed: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """`(kept, drawn)`: `count` rows drawn from `rows` by scikit-learn's `train_test_split`."""
    from sklearn.model_selection import train_test_split

    strata = labels[rows] if labels is not None else None
    if strata is not None and not can_stratify(strata, count):
        strata = None
    kept, drawn = train_test_split(rows, test_size=count, random_state=seed, stratify=strata)
    return kept, drawn


def can_stratify(labels: np.ndarray, count: int) -> bool:
    """Whether a stratified draw of `count` of `labels` is possible: every class needs two rows
    and each side at least one row per class (scikit-learn's own conditions)."""
    _, class_counts = np.unique(labels, return_counts=True)
    classes = len(class_counts)
    return class_counts.min() >= 2 and count >= classes and len(labels) - count >= classes


def rows_by_column(values: pd.Series, column: str, path: Path) -> dict[str, np.ndarray]:
    """Row indices of each split, read from a column holding `train`, `val` or `test` (any case)
    in every row."""
    names = values.map(lambda v: v if pd.isna(v) else str(v).strip().lower())
    unknown = values[~names.isin(SPLITS)]
    if len(unknown):
        raise DeepmineError(
            f"split column {column!r} of {path} has {len(unknown)} row(s) that are not "
            f"train/val/test, e.g. {unknown.iloc[0]!r} (row {unknown.index[0]})",
            f"put train, val or test in every row of {column!r}, or set data.split_column=null",
        )
    splits = {split: np.flatnonzero((names == split).to_numpy()) for split in SPLITS}
    for split, rows in splits.items():
        if len(rows) == 0:
            raise DeepmineError(
                f"split column {column!r} of {path} has no {split!r} rows",
                f"mark some rows {split!r}, or set data.split_column=null for a random split",
            )
    return splits


def impute(
    numeric: dict[str, pd.Series], train: np.ndarray, strategy: str
) -> tuple[dict[str, pd.Series], dict[str, float]]:
    """`(filled, fills)`: the gaps of numeric columns filled with the mean or median of their
    training rows (the statistics of rows a model never trains on would leak into the
    features), and each column's fill value (what a logged model fills a new row's gap with)."""
    filled, fills = {}, {}
    for column, values in numeric.items():
        fills[column] = fill_value(values.iloc[train].to_numpy(np.float64), strategy)
        filled[column] = values.fillna(fills[column])
    return filled, fills


#: rows summed at a time by `fill_value` and `column_scaling`
BLOCK_ROWS = 1 << 16


def fill_value(values: np.ndarray, strategy: str) -> float:
    """The mean or median of a column's present training values (0.0 when there are none).

    Why not pandas' or torch's own mean: a table prepared in chunks (`csv_chunks`) reads its
    training column back from disk, so both preparations compute every statistic with this one
    deterministic function (float64 sums over fixed `BLOCK_ROWS` blocks, in row order, whatever
    the chunk size) on the same values, and agree bit for bit. Gaps count as zeros in the sum,
    as in pandas' mean, which this equals up to `BLOCK_ROWS` rows. A median needs the whole
    column either way (one column, not the table)."""
    gaps = np.isnan(values)
    if gaps.all():
        return 0.0
    if strategy == "median":
        return float(np.median(values[~gaps]))
    return _block_sum(np.where(gaps, 0.0, values)) / int(np.count_nonzero(~gaps))


def column_scaling(values: np.ndarray) -> tuple[np.float32, np.float32]:
    """`(mean, std)` of one column of training values as float32 (std with ddof=1, 1 for a
    single row, floored at 1e-8 so a constant column scales to zeros), by the deterministic
    block sums `fill_value` explains."""
    values = np.asarray(values, dtype=np.float64)
    mean = _block_sum(values) / len(values)
    std = 1.0
    if len(values) > 1:
        squares = sum(
            float(np.sum(np.square(values[s : s + BLOCK_ROWS] - mean)))
            for s in range(0, len(values), BLOCK_ROWS)
        )
        std = float(np.sqrt(squares / (len(values) - 1)))
    return np.float32(mean), np.float32(max(std, 1e-8))


def _block_sum(values: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(values), BLOCK_ROWS):
        block = np.ascontiguousarray(values[start : start + BLOCK_ROWS], dtype=np.float64)
        total += float(np.sum(block))
    return total


def one_hot(labels: pd.Series, train: np.ndarray) -> tuple[list[str], np.ndarray]:
    """`(categories, matrix)`: one 0/1 column per category seen in the training rows.

    A category met only in validation or test rows, or a missing value, encodes as an all-zero
    row: the model has never seen it, and a column for it would be constant zero in training.
    """
    rendered = as_labels(labels)
    seen = set(rendered.iloc[train].dropna())
    categories = [c for c in sorted_labels(labels) if c in seen]
    codes = pd.Categorical(rendered, categories=categories).codes
    matrix = np.zeros((len(labels), len(categories)), dtype=np.float32)
    seen = codes >= 0
    matrix[np.flatnonzero(seen), codes[seen]] = 1.0
    return categories, matrix


def standardized(
    x: np.ndarray, numeric: np.ndarray, splits: dict[str, np.ndarray]
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`(parts, (mean, std))`: each split's rows of `x` as float32, the `numeric` columns
    standardized with the mean and std of the training rows (returned too: a logged model
    scales new rows with them); other columns (one-hot) are kept as 0/1."""
    x = torch.as_tensor(x, dtype=torch.float32)
    mask = torch.as_tensor(numeric, dtype=torch.bool)
    train = x[torch.as_tensor(splits["train"])][:, mask].numpy()
    mean, std = scaling_tensors([column_scaling(train[:, j]) for j in range(train.shape[1])])
    out = {}
    for split, rows in splits.items():
        part = x[torch.as_tensor(rows)].clone()
        part[:, mask] = (part[:, mask] - mean) / std
        out[split] = part.contiguous()
    return out, (mean, std)


def scaling_tensors(stats: list[tuple[np.float32, np.float32]]) -> tuple[torch.Tensor, ...]:
    """`(mean, std)` float32 tensors of per-column `column_scaling` results."""
    mean = torch.tensor(np.array([m for m, _ in stats], dtype=np.float32))
    std = torch.tensor(np.array([s for _, s in stats], dtype=np.float32))
    return mean, std


def file_md5(path: Path, chunk_size: int = 1 << 20) -> str:
    """MD5 of the file's bytes, read in chunks so a large table is never held twice."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
