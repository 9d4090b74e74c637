"""Clustering (`task.py`): an autoencoder's codes clustered by k-means, refined by DEC
(`dec.py`), scored against held-back labels (`scores.py`), with its figures (`plots.py`)."""

from deepmine.tasks.clustering.task import ClusteringTask

__all__ = ["ClusteringTask"]
