"""Where a forecasting run's chronological split fell, as run tags.

A series is split by time (train | val | test, the end held out), and the sizes are configured
as fractions or step counts: from the config alone nobody can say which years a model was tested
on, nor compare two runs whose files differ in length. So the run records, for each part, its
first and last time and its number of steps: `deepmine.split.test.first = 1969-01-01`. A part
is the steps its windows forecast (a validation or test window's inputs reach back into the
earlier part: history a forecaster at the origin has observed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

PREFIX = "deepmine.split"


def split_tags(time_index: Sequence, bounds: Mapping[str, tuple[int, int]]) -> dict[str, str]:
    """`deepmine.split.<part>.first|last|steps` for each part's `(start, stop)` step range."""
    tags = {}
    for part, (start, stop) in bounds.items():
        tags[f"{PREFIX}.{part}.first"] = when(time_index[start])
        tags[f"{PREFIX}.{part}.last"] = when(time_index[stop - 1])
        tags[f"{PREFIX}.{part}.steps"] = str(stop - start)
    return tags


def when(value) -> str:
    """A time as written in a tag: a date alone when it is midnight (`1958-03-01`), else ISO
    with the time; a number (a step count as time column) as it is."""
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        stamp = pd.Timestamp(value)
        return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()
    return str(value.item() if isinstance(value, np.generic) else value)
