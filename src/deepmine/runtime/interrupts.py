"""Ctrl-C and SIGTERM become KeyboardInterrupt, but never in the middle of a store write.

Why: a KeyboardInterrupt raised inside an SQLite commit leaves that connection holding the
database lock, so the very next write (closing the run as KILLED) fails with "database is
locked" and the run stays RUNNING. Writes to the tracking store run inside `critical()`; a signal
that arrives meanwhile is remembered and raised as soon as the write has finished.

Stopping a command also stops the processes it started (see `die_with_parent` and
`StopChildren`): none of them outlives it.

A SLURM job's preemption signal (`installed(preemption=...)`) is deferred the same way and
raised as `Preempted`, so the run is parked for its next attempt rather than closed KILLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from hydra.experimental.callback import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0
_pending: int | None = None
#: the signal that means "preempted" in this block of `installed`, if any
_preemption: int | None = None
#: set by `StopChildren`: a block of `installed()` that ends by an exception stops this process's
#: children (and their trees) before the exception goes on
_stop_children = False
#: seconds those children get after SIGTERM (to close their own runs KILLED) before SIGKILL
CHILDREN_GRACE_S = 30.0


class Preempted(BaseException):
    """The cluster asked this job to make room (or it nears its time limit): save what counts
    and give the node back; the job runs again. A BaseException, as KeyboardInterrupt, so that
    no `except Exception` on the way turns it into a failure, and not a KeyboardInterrupt, which
    Lightning turns into exit(1) and the run into KILLED."""


def interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` is, or was raised while handling, a stop request (KeyboardInterrupt:
    Ctrl-C or SIGTERM). Libraries may wrap one: Hydra turns an OmegaConf error met while the
    signal unwound a compose into an empty `ConfigCompositionException` (seen once in a
    suite run: a SIGTERMed Optuna search exited 2 with "error: " instead of 130)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interruption(signum: int) -> BaseException:
    if signum == _preemption:
        return Preempted(f"signal {signal.Signals(signum).name}: preempted")
    return KeyboardInterrupt(f"signal {signum}")


def _handler(signum, frame) -> None:
    global _pending
    if _depth:
        # a stop request outranks a preemption that is still pending
        if _pending is None or _pending == _preemption:
            _pending = signum
        return
    raise _interruption(signum)


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
            raise _interruption(signum)


@contextlib.contextmanager
def installed(preemption: int | None = None) -> Iterator[None]:
    """Route SIGINT/SIGTERM (and the `preemption` signal, raised as `Preempted`) through the
    deferring handler for the duration of the block."""
    global _preemption
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    signals = (*SIGNALS, preemption) if preemption is not None else SIGNALS
    previous = {s: signal.signal(s, _handler) for s in signals}
    outer, _preemption = _preemption, preemption if preemption is not None else _preemption
    try:
        yield
    except BaseException:
        if _stop_children:
            with critical():  # a second Ctrl-C does not cut the stop short
                stop_children()
        raise
    finally:
        _preemption = outer
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_children(grace_s: float = CHILDREN_GRACE_S) -> None:
    """SIGTERM to this process's children, then SIGKILL to whatever is left of their whole trees
    (grandchildren included) after `grace_s`."""
    import psutil

    me = psutil.Process()
    tree = me.children(recursive=True)
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


class StopChildren(Callback):
    """Hydra callback of launchers whose jobs are child processes of the sweep on this machine
    (conf/launcher/submitit_local.yaml).

    submitit's local executor starts each job's controller as a plain child ("expected to survive
    the end of the python session", as a SLURM job would), so a sweep stopped by SIGTERM, or by a
    Ctrl-C that reached it alone, left its jobs training until `timeout_min`. With this callback
    the stopped sweep sends its children SIGTERM (the controller passes it on to its job, which
    closes its run KILLED) and SIGKILLs whatever of their trees is left after `CHILDREN_GRACE_S`.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        global _stop_children
        _stop_children = True


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process as soon as `parent` (the thread of it that started
    this process) ends, however it ends (SIGKILL included); exit at once if it has already.
    Linux only (PR_SET_PDEATHSIG); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)
