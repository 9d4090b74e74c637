"""deepmine: reproducible deep-learning experiments for data mining.

Kept import-light on purpose: `deepmine --help` must not pay for torch, Lightning or MLflow.
"""

__version__ = "0.1.0"
