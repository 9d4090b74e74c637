"""Gradients inside `trainer.test`, which runs in inference mode: what an attack (classification)
and DEC's refinement after the test (clustering) both need. Shared here so no task folder imports
another."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Gradients on, even inside `trainer.test`'s inference mode (clone inputs inside)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
