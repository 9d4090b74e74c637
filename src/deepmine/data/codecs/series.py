"""A series' fitted preprocessing: the recent history of a series in, the window the net saw
out, and the times of the steps it forecasts.

Given a DataFrame with the time column and the input columns, the model forecasts the
`horizon` steps after its last row from its last `lookback` rows, standardized with the
training part's statistics as in training (`Normalize`, float32). The future times continue the
training series' spacing: its pandas frequency for dates (`pd.infer_freq`), else the median
step (dates or numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from deepmine.data.batches import Normalize
from deepmine.data.drift import numeric_reference
from deepmine.errors import DeepmineError

#: the output's column numbering the forecast steps (1 .. horizon)
STEP_COLUMN = "step"


class SeriesCodec:
    kind = "series"

    def __init__(
        self,
        time_column: str,
        input_columns: Sequence[str],
        target_columns: Sequence[str],
        lookback: int,
        horizon: int,
        mean: list[float] | None,
        std: list[float] | None,
        time_kind: str,
        frequency: str | None,
        step: float,
        references: dict[str, dict] | None = None,
    ):
        self.time_column = time_column
        self.input_names = list(input_columns)
        self.target_names = tuple(target_columns)
        self.class_names: tuple[str, ...] = ()
        self.lookback, self.horizon = int(lookback), int(horizon)
        self.mean, self.std = mean, std
        self.time_kind, self.frequency, self.step = time_kind, frequency, step
        self.references = references or {}

    @classmethod
    def fitted(cls, datamodule) -> SeriesCodec:
        """The codec of a `SeriesDataModule` after its `setup()`."""
        index = datamodule.time_index
        train_stop = datamodule.split_bounds["train"][1]
        transform = datamodule.transform
        mean = std = None
        if transform is not None and transform.mean is not None:
            mean = torch.as_tensor(transform.mean).reshape(-1).tolist()
            std = torch.as_tensor(transform.std).reshape(-1).tolist()
        dates = isinstance(index, pd.DatetimeIndex)
        frequency = pd.infer_freq(index) if dates and len(index) >= 3 else None
        diffs = np.diff(index.asi8 if dates else index.to_numpy().astype(np.float64))
        inputs = datamodule.series[:train_stop, : len(datamodule.input_columns)].numpy()
        references = {
            name: numeric_reference(inputs[:, k]) for k, name in enumerate(datamodule.input_columns)
        }
        return cls(
            datamodule.time_column,
            datamodule.input_columns,
            datamodule.target_columns,
            datamodule.lookback,
            datamodule.horizon,
            mean,
            std,
            "datetime" if dates else "number",
            frequency,
            float(np.median(diffs)) if len(diffs) else 1.0,
            references,
        )

    @property
    def input_columns(self) -> list[str]:
        return [self.time_column, *self.input_names]

    def encode(self, data, on_unseen: str = "zeros", drift=None) -> torch.Tensor:
        """The one window `(1, lookback, inputs)` ending at the input's last row; `drift`
        (`deepmine.data.drift.DriftCounter`) is given every row of each input column."""
        frame = self._checked(data)
        columns = {c: pd.to_numeric(frame[c]).to_numpy(np.float64) for c in self.input_names}
        if drift is not None:
            drift.add(columns)
        values = np.column_stack(list(columns.values()))
        window = torch.from_numpy(values[-self.lookback :].astype(np.float32))[None]
        normalize = (
            Normalize()
            if self.mean is None
            else Normalize(mean=torch.tensor(self.mean), std=torch.tensor(self.std))
        )
        return normalize(window)

    def future_times(self, data) -> list:
        """The times of the `horizon` steps after the input's last row."""
        times = self._times(self._checked(data))
        last = times[-1]
        if self.time_kind == "datetime":
            if self.frequency:
                return list(pd.date_range(last, periods=self.horizon + 1, freq=self.frequency)[1:])
            return [
                last + pd.Timedelta(int(self.step * k), "ns") for k in range(1, self.horizon + 1)
            ]
        return [last + self.step * k for k in range(1, self.horizon + 1)]

    def _checked(self, data) -> pd.DataFrame:
        from deepmine.data.codecs.table import as_frame, require_input_columns

        frame = as_frame(data)
        require_input_columns(frame, self.input_columns, "the series")
        if len(frame) < self.lookback:
            raise DeepmineError(
                f"the series has {len(frame)} rows, fewer than the {self.lookback} steps of "
                "history (data.lookback) the model forecasts from",
                f"pass at least the last {self.lookback} rows of the series",
            )
        from deepmine.data.tables import as_numbers

        for column in self.input_names:
            numbers, _ = as_numbers(frame[column])
            bad = frame[column][numbers.isna()]  # a gap or a word: no history to forecast from
            if len(bad):
                raise DeepmineError(
                    f"column {column!r} of the series has {len(bad)} missing or non-numeric "
                    f"value(s), e.g. {bad.iloc[0]!r} (row {bad.index[0]})",
                    "fill or fix them: the model forecasts from complete history",
                )
        times = self._times(frame)
        if not (times.is_monotonic_increasing and times.is_unique):
            raise DeepmineError(
                f"time column {self.time_column!r} of the series is not strictly increasing",
                "sort the rows by time and remove duplicate times",
            )
        return frame

    def _times(self, frame: pd.DataFrame) -> pd.Index:
        values = frame[self.time_column]
        try:
            if self.time_kind == "number":
                return pd.Index(pd.to_numeric(values, errors="raise").to_numpy())
            return pd.DatetimeIndex(pd.to_datetime(values))
        except (ValueError, TypeError) as exc:
            kind = "numbers" if self.time_kind == "number" else "dates"
            raise DeepmineError(
                f"time column {self.time_column!r} of the series is not {kind} "
                f"({str(exc).splitlines()[0]})",
                f"give it {kind}, as in the training series",
            ) from None
