"""How far new data has moved from the training split: the population stability index (PSI)
of each feature, from the training distribution a logged model carries.

Why PSI (and not a KS test): it needs only a few numbers per feature from training (decile
edges and the share of training rows in each bin, kept in the model), it is computed from
counts, so an input larger than memory is measured chunk by chunk, and it reads the same for a
numeric and a categorical feature. A KS test would need the training values themselves.

`PSI = sum over bins of (new - train) * ln(new / train)`, shares floored at `FLOOR` so an empty
bin does not make it infinite. The usual reading (Yurdakul 2018, "Statistical Properties of
Population Stability Index"; Siddiqi 2006, "Credit Risk Scorecards"): below 0.1 no shift,
0.1 to 0.2 a moderate one, above 0.2 a significant one, so `THRESHOLD` flags PSI > 0.2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: a feature whose PSI is above this is flagged as drifted (see the module docstring)
THRESHOLD = 0.2
#: bins of a numeric feature: deciles of its training values
BINS = 10
#: smallest share of a bin, so an empty bin counts as rare instead of impossible
FLOOR = 1e-4
#: the bin of a category never seen in training (and of a missing value)
OTHER = "<other>"


def numeric_reference(values: np.ndarray) -> dict:
    """The training side of a numeric feature: its inner decile edges and the share of the
    training values in each bin (missing values left out)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"kind": "numeric", "edges": [], "expected": [1.0]}
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "expected": _shares(counts).tolist()}


def categorical_reference(labels: pd.Series, categories: list[str]) -> dict:
    """The training side of a categorical feature: the share of each category, and of
    anything else (`OTHER`), among the training rows (labels as strings)."""
    counts = _category_counts(labels, categories)
    return {
        "kind": "category",
        "categories": list(categories),
        "expected": _shares(counts).tolist(),
    }


def bin_counts(reference: dict, values) -> np.ndarray:
    """How many of `values` fall in each of the reference's bins."""
    if reference["kind"] == "category":
        return _category_counts(pd.Series(values), reference["categories"])
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    edges = np.asarray(reference["edges"], dtype=np.float64)
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def psi(expected, counts) -> float:
    """The PSI of observed bin `counts` against the training shares `expected`."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() == 0:
        return float("nan")
    actual = np.clip(_shares(counts), FLOOR, None)
    expected = np.clip(np.asarray(expected, dtype=np.float64), FLOOR, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftCounter:
    """Bin counts of every feature, added chunk by chunk; `table()` is the PSI per feature."""

    def __init__(self, references: dict[str, dict], threshold: float = THRESHOLD):
        self.references = references
        self.threshold = threshold
        self.counts = {name: np.zeros(len(ref["expected"])) for name, ref in references.items()}

    def add(self, features: dict[str, object]) -> None:
        for name, values in features.items():
            if name in self.references:
                self.counts[name] += bin_counts(self.references[name], values)

    def table(self) -> pd.DataFrame:
        rows = []
        for name, ref in self.references.items():
            value = psi(ref["expected"], self.counts[name])
            rows.append(
                {
                    "feature": name,
                    "kind": ref["kind"],
                    "psi": value,
                    "drifted": bool(value > self.threshold),
                    "rows": int(self.counts[name].sum()),
                }
            )
        return pd.DataFrame(rows, columns=["feature", "kind", "psi", "drifted", "rows"])


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def _category_counts(labels: pd.Series, categories: list[str]) -> np.ndarray:
    from deepmine.data.tables import as_labels

    codes = pd.Categorical(as_labels(labels), categories=categories).codes
    codes = np.where(codes < 0, len(categories), codes)  # unseen and missing: the OTHER bin
    return np.bincount(codes, minlength=len(categories) + 1)
