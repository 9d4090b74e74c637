"""A CSV larger than memory: with `data.storage=mmap` the table is read in chunks of
`data.chunk_rows` rows straight into the prepared-array cache, never whole.

Why several passes over the file rather than one: everything learned from the data is learned
from the training rows (`deepmine.data.tables`), and which rows train is known only once every
label has been read (the split is seeded and stratified). So:

1. checks: every used column of every chunk: words in numeric columns, gaps, the rows
   `impute=drop` keeps; the target and split columns are kept (one column of n rows, small)
   and give the split through the datamodule's own `_encode_target` and `_split`;
2. statistics: the training rows' numeric values are written column by column to
   `train_numeric.npy` and the labels of categorical columns are counted; fill values, scaling
   statistics and the codec's deciles are then computed one column at a time with the
   functions the in-memory path uses (`tables.fill_value`, `tables.column_scaling`) on the
   same values, so they agree bit for bit whatever the chunk size;
3. arrays: each chunk's rows, encoded and standardized by the same elementwise float32
   operations, are written into their split's `.npy`.

Peak memory is then a chunk plus a few columns of n rows. An error found in any chunk is raised
once the pass ends, with the count over the whole file, in the same line as the in-memory path.

pandas infers a column's type per chunk: a column of codes may be integers in one chunk and
floats in another. Labels (the target, categorical columns) are therefore rendered by the rule
of the whole column (`LabelRule`), as the in-memory path's single read does.

The entry is named by the file's MD5 and the options that decide its content (not the chunk
size), built under a temporary name and renamed into place once complete: an error or an
interrupt leaves no entry, and a changed file or option never reads a stale one.

Why one module, past the usual length: the three passes share the entry's layout, the row
bookkeeping (kept rows, each split's positions) and the label rule; apart, each would have to
be kept in step with the others by hand, and a mismatch would silently shift rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from deepmine.data import csv_sep, tables
from deepmine.data.batches import MappedRows
from deepmine.data.drift import categorical_reference, numeric_reference
from deepmine.errors import DeepmineError

if TYPE_CHECKING:
    from deepmine.data.csv_table import CSVDataModule

#: bump when what an entry holds changes, so older entries are not read
FORMAT = 1
META = "meta.json"
TRAIN_NUMERIC = "train_numeric.npy"


def checked_chunk_rows(value: int) -> int:
    """`data.chunk_rows`, a positive row count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeepmineError(
            f"data.chunk_rows={value!r} is not a positive number of rows",
            "e.g. data.chunk_rows=20000 (rows read at a time with data.storage=mmap)",
        )
    return value


def prepare(dm: CSVDataModule) -> dict[str, tuple[MappedRows, torch.Tensor]]:
    """The splits of `dm`'s table as memory-mapped rows, prepared now unless the cache holds
    them; sets what the in-memory path sets on `dm` (rows, classes, categories, names)."""
    if dm.cache_dir is None:
        raise DeepmineError(
            "data.storage=mmap keeps the prepared table arrays in data.cache_dir, which is null",
            "set data.cache_dir to a folder, or use data.storage=memory",
        )
    dm.delimiter = csv_sep.resolved(dm.path, dm.sep)
    entry = Path(dm.cache_dir) / f"table-{_key(dm)}"
    if not (entry / META).is_file():
        _build(dm, entry)
    meta = json.loads((entry / META).read_text())
    dm.class_names = tuple(meta["class_names"])
    dm.categories, dm.feature_names = meta["categories"], meta["feature_names"]
    dm.rows = {s: np.load(entry / f"rows_{s}.npy") for s in tables.SPLITS}
    dm._chunk_entry, dm._chunk_meta = entry, meta
    dm._check_configured_shapes()  # a config met on a cache hit is checked as well
    width = (len(dm.feature_names),)
    return {
        s: (
            MappedRows(np.load(entry / f"{s}.npy", mmap_mode="r"), width),
            torch.from_numpy(np.load(entry / f"y_{s}.npy")),
        )
        for s in tables.SPLITS
    }


