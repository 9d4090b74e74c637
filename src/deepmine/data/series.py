"""Forecasting data: one time series cut into windows, split by time.

A window with origin `t` shows the net `x = series[t - lookback : t]` (every input column) and
asks for `y = targets[t : t + horizon]` (the target columns). `y` stays in the series' own units;
`target_scaler` holds the mean and std of each target over the training part, for tasks that
learn on standardized targets. `x` is standardized per batch (`Normalize`) with the statistics
of the training part only.

The split is chronological: `train | val | test`, the last `val_size + test_size` steps held out.
A window belongs to the part its *target* steps fall in, and every one of its target steps lies
in that part, so no window straddles a boundary: the last training window ends its horizon on
the last training step, the first validation window starts its horizon on the first validation
step. Inputs of validation and test windows do reach back into earlier parts: that is history a
forecaster standing at the origin has observed, which is legitimate; no window ever sees a step
at or after its origin. Test windows start at every step whose horizon fits in the test part
(stride 1), and baselines are scored on exactly these (`window_origins["test"]`).

Windows are never materialised: `x` and `y` of each split are strided views of the one series
tensor (`unfold`), so the gather that cuts a batch makes the only copy. Batches of `y` are views
too (slices in evaluation order): use `reshape`, not `view`, on them.

With `storage=mmap` the series tensor itself is a copy-on-write memory map of a `.npy` in
`cache_dir` (`deepmine.data.mapped`), so the windows are views of the file and a batch's gather
reads only its windows' steps; values and batches are the same, bit for bit.

It is one module on purpose: reading, splitting by time, scaling on the training part and
cutting windows are one chain whose invariants (no window straddles a split, scalers fit on
training steps only) are easiest to check read top to bottom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from deepmine.data import csv_sep
from deepmine.data.batches import Normalize
from deepmine.data.csv_table import resolve
from deepmine.data.mapped import mapped_arrays
from deepmine.data.series_export import SERIES, TIME_COLUMN
from deepmine.data.tables import file_md5, numeric_column, read_table, require_columns
from deepmine.data.tensors import TensorDataModule, fit_scaler, split_count
from deepmine.data.version import DATA_DIR, restore_command
from deepmine.errors import DeepmineError
from deepmine.project import project_root

NORMALIZATIONS = ("standardize", "none")
SPLITS = ("train", "val", "test")


class SeriesDataModule(TensorDataModule):
    """One of the series `deepmine data pull` writes into `data/series/` (sunspots, co2,
    elnino): a `date` column and the value column(s), every value column both input and
    target (a univariate, autoregressive setup)."""

    targets: ClassVar[str] = "series"
    dvc_tracked: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        data_dir: str,
        lookback: int,
        horizon: int,
        val_size: float | int,
        test_size: float | int,
        season: int | None = None,
        normalize: str = "standardize",
        batch_size: int = 32,
        eval_batch_size: int = 512,
        shuffle_seed: int = 0,
        input_shape: Sequence[int] | None = None,
        num_targets: int | None = None,
        num_outputs: int | None = None,
        baselines: Mapping | None = None,
        storage: str = "memory",
        cache_dir: str | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle_seed, storage)
        self.cache_dir = cache_dir
        self.lookback = _positive_int(lookback, "data.lookback")
        self.horizon = _positive_int(horizon, "data.horizon")
        self.season = None if season is None else _positive_int(season, "data.season")
        if normalize not in NORMALIZATIONS:
            raise DeepmineError(
                f"data.normalize={normalize!r} is not one of {', '.join(NORMALIZATIONS)}",
                "use data.normalize=standardize (train-part statistics) or none",
            )
        self.normalize = normalize
        self.val_size, self.test_size = val_size, test_size
        self.declared = {
            "input_shape": None if input_shape is None else [int(n) for n in input_shape],
            "num_targets": num_targets,
            "num_outputs": num_outputs,
        }
        #: baseline name -> options, read by `deepmine.tasks.forecasting.baselines` and the task
        self.baselines = _plain(baselines or {})
        self.name = name
        self.path = Path(data_dir) / f"{name}.csv"
        self.time_column = TIME_COLUMN
        self.wanted_inputs: list[str] | None = None  # None: every column but the time column
        self.wanted_targets: list[str] | None = None  # None: the same as the inputs
        #: data.sep: `deepmine data pull` writes commas; `delimiter` is the one read with
        self.sep, self.delimiter = ",", ","
        # Filled by `make_splits`:
        #: the raw series (T, F) float32: the input columns, then any target column not among
        #: them; every window of every split is a view of it
        self.series = torch.empty(0)
        #: the target columns (T, targets), raw: what baselines forecast and y is cut from
        self.target_series = torch.empty(0)
        self.input_columns: list[str] = []
        self.target_columns: list[str] = []
        self.time_index: pd.Index = pd.Index([])
        #: split -> (start, stop) step indices of its part of the series
        self.split_bounds: dict[str, tuple[int, int]] = {}
        #: split -> the step index of each window's first target step, in window order
        self.window_origins: dict[str, torch.Tensor] = {}

    @property
    def target_names(self) -> tuple[str, ...]:
        """The target columns, under the name every numeric-target datamodule gives them
        (plots label their panels with it)."""
        return tuple(self.target_columns)

    # -- reading -----------------------------------------------------------------------------

    def _check_source(self) -> None:
        """The embedded series are known by name, and only `deepmine data pull` makes them."""
        if self.name not in SERIES:
            raise DeepmineError(
                f"data.name={self.name!r} is not one of the embedded series ({', '.join(SERIES)})",
                "pick one of them, or use data=series_csv for a CSV of your own",
            )
        if not self.path.is_file():
            raise DeepmineError(f"{self.path} is missing", f"run `{restore_command(self.path)}`")

    def _read(self) -> pd.DataFrame:
        self._check_source()
        self.delimiter = csv_sep.resolved(self.path, self.sep)
        frame = read_table(self.path, self.delimiter)
        require_columns(frame, [self.time_column], "data.time_column", self.path)
        others = [c for c in frame.columns if c != self.time_column]
        inputs = list(self.wanted_inputs) if self.wanted_inputs is not None else others
        targets = list(self.wanted_targets) if self.wanted_targets is not None else inputs
        for key, names in (("data.input_columns", inputs), ("data.target_columns", targets)):
            _check_names(frame, names, key, self.time_column, self.path)
        self.input_columns, self.target_columns = inputs, targets
        return frame

    def _time_index(self, frame: pd.DataFrame) -> pd.Index:
        """The time column as a DatetimeIndex (numbers, e.g. a step count, are kept as they
        are); it must increase strictly, since the split is by position."""
        values = frame[self.time_column]
        if values.isna().any():
            raise DeepmineError(
                f"time column {self.time_column!r} of {self.path} has "
                f"{int(values.isna().sum())} empty value(s)",
                "give every row a time",
            )
        if pd.api.types.is_numeric_dtype(values):
            index = pd.Index(values.to_numpy())
        else:
            try:
                index = pd.DatetimeIndex(pd.to_datetime(values))
            except (ValueError, TypeError) as exc:
                raise DeepmineError(
                    f"time column {self.time_column!r} of {self.path} is not dates "
                    f"({str(exc).splitlines()[0]})",
                    "use ISO dates (YYYY-MM-DD) or numbers, or set data.time_column",
                ) from None
        if not (index.is_monotonic_increasing and index.is_unique):
            raise DeepmineError(
                f"time column {self.time_column!r} of {self.path} is not strictly increasing",
                "sort the file by time and remove duplicate times",
            )
        return index

    def _values(self, frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
        """The named columns as a (T, len(columns)) float64 array, with no gaps: a window over a
        gap would have no value to show, and filling it is a modelling choice left to the user."""
        fix = "make every value of the input and target columns a number"
        arrays = [numeric_column(frame, c, self.path, fix).to_numpy() for c in columns]
        values = np.column_stack(arrays)
        gaps = np.isnan(values).sum(0)
        if gaps.any():
            named = ", ".join(f"{c!r}: {n}" for c, n in zip(columns, gaps, strict=True) if n)
            raise DeepmineError(
                f"{self.path} has missing values ({named})", "fill or interpolate them first"
            )
        return values

    # -- splitting ---------------------------------------------------------------------------

    def make_splits(self) -> None:
        frame = self._read()
        self.time_index = self._time_index(frame)
        extra_targets = [c for c in self.target_columns if c not in self.input_columns]
        columns = [*self.input_columns, *extra_targets]
        values = self._values(frame, columns).astype(np.float32)
        if self.mmap_wanted:  # copy-on-write: a tensor over it is never written, windows view it
            values = mapped_arrays({"series": values}, self.cache_dir, "series", mode="c")["series"]
        self.series = torch.from_numpy(values)
        input_index = [columns.index(c) for c in self.input_columns]
        target_index = [columns.index(c) for c in self.target_columns]
        inputs = self._columns(input_index)
        self.target_series = self._columns(target_index)
        self.split_bounds = self._bounds(len(self.series))
        train_stop = self.split_bounds["train"][1]
        self._check_declared_shapes()

        x_windows = inputs.unfold(0, self.lookback, 1).transpose(1, 2)  # [s] = inputs[s : s+L]
        y_windows = self.target_series.unfold(0, self.horizon, 1).transpose(1, 2)
        for split, (start, stop) in self.split_bounds.items():
            first = max(start, self.lookback)  # a training window needs `lookback` steps before
            last = stop - self.horizon  # the last origin whose horizon ends inside the part
            self.window_origins[split] = torch.arange(first, last + 1)
            x = x_windows[first - self.lookback : last + 1 - self.lookback]
            self.tensors[split] = (x, y_windows[first : last + 1])

        # Statistics of the training part only: the later parts must not leak into the inputs.
        self.target_scaler = fit_scaler(self.target_series[:train_stop])
        if self.normalize == "standardize":
            mean, std = fit_scaler(inputs[:train_stop])
            self.transform = Normalize(mean=mean, std=std)
        else:
            self.transform = Normalize()

    def _columns(self, index: list[int]) -> torch.Tensor:
        """Some columns of the series: the series itself when all are taken in order (no
        copy); otherwise a (T, k) copy, small next to the windows it is cut into."""
        if index == list(range(self.series.shape[1])):
            return self.series
        return self.series[:, index].contiguous()

    def _bounds(self, steps: int) -> dict[str, tuple[int, int]]:
        """(start, stop) of train, val and test, refusing parts too short for one window."""
        n_test = split_count(self.test_size, steps, "data.test_size")
        n_val = split_count(self.val_size, steps, "data.val_size")
        n_train = steps - n_val - n_test
        sizes = (
            f"data.val_size={self.val_size} ({n_val} steps) and "
            f"data.test_size={self.test_size} ({n_test} steps) of the {steps} steps of "
            f"{self.path.name}"
        )
        window = f"data.lookback={self.lookback} + data.horizon={self.horizon}"
        if n_train < self.lookback + self.horizon:
            raise DeepmineError(
                f"{sizes} leave {n_train} training steps, fewer than the "
                f"{self.lookback + self.horizon} one training window needs ({window})",
                "make lookback, horizon, val_size or test_size smaller",
            )
        for key, size, count in (
            ("data.val_size", self.val_size, n_val),
            ("data.test_size", self.test_size, n_test),
        ):
            if count < self.horizon:
                raise DeepmineError(
                    f"{key}={size} gives {count} steps, fewer than data.horizon={self.horizon}: "
                    "no window's horizon fits in that part",
                    f"make {key} at least {self.horizon} steps, or the horizon shorter",
                )
        val_start, test_start = n_train, n_train + n_val
        return {
            "train": (0, val_start),
            "val": (val_start, test_start),
            "test": (test_start, steps),
        }

    def codec(self):
        """The window, scaling and time spacing of the training series (`SeriesCodec`)."""
        from deepmine.data.codecs import SeriesCodec

        self.setup()
        return SeriesCodec.fitted(self)

    # -- shapes ------------------------------------------------------------------------------

    def shapes(self) -> dict:
        """The data config's shape keys, read from the data (reading the series if needed)."""
        self.setup()
        return self._shapes()

    def _shapes(self) -> dict:
        n_targets = len(self.target_columns)
        return {
            "input_shape": [self.lookback, len(self.input_columns)],
            "num_targets": n_targets,
            "num_outputs": self.horizon * n_targets,
            "horizon": self.horizon,
            "lookback": self.lookback,
        }

    def _check_declared_shapes(self) -> None:
        """A shape key set in the config must agree with the data (null: filled from it)."""
        actual = self._shapes()
        for key, declared in self.declared.items():
            if declared is not None and declared != actual[key]:
                raise DeepmineError(
                    f"data.{key}={declared} but the series gives {actual[key]} "
                    f"({len(self.input_columns)} input and {len(self.target_columns)} target "
                    f"column(s), lookback {self.lookback}, horizon {self.horizon})",
                    f"set data.{key}=null to take it from the data",
                )


