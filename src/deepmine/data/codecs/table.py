"""A table's fitted preprocessing: raw columns in, the standardized, one-hot feature rows out.

The same steps as `deepmine.data.csv_table` in training, with the values learned there: each
numeric column filled (`data.impute=mean|median`: with the training split's statistic) and
standardized with the training mean and std, in float32 as in training; each categorical column
one-hot encoded with the training categories. Columns are found by name, so their order in the
input does not matter and extra columns are ignored.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from deepmine.data.drift import categorical_reference, numeric_reference
from deepmine.errors import DeepmineError

#: what to do with a category never seen in training: zeros: encode it as an all-zero one-hot
#: row (as validation and test rows were in training), with a warning | refuse: stop
ON_UNSEEN = ("zeros", "refuse")


class TableCodec:
    """`columns`: one dict per raw feature column, in the net's order: `{"name", "kind":
    "numeric", "fill", "mean", "std"}` (`fill` None: a gap is refused, as training refused or
    dropped it) or `{"name", "kind": "category", "categories"}`."""

    kind = "table"

    def __init__(
        self,
        columns: list[dict],
        class_names: Sequence[str] = (),
        target_names: Sequence[str] = (),
        references: dict[str, dict] | None = None,
    ):
        self.columns = columns
        self.class_names = tuple(class_names)
        self.target_names = tuple(target_names)
        self.references = references or {}

    @classmethod
    def fitted(
        cls,
        frame: pd.DataFrame,
        features: list[str],
        numeric: dict[str, pd.Series],
        categories: dict[str, list[str]],
        fills: dict[str, float],
        scaling: tuple[torch.Tensor, torch.Tensor],
        train_rows: np.ndarray,
        class_names: Sequence[str] = (),
        target_names: Sequence[str] = (),
    ) -> TableCodec:
        """The codec of a table read in training: `features` in the net's order, `numeric`
        their numeric columns (values before filling), `categories` the categorical ones'
        training categories, `scaling` the numeric columns' (mean, std) in feature order."""
        mean, std = (t.reshape(-1).tolist() for t in scaling)
        columns, references, k = [], {}, 0
        for name in features:
            if name in numeric:
                columns.append(
                    {
                        "name": name,
                        "kind": "numeric",
                        "fill": fills.get(name),
                        "mean": mean[k],
                        "std": std[k],
                    }
                )
                k += 1
                references[name] = numeric_reference(numeric[name].iloc[train_rows].to_numpy())
            else:
                columns.append({"name": name, "kind": "category", "categories": categories[name]})
                references[name] = categorical_reference(
                    frame[name].iloc[train_rows], categories[name]
                )
        return cls(columns, class_names, target_names, references)

    @property
    def input_columns(self) -> list[str]:
        return [c["name"] for c in self.columns]

    def encode(self, data, on_unseen: str = "zeros", drift=None) -> torch.Tensor:
        """The net's input rows for the raw rows of `data` (a DataFrame, or anything pandas
        makes one of: a dict of columns, a list of records). `drift`
        (`deepmine.data.drift.DriftCounter`) is given each raw feature as read here."""
        if on_unseen not in ON_UNSEEN:
            raise DeepmineError(
                f"on_unseen={on_unseen!r} is not one of {', '.join(ON_UNSEEN)}",
                "use on_unseen=zeros or on_unseen=refuse",
            )
        frame = as_frame(data)
        require_input_columns(frame, self.input_columns, "the input")
        blocks, numeric, features = [], [], {}
        for column in self.columns:
            values = frame[column["name"]]
            if column["kind"] == "numeric":
                raw = self._numbers(column["name"], values)
                features[column["name"]] = raw
                blocks.append(self._filled(column, raw)[:, None])
                numeric.append(True)
            else:
                features[column["name"]] = values
                matrix = self._one_hot(column, values, on_unseen)
                blocks.append(matrix)
                numeric.extend([False] * matrix.shape[1])
        if drift is not None:
            drift.add(features)
        x = torch.from_numpy(np.concatenate(blocks, axis=1))
        mask = torch.as_tensor(numeric, dtype=torch.bool)
        stats = [c for c in self.columns if c["kind"] == "numeric"]
        mean = torch.tensor([c["mean"] for c in stats], dtype=torch.float32)
        std = torch.tensor([c["std"] for c in stats], dtype=torch.float32)
        x[:, mask] = (x[:, mask] - mean) / std  # the operations of training, in float32
        return x

    @staticmethod
    def _numbers(name: str, values: pd.Series) -> np.ndarray:
        """A numeric column as float64, gaps as NaN; a value that is not a number stops."""
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            from deepmine.data.tables import as_numbers

            values, bad = as_numbers(values)
            if len(bad):
                raise DeepmineError(
                    f"column {name!r} has {len(bad)} non-numeric value(s), e.g. {bad.iloc[0]!r} "
                    f"(row {bad.index[0]}); the model was trained on numbers there",
                    f"fix the values of {name!r}",
                )
        return values.to_numpy(np.float64, na_value=np.nan)

    @staticmethod
    def _filled(column: dict, values: np.ndarray) -> np.ndarray:
        """The gaps filled with the training fill value (refused without one), as float32."""
        gaps = np.isnan(values)
        if gaps.any():
            if column["fill"] is None:
                raise DeepmineError(
                    f"column {column['name']!r} has {int(gaps.sum())} missing value(s) (first "
                    f"in row {int(np.flatnonzero(gaps)[0])}), and the model was trained without "
                    "filling gaps",
                    "fill them in the input, or train with data.impute=mean or median",
                )
            values = np.where(gaps, column["fill"], values)
        return values.astype(np.float32)

    def _one_hot(self, column: dict, values: pd.Series, on_unseen: str) -> np.ndarray:
        from deepmine.data.tables import as_labels

        name, categories = column["name"], column["categories"]
        labels = as_labels(values)  # as training labelled them: 3, 3.0 and "3" are one label
        codes = pd.Categorical(labels, categories=categories).codes
        unseen = (codes < 0) & labels.notna().to_numpy()
        if unseen.any():
            example = labels[unseen].iloc[0]
            problem = (
                f"column {name!r} has {int(unseen.sum())} value(s) never seen in training, e.g. "
                f"{example!r} (the model knows {', '.join(map(repr, categories))})"
            )
            if on_unseen == "refuse":
                raise DeepmineError(
                    problem, "fix the values, or pass on_unseen=zeros to encode them as zeros"
                )
            # said on stderr, as the datamodules warn (a logger would go to Hydra's log file)
            print(f"warning: {problem}: encoded as all-zero one-hot rows", file=sys.stderr)
        matrix = np.zeros((len(values), len(categories)), dtype=np.float32)
        seen = codes >= 0
        matrix[np.flatnonzero(seen), codes[seen]] = 1.0
        return matrix


def require_input_columns(frame: pd.DataFrame, names: list[str], what: str) -> None:
    """Every column a model reads is in `frame` (`what` names it in the message)."""
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise DeepmineError(
            f"{what} has no column(s) {', '.join(map(repr, missing))}, which the model was "
            f"trained on (it reads {', '.join(map(repr, names))})",
            "add the column(s) to the input; other columns are ignored",
        )


def as_frame(data) -> pd.DataFrame:
    """`data` as a DataFrame (a dict of columns or a list of records is made one)."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, pd.Series):
        return data.to_frame().T
    try:
        return pd.DataFrame(data)
    except (ValueError, TypeError) as exc:
        raise DeepmineError(
            f"cannot read the input as a table ({type(data).__name__}: {exc})",
            "pass a DataFrame with the training table's columns",
        ) from None