def codec(dm: CSVDataModule):
    """The `TableCodec` of a table prepared here: the same columns and references as
    `TableCodec.fitted` makes from a table in memory, read from the entry a column at a time."""
    from deepmine.data.codecs import TableCodec

    meta = dm._chunk_meta
    columns, references = [], {}
    for name in meta["features"]:
        if name in meta["numeric"]:
            j = meta["numeric"].index(name)
            fill = meta["fills"].get(name)
            stats = {"fill": fill, "mean": meta["mean"][j], "std": meta["std"][j]}
            columns.append({"name": name, "kind": "numeric", **stats})
            references[name] = numeric_reference(numeric_column(dm._chunk_entry, j))
        else:
            categories, counts = meta["categories"][name], meta["counts"][name]
            columns.append({"name": name, "kind": "category", "categories": categories})
            seen = [counts.get(c, 0) for c in categories]
            # the counts `categorical_reference` would make of the training rows themselves
            reference = categorical_reference(pd.Series([], dtype=object), categories)
            total = np.array([*seen, meta["train_rows"] - sum(seen)], dtype=np.float64)
            reference["expected"] = (total / max(total.sum(), 1.0)).tolist()
            references[name] = reference
    value = dm.targets == "value"
    return TableCodec(
        columns,
        dm.class_names if dm.targets == "class" else (),
        dm.target_names if value else (),
        references,
    )


def numeric_column(entry: Path, j: int) -> np.ndarray:
    """The training values of numeric column `j` stored in `entry`, read from the file (read
    through a map, every column's pages would stay resident until the map is closed)."""
    path = entry / TRAIN_NUMERIC
    layout = np.load(path, mmap_mode="r")  # the header only: no page of it is touched
    offset, n = layout.offset, layout.shape[1]
    del layout
    return np.fromfile(path, dtype=np.float64, count=n, offset=offset + j * n * 8)


def _key(dm: CSVDataModule) -> str:
    """What decides the entry's content: the file's bytes and every option that shapes it."""
    options = {
        "format": FORMAT,
        "md5": tables.file_md5(dm.path),
        "sep": dm.delimiter,
        **{
            k: getattr(dm, k)
            for k in ("target", "targets", "features", "categorical", "impute", "split_column")
        },
        **{k: getattr(dm, k) for k in ("test_size", "val_size", "split_seed")},
    }
    return hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def _build(dm: CSVDataModule, entry: Path) -> None:
    """Write the entry under a temporary name, then rename it into place."""
    temp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        _write(dm, temp)
        try:
            temp.rename(entry)
        except OSError:  # another process completed the same entry first
            if not (entry / META).is_file():
                raise
    except OSError as exc:
        raise DeepmineError(
            f"data.storage=mmap could not write the prepared arrays of {dm.path} to "
            f"{entry.parent}: {exc.strerror or exc}",
            "make data.cache_dir a writable folder with free space, or use data.storage=memory",
        ) from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _write(dm: CSVDataModule, out: Path) -> None:
    header = _header(dm)
    features = dm._feature_columns(header)
    numeric = [c for c in features if c not in dm.categorical]
    keep, target, splits, rules = _check_pass(dm, features, numeric)
    n = int(keep.sum())
    y = target.encoded(n)
    frame = pd.DataFrame({dm.split_column: splits} if dm.split_column else {}, index=range(n))
    rows = dm._split(frame, y)
    train = rows["train"]
    counts = _stats_pass(dm, out, features, numeric, keep, train, rules)
    fills, mean, std = _statistics(dm, out, numeric)
    categories = {
        c: [v for v in tables.sorted_labels(rules[c].whole) if counts[c].get(v)]
        for c in dm.categorical
    }
    dm.categories = categories
    dm.feature_names = [
        name
        for c in features
        for name in ([c] if c in numeric else [f"{c}={v}" for v in categories[c]])
    ]
    dm._check_configured_shapes()
    scaling = tables.scaling_tensors(list(zip(mean, std, strict=True)))
    encoder = _Encoder(features, numeric, fills, categories, rules, scaling)
    _array_pass(dm, out, features, keep, rows, encoder)
    for split, split_rows in rows.items():
        np.save(out / f"rows_{split}.npy", split_rows)
        np.save(out / f"y_{split}.npy", y[torch.as_tensor(split_rows)].numpy())
    meta = {
        "features": features,
        "numeric": numeric,
        "feature_names": dm.feature_names,
        "categories": categories,
        "counts": {c: {v: counts[c][v] for v in categories[c]} for c in categories},
        "fills": fills if dm.impute in ("mean", "median") else {},
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "class_names": list(dm.class_names),
        "train_rows": len(train),
    }
    (out / META).write_text(json.dumps(meta))


