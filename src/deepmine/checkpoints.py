"""Safe checkpoint loading: tensors only.

`torch.load(weights_only=True)` refuses pickled code, so a checkpoint from an untrusted source
cannot run anything when it is opened; only the model weights are taken from it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepmine.errors import DeepmineError, first_line


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise DeepmineError(f"checkpoint {path} does not exist", "check ckpt_path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DeepmineError(
            f"{path} is not a loadable weights-only checkpoint ({first_line(exc)})",
            "use a checkpoint written by deepmine train",
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
