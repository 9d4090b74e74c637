"""statsmodels' embedded time series written into `data/series/` as CSV files.

`deepmine data pull` fills `data/series/` from here when no DVC remote holds it, and `dvc commit`
then proves the bytes against `data.dvc`. That proof only works if the same installed data gives
the same bytes on every machine, so the files are written by hand, not by `DataFrame.to_csv`
(whose float and date formatting follows pandas' version and options):

- columns in a fixed order: `date` first (ISO `YYYY-MM-DD`, the first day of the period), then
  the value column(s);
- every value rounded to 6 decimals, then written as Python's shortest round-trip `repr`: 6
  decimals are finer than any source (0.1 sunspot, 0.1 ppm, 0.01 degC), so nothing the source
  says is lost, and the last-bit noise of a mean (summation order) cannot reach the text;
- `\\n` line ends, UTF-8, no index column, a final newline.

Each series is a function returning `(dates, {column: values})`, so adding one is one function
and one entry of `SERIES`.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: decimals every value is rounded to before it is written (see the module docstring)
DECIMALS = 6
TIME_COLUMN = "date"
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

Columns = dict[str, np.ndarray]


def sunspots() -> tuple[list[dt.date], Columns]:
    """Yearly mean sunspot numbers 1700-2008 (309 years), statsmodels' `sunspots`; the year is
    dated by its first day."""
    from statsmodels.datasets import sunspots as source

    frame = source.load_pandas().data
    dates = [dt.date(int(year), 1, 1) for year in frame["YEAR"]]
    return dates, {"SUNACTIVITY": frame["SUNACTIVITY"].to_numpy(np.float64)}


def co2() -> tuple[list[dt.date], Columns]:
    """Mauna Loa atmospheric CO2 (ppm), statsmodels' weekly `co2` (1958-03-29 to 2001-12-29),
    as monthly means dated by the month's first day ("MS"): 526 months, 1958-03 to 2001-12.

    59 weeks are missing; the weeks a month has are averaged, and the 5 months with no week at
    all (1958-06, 1958-10, 1964-02..04) are filled by linear interpolation between the
    neighbouring months' means (by position: months are equally spaced steps). Interpolation,
    not forward fill, because the series trends upward and a repeated value would put a step
    into it. Both ends are observed months, so nothing is extrapolated.
    """
    from statsmodels.datasets import co2 as source

    weekly = source.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean()
    if monthly.iloc[[0, -1]].isna().any():
        raise ValueError("statsmodels' co2 no longer starts and ends with an observed month")
    monthly = monthly.interpolate(method="linear")
    dates = [dt.date(stamp.year, stamp.month, 1) for stamp in monthly.index]
    return dates, {"co2": monthly.to_numpy(np.float64)}


def elnino() -> tuple[list[dt.date], Columns]:
    """Monthly sea surface temperatures (degC) of the Pacific's El Nino region 1950-2010,
    statsmodels' `elnino`. The source is wide (one row per year, one column per month); it is
    melted year by year, January to December, into one monthly series of 732 months."""
    from statsmodels.datasets import elnino as source

    frame = source.load_pandas().data
    dates = [dt.date(int(year), month, 1) for year in frame["YEAR"] for month in range(1, 13)]
    values = frame[list(MONTHS)].to_numpy(np.float64).reshape(-1)
    return dates, {"sst": values}


#: file stem -> the function giving its dates and value columns
SERIES: dict[str, Callable[[], tuple[list[dt.date], Columns]]] = {
    "sunspots": sunspots,
    "co2": co2,
    "elnino": elnino,
}


def format_value(value: float) -> str:
    """A value as written: rounded to `DECIMALS`, shortest round-trip text (`5.0`, `317.025`)."""
    if not np.isfinite(value):
        raise ValueError(f"a series value is not finite: {value!r}")
    return repr(round(float(value), DECIMALS))


def series_text(name: str) -> str:
    """The CSV text of series `name`: header, one line per time step, `\\n` line ends."""
    dates, columns = SERIES[name]()
    for column, values in columns.items():
        if len(values) != len(dates):
            raise ValueError(f"{name}: {column} has {len(values)} values for {len(dates)} dates")
    lines = [",".join([TIME_COLUMN, *columns])]
    for row, date in enumerate(dates):
        lines.append(
            ",".join([date.isoformat(), *(format_value(v[row]) for v in columns.values())])
        )
    return "\n".join(lines) + "\n"


def write_series(folder: Path) -> list[Path]:
    """Write every series of `SERIES` as `<folder>/<name>.csv` (the folder is created).

    Each file is written under a temporary name and renamed into place, so a reader never sees
    half a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SERIES:
        target = folder / f"{name}.csv"
        handle, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".csv", dir=folder)
        with os.fdopen(handle, "wb") as out:
            out.write(series_text(name).encode("utf-8"))
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
        written.append(target)
    return written
