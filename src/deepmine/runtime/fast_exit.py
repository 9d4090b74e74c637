"""End the `deepmine` process without the interpreter's teardown, once everything is written.

Why: after `import torch, lightning, mlflow` CPython spends 2-3 s at exit freeing the hundreds
of thousands of objects those imports made, module by module (measured here: `python -c
"import lightning"` took 8.96 s, 6.97 s when it ended with `os._exit`). That is a quarter of a
tiny run's wall time, spent after its run was closed, on memory the kernel frees at once anyway.

What a normal exit does before its teardown is done first, in the same order: join the
non-daemon threads (and the thread pools' workers, `threading._shutdown`), run the `atexit`
handlers (logging's flush and close of every handler, multiprocessing's join of its children,
MLflow's and filelock's own, `weakref.finalize` callbacks such as temporary folders), flush
stdout and stderr. tests/warm_cli.py ends every forked command the same way. Only the process
entry takes the shortcut (`deepmine` or `python -m deepmine`, never `cli.main([...])` called by
a test or a program), from the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def exit_now(code: int) -> int:
    """Leave the process with `code` right away, after what a normal exit does first (see the
    module's docstring); from another thread than the main one, return `code` instead."""
    if threading.current_thread() is not threading.main_thread():
        return code
    threading._shutdown()  # join non-daemon threads, as the interpreter does before atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a stream closed or replaced by something without `flush` has nothing left to lose
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(code & 0xFF)
