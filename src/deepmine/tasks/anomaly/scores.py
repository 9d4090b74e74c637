"""How well anomaly scores separate the anomalous samples from the normal ones: ranking scores
(AUROC, average precision) over every threshold, and precision/recall/F1 at one threshold.

All from torchmetrics, on scores where higher means more anomalous. torchmetrics reads preds
outside [0, 1] as logits and applies a sigmoid, per `update` call: a reconstruction error of 20
and one of 40 would both become 1.0 (a tie), and a batch whose errors all lie in [0, 1] would
skip the sigmoid while the next does not. `unit_interval` maps any score into (0, 1) by one
strictly increasing function in float64 instead, so the ranking (all that AUROC and AP read) is
the scores' own.
"""

from __future__ import annotations

import numpy as np
import torch

RANKING = ("auroc", "ap")
AT_THRESHOLD = ("precision", "recall", "f1")


def unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """`0.5 + 0.5 s / (1 + |s|)`: strictly increasing over the reals, into (0, 1), float64."""
    s = scores.detach().to(torch.float64)
    return 0.5 + 0.5 * s / (1 + s.abs())


def ranking_scores(scores, anomalous) -> dict[str, float]:
    """`auroc` and `ap` (average precision, anomalies the positive class) of `scores`."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    preds = unit_interval(torch.as_tensor(np.asarray(scores)))
    target = torch.as_tensor(np.asarray(anomalous), dtype=torch.long)
    return {
        "auroc": float(binary_auroc(preds, target)),
        "ap": float(binary_average_precision(preds, target)),
    }


def threshold_scores(flagged, anomalous) -> dict[str, float]:
    """`precision`, `recall` and `f1` of the samples flagged (score above the threshold) as
    anomalies; 0 where nothing is flagged."""
    from torchmetrics.functional.classification import (
        binary_f1_score,
        binary_precision,
        binary_recall,
    )

    preds = torch.as_tensor(np.asarray(flagged), dtype=torch.long)
    target = torch.as_tensor(np.asarray(anomalous), dtype=torch.long)
    return {
        "precision": float(binary_precision(preds, target)),
        "recall": float(binary_recall(preds, target)),
        "f1": float(binary_f1_score(preds, target)),
    }
