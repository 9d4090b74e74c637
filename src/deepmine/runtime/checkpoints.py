"""Safe checkpoint loading: tensors only.

`torch.load(weights_only=True)` refuses pickled code, so a checkpoint from an untrusted source
cannot run anything when it is opened; only the model weights are taken from it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from deepmine.errors import DeepmineError, first_line

GENERIC_FIX = "use a checkpoint written by deepmine train, or run_id=<mlflow run id>"


def check_is_checkpoint(path: Path, fix: str = GENERIC_FIX) -> None:
    """Refuse, in one line, a file that is no checkpoint at all (before building any model)."""
    if not path.is_file():
        raise DeepmineError(f"checkpoint {path} does not exist", fix)
    # torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle
    with path.open("rb") as file:
        legacy = file.read(1) == b"\x80"
    if not (legacy or zipfile.is_zipfile(path)):
        raise DeepmineError(f"{path} is not a checkpoint (not a PyTorch file)", fix)


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    path = Path(path)
    check_is_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DeepmineError(
            f"{path} is not a loadable weights-only checkpoint ({first_line(exc)})",
            GENERIC_FIX,
        ) from exc
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise DeepmineError(f"{path} holds no state_dict", "use a Lightning checkpoint")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise DeepmineError(
            f"{path} does not fit the configured model ({str(exc).splitlines()[0]})",
            "pass the net/data overrides the checkpoint was trained with, or use run_id=...",
        ) from exc
