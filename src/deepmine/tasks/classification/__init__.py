"""Supervised classification (`task.py`), with adversarial training and robust evaluation
(`robust.py`), the L∞ attacks they use (`attacks.py`) and its figures (`plots.py`)."""

from deepmine.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
