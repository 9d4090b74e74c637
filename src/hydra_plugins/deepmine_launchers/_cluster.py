"""Joining the Ray cluster a sweep runs on, with the mistakes a user can fix caught first.

Each is caught while the sweep sets up, before its MLflow parent run exists: a missing or
unreachable address (Ray itself would retry for minutes before giving up), and jobs that ask for
more CPUs or GPUs than any node has (Ray would queue them forever, warning in its own logs).
"""

from __future__ import annotations

import socket

from deepmine.errors import DeepmineError, first_line

ADDRESS_FIX = (
    "pass the address that `ray start --head` printed on the head node, "
    "e.g. hydra.launcher.address=10.0.0.5:6379"
)
#: seconds to wait for the head to accept a connection before calling the address wrong
CONNECT_TIMEOUT_S = 5


def join(address: str | None, num_cpus: float, num_gpus: float) -> None:
    ray = import_ray()
    if not address:
        raise DeepmineError(
            "launcher=ray needs the address of a running Ray cluster "
            "(hydra.launcher.address is null)",
            ADDRESS_FIX,
        )
    check_reachable(address)
    if ray.is_initialized():  # a second sweep in one process joins its own cluster
        ray.shutdown()
    try:
        ray.init(address=address)
    except Exception as exc:
        raise DeepmineError(
            f"cannot join the Ray cluster at {address}: {first_line(exc)}",
            "start the sweep on a node of that cluster (its head, or a machine joined with "
            "`ray start --address=<head ip>:<port>`) that has the cluster's Ray and Python",
        ) from None
    check_fits(ray, address, num_cpus, num_gpus)


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeepmineError(
            "launcher=ray runs the jobs on Ray, which is not installed here",
            'run `pip install -e ".[ray]"` in the project',
        ) from None
    return ray


def check_reachable(address: str) -> None:
    """A `host:port` (or `ray://host:port`) must accept a TCP connection; `auto` is left to
    Ray (the cluster `ray start` started on this machine)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit():
        raise DeepmineError(f"hydra.launcher.address={address} is not <host>:<port>", ADDRESS_FIX)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DeepmineError(
            f"no Ray cluster answers at {address} ({reason})", ADDRESS_FIX
        ) from None


def check_fits(ray, address: str, num_cpus: float, num_gpus: float) -> None:
    """Some node must hold one job's CPUs and GPUs, or the jobs would never start."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus_gpus = [(r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in nodes]
    if any(cpus >= num_cpus and gpus >= num_gpus for cpus, gpus in cpus_gpus):
        return
    have = ", ".join(f"{cpus:g} CPU {gpus:g} GPU" for cpus, gpus in cpus_gpus) or "none alive"
    cpus, gpus = max(cpus_gpus, default=(0.0, 0.0), key=lambda cg: (cg[1], cg[0]))
    raise DeepmineError(
        f"no node of the Ray cluster at {address} has the {num_cpus:g} CPU and {num_gpus:g} GPU "
        f"that each job asks for (its nodes: {have})",
        f"ask for what a node has, e.g. hydra.launcher.num_cpus={cpus:g} "
        f"hydra.launcher.num_gpus={gpus:g}, or add a node that has them",
    )