def _header(dm: CSVDataModule) -> pd.DataFrame:
    """The column names (and first row: a table with none stops here, as a whole read
    would, before any column is checked)."""
    try:
        head = pd.read_csv(dm.path, sep=dm.delimiter, nrows=1)
    except pd.errors.EmptyDataError:
        head = pd.DataFrame()
    tables.require_rows(head, dm.path)
    return head


def _chunks(dm: CSVDataModule, columns: list[str]):
    """The table's chunks, `columns` only; a parse error is the in-memory path's message."""
    try:
        with pd.read_csv(
            dm.path, sep=dm.delimiter, usecols=columns, chunksize=dm.chunk_rows
        ) as reader:
            yield from reader
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeepmineError(f"cannot parse {dm.path} as CSV: {first}", "fix the file") from exc


class LabelRule:
    """How labels of one column are rendered as strings, decided by the whole column: `whole`
    holds its distinct present values, gathered per chunk with each chunk's type, so
    concatenated they take the type one read of the whole file would have inferred."""

    def __init__(self, parts: list[pd.Series]):
        parts = [p for p in parts if len(p)]
        self.whole = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
        self.floats = pd.api.types.is_float_dtype(self.whole)
        self.integral = self.floats and bool(np.all(np.mod(self.whole, 1) == 0))

    def render(self, values: pd.Series) -> pd.Series:
        """`tables.as_labels` of `values`, as if the whole column had been read at once."""
        if self.integral:
            return values.map(lambda v: v if pd.isna(v) else str(int(v)))
        if self.floats:
            values = values.astype(np.float64)
        return values.map(lambda v: v if pd.isna(v) else str(v))


