"""Where a run came from: code version, environment, machine, command line.

Plain data, no MLflow: `run.records` hands it to the tracking package as tags and artifacts.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = (
    "deepmine",
    "torch",
    "lightning",
    "torchmetrics",
    "mlflow",
    "hydra-core",
    "dvc",
    "numpy",
)


@dataclass
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool | None
    diff: str
    status: str


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> GitState:
    """HEAD, whether the tree differs from it, and the diff (tracked files) when it does."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None, None, "", "")
    status = _git(root, "status", "--porcelain") or ""
    diff = (_git(root, "diff", "HEAD", "--binary") or "") if status else ""
    branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    return GitState(commit.strip(), branch, bool(status.strip()), diff, status)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def host() -> dict[str, str]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        # which process ran it: sweep jobs in reused worker processes share a pid
        "pid": str(os.getpid()),
    }


#: `pip freeze` of this process's environment, once known (it cannot change under a running
#: process's imports, and a sweep's jobs share the process)
_pip_freeze: str | None = None


#: `python -m pip`, in a process the kernel kills as soon as the one that started it ends
#: (Linux: PR_SET_PDEATHSIG; it exits if that one has already ended). argv: parent pid, then
#: pip's own.
_PIP_DYING_WITH_PARENT = """\
import os, runpy, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
sys.argv = sys.argv[2:]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


class PipFreeze:
    """`pip freeze --all`, started in the background when a run starts and read when it ends.

    It costs 1-2 s of CPU: at normal priority it took a core from training on a 2-core
    machine (first epochs measured ~7% slower, see BENCHMARKS.md), so it runs at the lowest
    priority (`nice 19`), and only once per process.

    It dies with this process: `cancel()` stops it when the run ends early, and the kernel kills
    it when this process ends before reaching that (SIGTERM's default action before the run
    installed its handlers, an exception raised before `cancel()` is in place, SIGKILL).
    """

    def __init__(self, cache: Path | None = None):
        global _pip_freeze
        self._process = None
        self._cache = cache
        if _pip_freeze is None and cache is not None and cache.is_file():
            _pip_freeze = cache.read_text()
        if _pip_freeze is None:
            nice = shutil.which("nice")
            command = [
                sys.executable,
                "-c",
                _PIP_DYING_WITH_PARENT,
                str(os.getpid()),
                "pip",
                "freeze",
                "--all",
            ]
            self._process = subprocess.Popen(
                [nice, "-n", "19", *command] if nice else command,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )

    def result(self, timeout: float = 120) -> str:
        global _pip_freeze
        if _pip_freeze is None and self._process is not None:
            text, _ = self._process.communicate(timeout=timeout)
            if self._process.returncode == 0:
                _pip_freeze = text
                if self._cache is not None:
                    _write_atomically(self._cache, text)
            return text
        return _pip_freeze or ""

    def cancel(self) -> None:
        """Stop it if the run ended before it was needed."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def start_pip_freeze(cache_dir: Path | None = None, git: GitState | None = None) -> PipFreeze:
    """The environment's `pip freeze`, read from `cache_dir` when this environment was frozen
    before: every run of a test suite or a sweep paid 1-2 s of CPU for the same text."""
    return PipFreeze(_freeze_cache(cache_dir, git) if cache_dir is not None else None)


def _freeze_cache(cache_dir: Path, git: GitState | None) -> Path:
    """The cache file of this environment's freeze. Its key is all the output depends on: the
    interpreter, the folders holding installed distributions (installing, upgrading or removing
    one adds or removes a *.dist-info folder there, which changes the folder's mtime) and the
    commit of this checkout (an editable install from git is listed with its commit)."""
    import hashlib
    import site

    key = hashlib.sha256(sys.executable.encode())
    for folder in sorted({*site.getsitepackages(), site.getusersitepackages()}):
        if Path(folder).is_dir():
            key.update(f"{folder}:{Path(folder).stat().st_mtime_ns}".encode())
    key.update(f"{git.commit if git else ''}".encode())
    return Path(cache_dir) / f"pip-freeze-{key.hexdigest()[:20]}.txt"


def _write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all (parallel runs may write the same cache file)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as file:
            file.write(text)
        os.replace(file.name, path)
    except OSError:
        pass  # a cache that cannot be written only costs the next run its 1-2 s


def source_tags(git: GitState) -> dict[str, str]:
    """Tags every deepmine run carries (single runs and sweep parents): code, machine, versions."""
    import getpass

    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
        "deepmine.argv": " ".join(sys.argv),
        "deepmine.git.commit": git.commit or "unknown",
        "deepmine.git.dirty": "unknown" if git.dirty is None else str(git.dirty).lower(),
        **{f"deepmine.host.{k}": v for k, v in host().items()},
        **{f"deepmine.version.{k}": v for k, v in package_versions().items()},
    }
    if git.commit:
        tags["mlflow.source.git.commit"] = git.commit
    if git.branch:
        tags["mlflow.source.git.branch"] = git.branch
    return tags
