"""How a Hydra command (train, eval) runs from `deepmine <command> [args]`: Hydra's own argument
parser reads `sys.argv`, so the command line is put there for the call."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def run_hydra_app(app: Callable[[], object], name: str, args: list[str]) -> int:
    """Run the `@hydra.main` function `app` with `args` as the command line of `deepmine <name>`."""
    # Hydra prints composition errors over several lines and exits by itself; with
    # HYDRA_FULL_ERROR it raises instead, so the CLI can report them in one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra's argparse takes -m/--multirun only before the overrides; people type it anywhere
    flags = [a for a in args if a in ("-m", "--multirun")]
    args = [*flags, *(a for a in args if a not in ("-m", "--multirun"))]
    saved = sys.argv
    sys.argv = [f"deepmine {name}", *args]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
