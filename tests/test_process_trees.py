"""Whatever stops `deepmine train` (SIGTERM, Ctrl-C) stops every process it started: the
background `pip freeze`, the DDP ranks, submitit's job controller and its jobs. No process of
the command's tree outlives it, and its MLflow run is not left RUNNING.

Each test starts the real command in a session of its own, records every descendant it sees
while it runs, signals the command alone (as `kill <pid>` would; a terminal's Ctrl-C would
reach the whole foreground group, which is the easy case), and then checks the recorded
descendants and every process still in that session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import deepmine_env

#: seconds a process of the tree gets to go away after the command exited
GRACE_S = 15.0
#: a run long enough to be signalled mid-training (early stopping off), short otherwise
LONG = (
    "data=digits",
    "trainer.max_epochs=1000",
    "callbacks.early_stopping=null",
    "callbacks.progress_bar=null",
)


class Tree:
    """`deepmine <args>` started in a session of its own, and every descendant seen so far."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deepmine", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group and session: stopped whole below
        )
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}

    def look(self) -> list[psutil.Process]:
        """Record the descendants running now."""
        with contextlib.suppress(psutil.Error):
            for child in self.root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault((child.pid, child.create_time()), child)
        return list(self.seen.values())

    def wait_for(self, what: str, found: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.look()
            if found():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}) before {what}: {self.stderr()}")
            time.sleep(0.05)
        pytest.fail(f"never saw {what} within {timeout} s")

    def named(self, *words: str) -> list[psutil.Process]:
        return [p for p in self.seen.values() if all(w in _cmdline(p) for w in words)]

    def signal_and_wait(self, sig: int, timeout: float = 120) -> int:
        self.look()
        self.proc.send_signal(sig)  # the command alone, as `kill <pid>` would
        deadline = time.time() + timeout
        while self.proc.poll() is None and time.time() < deadline:
            self.look()  # a process started while stopping counts too
            time.sleep(0.05)
        try:
            return self.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout} s after signal {sig}: {self.describe()}")

    def survivors(self, grace_s: float = GRACE_S) -> list[str]:
        """Processes of the tree still alive `grace_s` after the command exited: every
        descendant seen, and anything else left in the command's session."""
        deadline = time.time() + grace_s
        while True:
            alive = [p for p in self._members() if _alive(p)]
            if not alive or time.time() > deadline:
                return [f"{p.pid} {_cmdline(p)[:120]}" for p in alive]
            time.sleep(0.2)

    def _members(self) -> list[psutil.Process]:
        members = dict(self.seen)
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if process.pid != os.getpid() and os.getsid(process.pid) == self.proc.pid:
                    members.setdefault((process.pid, process.create_time()), process)
        return list(members.values())

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return (self.proc.stderr.read() or "")[-3000:]

    def describe(self) -> str:
        return "; ".join(f"{p.pid} {_cmdline(p)[:80]}" for p in self._members() if _alive(p))

    def stop(self) -> None:
        """Never leave anything behind, even when the test failed."""
        for process in [*self._members(), self.root]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self.proc.stderr.close()


@contextlib.contextmanager
def started(sandbox, *args: str, env: dict[str, str] | None = None):
    tree = Tree(list(args), sandbox.cwd, env or deepmine_env())
    try:
        yield tree
    finally:
        tree.stop()


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return "?"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _not_running(sandbox) -> None:
    """Every run the command opened was closed (KILLED or FAILED), none left RUNNING."""
    runs = sandbox.runs()
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert all(s in ("KILLED", "FAILED") for s in statuses.values()), statuses


def _training(sandbox, pattern: str) -> Callable[[], bool]:
    """True once an epoch's checkpoint exists: the run is open and training."""
    return lambda: any(sandbox.logs.glob(pattern))


# --- pip freeze ---------------------------------------------------------------------------------


