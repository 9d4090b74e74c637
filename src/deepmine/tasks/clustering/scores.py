"""How well clusters match the labels that training never saw: accuracy, NMI and ARI.

NMI and ARI come from torchmetrics. Clustering accuracy is computed here with scipy's
`linear_sum_assignment` (the Hungarian method) on the cluster x class contingency table:
torchmetrics' `ClusterAccuracy` needs the optional compiled `torch_linear_assignment` package,
which has no wheel for every platform. Accuracy is the share of samples whose cluster is
matched, one to one, to their class; with more clusters than classes the unmatched clusters
count as wrong, as in DEC (Xie et al. 2016) and DEC-keras' `metrics.acc`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

SCORES = ("acc", "nmi", "ari")


def contingency(clusters: np.ndarray, labels: np.ndarray, n_clusters: int, n_classes: int):
    """Counts of samples per (cluster, class): rows clusters, columns classes."""
    table = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(table, (np.asarray(clusters), np.asarray(labels)), 1)
    return table


def matching(table: np.ndarray) -> dict[int, int]:
    """The one-to-one cluster -> class matching that covers the most samples."""
    rows, cols = linear_sum_assignment(table, maximize=True)
    return dict(zip(rows.tolist(), cols.tolist(), strict=True))


def cluster_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    table = contingency(clusters, labels, int(clusters.max()) + 1, int(labels.max()) + 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(labels))


def scores(clusters: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`acc`, `nmi` (arithmetic normalization, as scikit-learn's default) and `ari`."""
    from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score

    preds = torch.as_tensor(np.asarray(clusters), dtype=torch.long)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with warnings.catch_warnings():
        # torchmetrics builds its contingency table as a sparse tensor; torch warns about it
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        nmi = float(normalized_mutual_info_score(preds, target))
        ari = float(adjusted_rand_score(preds, target))
    return {"acc": cluster_accuracy(clusters, labels), "nmi": nmi, "ari": ari}
