"""A network namespace whose only interface is loopback, for the clusters the tests start.

SLURM 22.05 and Ray 2.60 bind the wildcard address (Ray also rewrites 127.0.0.1 into the host's
outward address), so their test clusters run in a namespace of their own: nothing in it can
reach or be reached from any other address. The namespace lives as long as its holder process
(`start_holder`); a command runs inside it through `enter(holder)`; `members(holder)` finds
every process in it (daemons, jobs and whatever re-parented), for the checks that nothing is
left. Needs root (`unshare --net`), as CI has.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import psutil
import pytest

#: the holder: brings `lo` up (SIOCSIFFLAGS: UP, LOOPBACK, RUNNING), says so, and waits
HOLDER = r"""
import fcntl, socket, struct, time
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x8 | 0x40))
print("up", flush=True)
time.sleep(1e9)
"""


def start_holder() -> subprocess.Popen:
    """A new namespace with `lo` up, held by the returned process (its own session)."""
    holder = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-c", HOLDER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if holder.stdout.readline().strip() != "up":
        holder.wait(timeout=30)
        pytest.fail(f"no network namespace for the cluster (needs root): {holder.stderr.read()}")
    return holder


def enter(holder: subprocess.Popen) -> list[str]:
    """The prefix that runs a command inside `holder`'s namespace."""
    return ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]


def members(holder: subprocess.Popen) -> list[psutil.Process]:
    """Every process in `holder`'s namespace, the holder included."""
    try:
        target = os.readlink(f"/proc/{holder.pid}/ns/net")
    except OSError:
        return []
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.readlink(f"/proc/{process.pid}/ns/net") == target:
                found.append(process)
    return found