class CSVSeriesDataModule(SeriesDataModule):
    """A series from a CSV file of your own: a time column, input columns, target columns.

    It is DVC-tracked only when the file lies inside the project's `data/` folder (which
    `data.dvc` pins); anywhere else, `source_tags()` records the file's path and md5 so a run
    still says which bytes it read. Paths resolve as for `data=csv` (`csv_table.resolve`).
    """

    dvc_tracked: ClassVar[bool] = False

    def __init__(
        self,
        path: str,
        time_column: str,
        target_columns: Sequence[str],
        lookback: int,
        horizon: int,
        val_size: float | int,
        test_size: float | int,
        input_columns: Sequence[str] | None = None,
        sep: str = "auto",
        **kwargs,
    ):
        resolved = resolve(path)
        super().__init__(
            resolved.stem, str(resolved.parent), lookback, horizon, val_size, test_size, **kwargs
        )
        self.path = resolved
        self.time_column = time_column
        if isinstance(target_columns, str) or not target_columns:
            raise DeepmineError(
                f"data.target_columns={target_columns!r} is not a list of column names",
                "set data.target_columns=[<column>, ...]",
            )
        self.wanted_targets = list(target_columns)
        self.wanted_inputs = None if input_columns is None else list(input_columns)
        self.sep = csv_sep.checked(sep)
        self.delimiter = None
        # an instance attribute: whether data.dvc pins the file depends on where it is
        self.dvc_tracked = resolved.is_relative_to((project_root() / DATA_DIR).resolve())

    def _check_source(self) -> None:
        """A user's file: `read_table` says what is wrong with it."""

    def read_tags(self) -> dict[str, str]:
        """Run tags about how the file was read, known once it is (`deepmine train` adds them
        to the run's start tags): the delimiter, which data.sep=auto leaves to the file."""
        return csv_sep.tags(self.delimiter) if self.delimiter else {}

    def source_tags(self) -> dict[str, str]:
        """Run tags naming the bytes read: the file's path and md5 (inside data/, data.dvc pins
        them as well; the tags then name the one file of it that was used)."""
        return {
            "deepmine.data.csv.path": str(self.path),
            "deepmine.data.csv.md5": file_md5(self.path),
        }


def _check_names(
    frame: pd.DataFrame, names: list[str], key: str, time_column: str, path: Path
) -> None:
    """`names` (config key `key`) are distinct columns of the file, other than the time."""
    if not names:
        raise DeepmineError(f"{key} selects no column of {path}", f"name columns in {key}")
    require_columns(frame, names, key, path)
    if time_column in names:
        raise DeepmineError(
            f"{key} includes the time column {time_column!r}",
            f"leave {time_column!r} out of {key}",
        )
    if len(set(names)) != len(names):
        raise DeepmineError(f"{key}={names} names a column twice", "name each column once")


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeepmineError(f"{key}={value!r} is not a positive integer", f"set {key} to 1 or more")
    return value


def _plain(value):
    """Config containers (DictConfig, ListConfig) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
