"""Where a run came from: code version, environment, machine, command line.

Plain data, no MLflow: `train.py` hands it to the tracking package as tags and artifacts.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
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


def start_pip_freeze() -> subprocess.Popen:
    """Start `pip freeze` in the background: it takes about a second, training need not wait."""
    return subprocess.Popen(
        [sys.executable, "-m", "pip", "freeze", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


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