def _numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """`(float64 numbers, bad values)` as `tables.numeric_column` reads a column."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64), values.iloc[:0]
    numbers, bad = tables.as_numbers(values)
    return numbers.astype(np.float64), bad


def _check_pass(dm: CSVDataModule, features: list[str], numeric: list[str]):
    """Pass 1: `(keep, target values, split values, label rules)` of the kept rows; every
    problem the in-memory path finds is raised here, in its order, after the whole file."""
    from deepmine.data.csv_table import NOT_NUMERIC_FIX, VALUE_TARGET_FIX

    used = [*features, *dm._reserved()]
    value_target = dm.targets == "value" and dm.target is not None
    checked = [*numeric, *([dm.target] if value_target else [])]
    bad: dict[str, list] = {}
    gaps: Counter = Counter()
    keep, splits, target = [], [], _Target(dm)
    distinct: dict[str, list[pd.Series]] = {c: [] for c in dm.categorical}
    for chunk in _chunks(dm, used):
        for column in checked:
            _, wrong = _numbers(chunk[column])
            if len(wrong):
                first = bad.setdefault(column, [0, wrong.iloc[0], wrong.index[0]])
                first[0] += len(wrong)
        gaps.update({c: int(n) for c, n in chunk[used].isna().sum().items() if n})
        kept = chunk[used].notna().all(axis=1).to_numpy() if dm.impute == "drop" else None
        part = chunk if kept is None else chunk[kept]
        keep.append(np.ones(len(chunk), bool) if kept is None else kept)
        if dm.target is not None:
            target.add(part[dm.target])
        if dm.split_column is not None:
            splits.append(part[dm.split_column])
        for column in dm.categorical:
            distinct[column].append(part[column].dropna().drop_duplicates())
    for column in checked:
        if column in bad:
            fix = VALUE_TARGET_FIX if column == dm.target else NOT_NUMERIC_FIX
            raise tables.not_numeric(column, dm.path, *bad[column], fix)
    dm.check_gaps({c: gaps[c] for c in used if gaps[c]})
    keep = np.concatenate(keep) if keep else np.zeros(0, bool)
    tables.require_rows(keep, dm.path)
    n = int(keep.sum())
    tables.require_rows(range(n), dm.path, after=" left after data.impute=drop")
    split = _joined(splits) if dm.split_column is not None else None
    return keep, target, split, {c: LabelRule(parts) for c, parts in distinct.items()}


class _Target:
    """The target gathered chunk by chunk at a few bytes a row (a whole column of labels as
    Python objects would cost far more than the features' chunk): a value target as float32,
    class labels as codes into each chunk's distinct values, in order of appearance."""

    def __init__(self, dm: CSVDataModule):
        self.dm, self.parts, self.uniques = dm, [], []

    def add(self, values: pd.Series) -> None:
        if self.dm.targets == "value":
            self.parts.append(_numbers(values)[0].to_numpy(np.float32))
            return
        codes, uniques = values.factorize()
        self.parts.append(codes.astype(np.int32))
        self.uniques.append(pd.Series(uniques))

    def encoded(self, n: int) -> torch.Tensor:
        """`dm._encode_target` of the whole column: the same checks, classes and codes."""
        if self.dm.target is None:
            return torch.full((n,), -1, dtype=torch.int64)
        if self.dm.targets == "value":
            return torch.from_numpy(np.concatenate(self.parts)).reshape(-1, 1)
        rule = LabelRule(self.uniques)  # distinct values in order of appearance: the first
        names = self.dm.checked_classes(rule.whole, n)  # fractional one is the file's first
        self.dm.class_names = names
        index = {name: k for k, name in enumerate(names)}
        y, start = np.empty(n, dtype=np.int64), 0
        for codes, uniques in zip(self.parts, self.uniques, strict=True):
            lookup = np.array([index[label] for label in rule.render(uniques)], dtype=np.int64)
            y[start : start + len(codes)] = lookup[codes]
            start += len(codes)
        return torch.from_numpy(y)


def _joined(parts: list[pd.Series]) -> pd.Series:
    """Chunks of one column as one Series (types unified as one read would)."""
    nonempty = [p for p in parts if len(p)] or parts[:1]
    return pd.concat(nonempty, ignore_index=True)


def _kept_chunks(dm: CSVDataModule, columns: list[str], keep: np.ndarray):
    """`(first kept row, kept rows of the chunk)` for every chunk of `columns`."""
    start = kept_start = 0
    for chunk in _chunks(dm, columns):
        mask = keep[start : start + len(chunk)]
        start += len(chunk)
        part = chunk[mask] if not mask.all() else chunk
        yield kept_start, part.reset_index(drop=True)
        kept_start += len(part)


def _local(rows: np.ndarray, first: int, count: int) -> tuple[int, np.ndarray]:
    """`(lo, local)`: the sorted `rows` within `[first, first + count)`, which start at
    position `lo` of `rows`, as positions within the chunk."""
    lo, hi = np.searchsorted(rows, [first, first + count])
    return int(lo), rows[lo:hi] - first


def _stats_pass(dm, out, features, numeric, keep, train, rules) -> dict[str, Counter]:
    """Pass 2: the training rows' numeric values into `train_numeric.npy` (one row per
    column, so a column reads back contiguous) and their categories counted."""
    store = _NpyWriter(out / TRAIN_NUMERIC, np.float64, (len(numeric), len(train)))
    counts = {c: Counter() for c in dm.categorical}
    for first, part in _kept_chunks(dm, features, keep):
        lo, local = _local(train, first, len(part))
        rows = part.iloc[local]
        for j, column in enumerate(numeric):
            store.put(j * len(train) + lo, _numbers(rows[column])[0].to_numpy(np.float64))
        for column in dm.categorical:
            counts[column].update(rules[column].render(rows[column]).dropna())
    store.close()
    return counts


def _statistics(dm, out, numeric) -> tuple[dict[str, float], list, list]:
    """`(fills, means, stds)` of the numeric columns, one column read at a time."""
    fills, mean, std = {}, [], []
    for j, column in enumerate(numeric):
        values = numeric_column(out, j)
        if dm.impute in ("mean", "median"):
            fills[column] = tables.fill_value(values, dm.impute)
            values = np.where(np.isnan(values), fills[column], values)
        m, s = tables.column_scaling(values.astype(np.float32))
        mean.append(m)
        std.append(s)
    return fills, mean, std


class _Encoder:
    """A chunk's kept rows as the net's float32 rows: the in-memory path's steps, row-wise."""

    def __init__(self, features, numeric, fills, categories, rules, scaling):
        self.features, self.numeric, self.fills = features, set(numeric), fills
        self.categories, self.rules = categories, rules
        self.mean, self.std = scaling
        flags = [
            flag
            for c in features
            for flag in ([True] if c in self.numeric else [False] * len(categories[c]))
        ]
        self.mask = torch.as_tensor(flags, dtype=torch.bool)

    def __call__(self, part: pd.DataFrame) -> torch.Tensor:
        blocks = []
        for column in self.features:
            if column in self.numeric:
                values = _numbers(part[column])[0]
                if column in self.fills:
                    values = values.fillna(self.fills[column])
                blocks.append(values.to_numpy(np.float32)[:, None])
                continue
            labels = self.rules[column].render(part[column])
            codes = pd.Categorical(labels, categories=self.categories[column]).codes
            matrix = np.zeros((len(part), len(self.categories[column])), dtype=np.float32)
            matrix[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
            blocks.append(matrix)
        x = torch.from_numpy(np.concatenate(blocks, axis=1))
        x[:, self.mask] = (x[:, self.mask] - self.mean) / self.std
        return x


def _array_pass(dm, out, features, keep, rows, encoder) -> None:
    """Pass 3: every split's rows, encoded, into its `.npy` (file order, as in memory)."""
    width = int(encoder.mask.numel())
    arrays = {s: _NpyWriter(out / f"{s}.npy", np.float32, (len(r), width)) for s, r in rows.items()}
    for first, part in _kept_chunks(dm, features, keep):
        x = encoder(part).numpy()
        for split, split_rows in rows.items():
            lo, local = _local(split_rows, first, len(part))
            arrays[split].put(lo * width, x[local])
    for array in arrays.values():
        array.close()


class _NpyWriter:
    """A new `.npy` file of `shape`, filled by positioned writes of contiguous runs.

    Why not a writable memory map: pages written through a map count in the process's resident
    memory until the kernel writes them back, so preparing a large table that way would look
    (and, under a memory limit, act) as large as its output; written with `write`, they are
    page cache only."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int]):
        self.dtype = np.dtype(dtype)
        if 0 in shape:  # numpy cannot map zero bytes; nothing will be written
            np.save(path, np.zeros(shape, dtype=self.dtype))
            self.file = None
            return
        header = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
        self.offset = header.offset
        del header
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by `close`, after many writes)

    def put(self, start: int, values: np.ndarray) -> None:
        """Write `values` (C order) from flat element `start` on."""
        if self.file is None or values.size == 0:
            return
        self.file.seek(self.offset + start * self.dtype.itemsize)
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
