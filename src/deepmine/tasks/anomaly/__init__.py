"""Anomaly detection (`task.py`): an autoencoder trained on the normal classes only scores each
sample by its reconstruction error, against IsolationForest and PCA fitted in the same run
(`baselines.py`), evaluated by AUROC, average precision and precision/recall/F1 at a threshold
chosen on validation (`scores.py`), with its figures (`plots.py`)."""

from deepmine.tasks.anomaly.task import AnomalyTask

__all__ = ["AnomalyTask"]