def _stuck_pip_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which pip freeze blocks until it is killed: its config file is a FIFO
    nobody writes to, and pip opens it first thing. The command is then stopped while pip still
    runs, however fast pip would be on this machine."""
    fifo = tmp_path / "pip.conf"
    os.mkfifo(fifo)
    return deepmine_env(PIP_CONFIG_FILE=str(fifo))


@pytest.mark.parametrize(
    ("sig", "when"),
    [
        # the other two pairings behave the same (measured); these cover both signals and
        # both moments, before the run's handlers are installed and during training
        (signal.SIGTERM, "pip started"),
        (signal.SIGINT, "training"),
    ],
)
def test_no_pip_freeze_outlives_a_stopped_run(sandbox, tmp_path, sig, when):
    # a cache of its own: a cached freeze (deepmine.provenance.lineage) starts no pip at all
    args = ["train", *sandbox.overrides(*LONG, f"paths.cache_dir={tmp_path / 'cache'}")]
    with started(sandbox, *args, env=_stuck_pip_env(tmp_path)) as tree:
        tree.wait_for("pip freeze", lambda: bool(tree.named("pip", "freeze")))
        if when == "training":
            tree.wait_for("training", _training(sandbox, "train/runs/*/*/checkpoints/epoch*.ckpt"))
        pip = tree.named("pip", "freeze")
        assert all(_alive(p) for p in pip), "pip freeze should still be running"
        code = tree.signal_and_wait(sig)
        assert code in (130, -signal.SIGTERM), tree.stderr()
        assert not tree.survivors(), f"outlived deepmine train ({when}): {tree.describe()}"
    _not_running(sandbox)


def test_a_finished_run_leaves_no_pip_freeze(sandbox, tmp_path):
    own_cache = f"paths.cache_dir={tmp_path / 'cache'}"
    with started(
        sandbox, "train", *sandbox.overrides("data=digits", "debug=fast", own_cache)
    ) as tree:
        tree.wait_for("pip freeze", lambda: bool(tree.named("pip", "freeze")))
        assert tree.proc.wait(timeout=240) == 0, tree.stderr()
        assert not tree.survivors(grace_s=1), tree.describe()
    (run,) = sandbox.runs()
    assert run.info.status == "FINISHED"


# --- DDP ranks ----------------------------------------------------------------------------------


# the project's trainer=ddp config, or the strategy named by its string on any trainer config
# (which deepmine maps to its own DDPStrategy: Lightning's would hang rank 0 on SIGTERM)
DDP_AS = {
    "config": ("trainer=ddp",),
    "string": ("+trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"),
}


@pytest.mark.parametrize("ddp", sorted(DDP_AS))
@pytest.mark.parametrize("when", ["training"])  # "rank started" behaves the same (measured)
def test_no_ddp_rank_outlives_sigterm(sandbox, when, ddp):
    # the ranks get the resolved config, secrets in clear, on stdin: no file holds it
    secret = f"s3cr3t-{os.getpid()}-{time.time_ns()}"
    args = ["train", *sandbox.overrides(*LONG, *DDP_AS[ddp], f"+db.password={secret}")]
    with started(sandbox, *args) as tree:
        tree.wait_for("rank 1", lambda: bool(tree.named("deepmine.run.rank")))
        if when == "training":
            tree.wait_for("training", _training(sandbox, "train/runs/*/*/checkpoints/epoch*.ckpt"))
        start = time.time()
        code = tree.signal_and_wait(signal.SIGTERM)
        took = time.time() - start
        assert code in (130, -signal.SIGTERM), tree.stderr()
        assert not tree.survivors(), f"outlived deepmine train ({when}): {tree.describe()}"
        assert took < 20, f"took {took:.0f} s to stop after SIGTERM"
    _not_running(sandbox)
    assert list(sandbox.logs.rglob("ddp/rank1.log"))
    holding = [
        p for p in sandbox.logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert holding == []


# --- submitit (local executor) ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT behaves the same (measured)
def test_no_submitit_job_outlives_the_sweep(sandbox, sig):
    args = ["train", "-m", *sandbox.overrides(*LONG, "launcher=submitit_local", "seed=0")]
    with started(sandbox, *args) as tree:
        tree.wait_for("the job", lambda: bool(tree.named("submitit.core._submit")))
        tree.wait_for("training", _training(sandbox, "train/multiruns/*/*/*/checkpoints/epoch*"))
        code = tree.signal_and_wait(sig)
        assert code == 130, tree.stderr()
        assert not tree.survivors(), f"outlived deepmine train -m: {tree.describe()}"
    _not_running(sandbox)
