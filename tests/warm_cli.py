"""A warm starter for the test suite's `python -m deepmine ...` processes.

Why: every CLI process the suite starts spends about 5 s of CPU importing torch, Lightning,
MLflow and friends before it runs one line of deepmine (measured with `python -X importtime`),
and the suite starts hundreds of them on two cores. This starter imports those libraries once
and then forks one child per command. Each child is still a separate process that runs the real
entry point (`runpy` on `deepmine.__main__`, exactly what `python -m deepmine` runs) in its own
working directory, with its own environment, stdin from /dev/null and its output in files; only
the third-party imports are inherited. deepmine's own modules are imported fresh in every child,
so nothing deepmine computes at import time is shared.

What it cannot stand in for, tests keep doing with a fresh interpreter (`run_cli(fresh=True)`,
`start_cli`): import-time behaviour (`--help` without torch), signals and process trees, and
bit-for-bit reruns (forked children share one hash seed).

Protocol, one JSON line per request on stdin: {"argv", "cwd", "env", "stdout", "stderr"};
the answer is one JSON line {"pid"} when the child starts and {"returncode"} when it ends.
A batch, {"batch": [request, ...]}, starts every child at once (processes that must run side by
side, as a race on one store needs): one line {"pids": [...]} once all are started, then one
{"returncodes": [...]} once all have ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys

#: imported once, before any fork; none of them starts a thread or opens a store at import
WARM_MODULES = (
    "torch",
    "lightning.pytorch",
    "torchmetrics",
    "mlflow",
    "mlflow.tracking",
    "hydra",
    "omegaconf",
    "pandas",
    "sklearn",
    "scipy.stats",
    "matplotlib",
    "rich.console",
)


def _die_with_parent() -> None:
    """The starter ends when the pytest worker that started it ends, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child(request: dict) -> None:
    """Become `python -m deepmine <argv>`; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # a timeout kills the command and everything it started
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        libc = ctypes.CDLL(None)
        libc.prctl(1, 0)  # the child's lifetime is its own, as a subprocess's is
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = os.getcwd()  # as `python -m` sets it
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["deepmine", *request["argv"]]
        import runpy

        try:
            runpy.run_module("deepmine", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            import traceback

            traceback.print_exc()
            code = 130
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        # what the interpreter does at exit: join non-daemon threads, then atexit handlers
        import atexit
        import threading

        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def serve() -> None:
    import importlib

    _die_with_parent()
    for name in WARM_MODULES:
        importlib.import_module(name)
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "batch" in request:
            pids = []
            for each in request["batch"]:
                pid = os.fork()
                if pid == 0:
                    _child(each)
                pids.append(pid)
            print(json.dumps({"pids": pids}), file=out, flush=True)
            codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
            print(json.dumps({"returncodes": codes}), file=out, flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=out, flush=True)


if __name__ == "__main__":
    serve()
