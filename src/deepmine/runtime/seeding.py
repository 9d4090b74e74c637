"""Seeds and determinism, set the same way for every run."""

from __future__ import annotations

import os


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (and dataloader workers), and pin nondeterministic kernels.

    The Trainer's `deterministic=True` switches torch to deterministic algorithms; cuBLAS also
    needs this workspace setting before CUDA starts, or deterministic GEMMs raise.
    """
    import lightning.pytorch as pl

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    pl.seed_everything(seed, workers=True, verbose=False)
