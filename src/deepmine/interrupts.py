"""Ctrl-C and SIGTERM become KeyboardInterrupt, but never in the middle of a store write.

Why: a KeyboardInterrupt raised inside an SQLite commit leaves that connection holding the
database lock, so the very next write (closing the run as KILLED) fails with "database is
locked" and the run stays RUNNING. Writes to the tracking store run inside `critical()`; a signal
that arrives meanwhile is remembered and raised as soon as the write has finished.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0
_pending: int | None = None


def _handler(signum, frame) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Hold off Ctrl-C/SIGTERM (when `installed`) until the block has run."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Route SIGINT/SIGTERM through the deferring handler for the duration of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
