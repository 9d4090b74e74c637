"""Shared fixtures: real subprocess runs of the CLI, real SQLite MLflow stores, real DVC repos.

Every run writes into a temporary folder (store, Hydra outputs) and the subprocess's working
directory is a temporary folder too, so a test also proves nothing lands in the current
directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def deepmine_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DEEPMINE_"))}
    # Two test workers share two cores: one thread each keeps them from fighting.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, fresh: bool = False, **env: str
) -> subprocess.CompletedProcess:
    """`python -m deepmine <args>` in a subprocess, as a user would run it.

    The process is forked from a warm starter that has torch, Lightning and MLflow imported
    already (`tests/warm_cli.py`: about 5 s of CPU saved per command); `fresh=True` starts a
    new interpreter instead, for what depends on one (import-time behaviour, hash seeds).
    DEEPMINE_TESTS_FRESH=1 makes every command fresh (to tell a warm-start artefact apart)."""
    if fresh or os.environ.get("DEEPMINE_TESTS_FRESH") == "1":
        return subprocess.run(
            [sys.executable, "-m", "deepmine", *args],
            cwd=cwd,
            env=deepmine_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return _WARM.run(list(args), cwd, deepmine_env(**env), timeout)


def run_cli_side_by_side(
    commands: list[list[str]], *, cwd: Path, timeout: float = 300, **env: str
) -> list[subprocess.CompletedProcess]:
    """Several `python -m deepmine` commands started at once and running side by side (a race
    on one store), each its own process; their results in order once all have ended, or
    TimeoutExpired (every one killed) when they are not all done within `timeout` s.

    Forked from the warm starter, all within milliseconds (a tighter race than interpreters
    that each spend seconds importing); DEEPMINE_TESTS_FRESH=1 starts fresh interpreters."""
    if os.environ.get("DEEPMINE_TESTS_FRESH") == "1":
        import time

        procs = [start_cli(*args, cwd=cwd, stdout=subprocess.PIPE, **env) for args in commands]
        try:
            deadline = time.monotonic() + timeout
            done = []
            for proc in procs:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
            return done
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return _WARM.run_side_by_side([list(a) for a in commands], cwd, deepmine_env(**env), timeout)


class _WarmStarter:
    """The client side of `tests/warm_cli.py`: one starter per pytest process, started on
    first use and stopped when the process exits."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lines = None

    def _start(self) -> None:
        import atexit
        import queue
        import threading

        self._proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "warm_cli.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=deepmine_env(),
            cwd=ROOT,
            text=True,
        )
        self._lines = queue.Queue()
        proc, lines = self._proc, self._lines

        def read() -> None:
            for line in proc.stdout:
                lines.put(json.loads(line))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        atexit.register(self.stop)
        assert self._next(120) == {"ready": True}, "the warm CLI starter did not start"

    def _next(self, timeout: float | None):
        import queue

        try:
            answer = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if answer is None:
            raise RuntimeError("the warm CLI starter (tests/warm_cli.py) died")
        return answer

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float):
        import signal
        import tempfile

        if self._proc is None or self._proc.poll() is not None:
            self._start()
        with tempfile.TemporaryDirectory(prefix="warm-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": argv, "cwd": str(cwd), "env": env}
            self._proc.stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}))
            self._proc.stdin.write("\n")
            self._proc.stdin.flush()
            pid = self._next(60)["pid"]
            done = self._next(timeout)
            if done is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self._next(60)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "deepmine", *argv], timeout)
            return subprocess.CompletedProcess(
                [sys.executable, "-m", "deepmine", *argv],
                done["returncode"],
                out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )

    def run_side_by_side(self, commands: list[list[str]], cwd: Path, env: dict, timeout: float):
        import signal
        import tempfile

        if self._proc is None or self._proc.poll() is not None:
            self._start()
        with tempfile.TemporaryDirectory(prefix="warm-cli-") as tmp:
            outputs = [
                (Path(tmp) / f"stdout{i}", Path(tmp) / f"stderr{i}") for i in range(len(commands))
            ]
            batch = [
                {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
                for argv, (out, err) in zip(commands, outputs, strict=True)
            ]
            self._proc.stdin.write(json.dumps({"batch": batch}) + "\n")
            self._proc.stdin.flush()
            pids = self._next(60)["pids"]
            done = self._next(timeout)
            if done is None:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                self._next(60)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "deepmine"], timeout)
            return [
                subprocess.CompletedProcess(
                    [sys.executable, "-m", "deepmine", *argv],
                    code,
                    out.read_text(errors="replace"),
                    err.read_text(errors="replace"),
                )
                for argv, code, (out, err) in zip(
                    commands, done["returncodes"], outputs, strict=True
                )
            ]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


_WARM = _WarmStarter()


def start_cli(*args: str, cwd: Path, stdout=subprocess.DEVNULL, **env: str) -> subprocess.Popen:
    """`python -m deepmine <args>` started in the background (to be signalled mid-run); its
    stderr is kept for the failure message (its stdout too with `stdout=subprocess.PIPE`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "deepmine", *args],
        cwd=cwd,
        env=deepmine_env(**env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


class Sandbox:
    """A temporary working directory, MLflow store and Hydra output folder."""

    def __init__(self, path: Path):
        self.path = path
        self.cwd = path / "cwd"
        self.cwd.mkdir()
        self.logs = path / "logs"
        self.db = path / "store" / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"

    def overrides(self, *extra: str) -> list[str]:
        store = [] if "logger=none" in extra else [f"logger.tracking_uri={self.uri}"]
        return [f"paths.log_dir={self.logs}", *store, *extra]

    def train(self, *overrides: str, fresh: bool = False, **env: str):
        return run_cli("train", *self.overrides(*overrides), cwd=self.cwd, fresh=fresh, **env)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self, experiment: str = "default") -> list:
        if not self.db.exists():
            return []
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def one_recorded_run(tmp_path_factory, name: str, *overrides: str):
    """`(sandbox, process, run)` of one successful `deepmine train` in a fresh sandbox: what a
    module-scoped fixture shares between the tests that read one run's record."""
    box = Sandbox(tmp_path_factory.mktemp(name))
    proc = box.train(*overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = box.runs()
    return box, proc, run


def make_dvc_project(path: Path, with_data: bool) -> Path:
    """A DVC project with this repo's data.dvc; data/ copied from the checkout and committed to
    the project's own DVC cache when `with_data`."""
    path.mkdir(parents=True, exist_ok=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=path, check=True)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=path, check=True)
    shutil.copy2(ROOT / "data.dvc", path / "data.dvc")
    if with_data:
        shutil.copytree(ROOT / "data", path / "data")
        subprocess.run([*dvc, "commit", "-q", "-f", "data.dvc"], cwd=path, check=True)
        shutil.copy2(ROOT / "data.dvc", path / "data.dvc")
    return path


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line a failed command printed last on stderr (must start with 'error: ')."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines, f"no stderr; stdout was:\n{proc.stdout[-2000:]}"
    assert lines[-1].startswith("error: "), proc.stderr[-3000:]
    return lines[-1]
