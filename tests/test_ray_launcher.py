"""launcher=ray on a real two-node Ray cluster (`ray start --head` + `ray start --address`),
confined to loopback, with a real sweep recorded in a real SQLite store.

Why a network namespace: Ray 2.60 cannot be kept on loopback by flags. `ray start` replaces
`--node-ip-address=127.0.0.1` and `--address=127.0.0.1:...` with the address this machine
reaches the internet from (`ray._private.services.resolve_ip_for_localhost`), and its servers
(GCS, raylets, workers, agents, metrics) bind to every interface unless the node's address is
127.0.0.1. So the cluster gets a network namespace whose only interface is loopback
(`unshare --net`; the suite runs as root): there Ray finds no other address, every server binds
127.0.0.1, nothing can reach the network, and no port can clash with the host's. The sweep's
driver (`deepmine train -m`) joins the namespace with `nsenter`, as a user's driver runs on
the head node. psutil then checks, from inside the namespace (a process's sockets are only
visible there), that every process of both nodes listens and connects on loopback only.

Each node is a `ray start --block` in its own session, stopped by pid and process group (never
`ray stop`, which matches processes machine-wide by name); teardown asserts that no process of
either session, or any process ever seen in them, is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import netns
import psutil
import pytest
import yaml

from conftest import deepmine_env, one_line_error

pytestmark = pytest.mark.cluster

RAY = Path(sys.executable).with_name("ray")
PARENT = "mlflow.parentRunId"
NODE_TAG = "deepmine.ray.node_id"
#: the namespace is new and empty: Ray's default port is free there whatever the host runs
PORT = 6379
ADDRESS = f"127.0.0.1:{PORT}"
#: the loopback addresses a socket may show (127.0.0.1 on a dual-stack socket is ::ffff:...)
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30

#: in the namespace: wait for the head, join as a driver, wait for `want` nodes, print their ids
PROBE = r"""
import json, socket, sys, time
address, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
host, port = address.rsplit(":", 1)
while True:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the head never listened")
        time.sleep(0.2)
import ray
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
while True:
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps(alive))
"""

#: in the namespace: the inet sockets of the given processes
SOCKETS = r"""
import json, sys, psutil
rows = []
for pid in json.loads(sys.argv[1]):
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.NoSuchProcess:
        continue
    rows.append([pid, [[c.status, c.laddr.ip, c.raddr.ip if c.raddr else None] for c in conns]])
print(json.dumps(rows))
"""


@dataclass
class Cluster:
    """The namespace, the two `ray start` processes, and every process seen in their trees."""

    tmp: Path
    holder: subprocess.Popen
    nodes: list[subprocess.Popen] = field(default_factory=list)
    node_ids: set[str] = field(default_factory=set)
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    cold_start_s: float = 0.0

    @property
    def enter(self) -> list[str]:
        return netns.enter(self.holder)

    def sessions(self) -> set[int]:
        return {self.holder.pid, *(node.pid for node in self.nodes)}

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster: the sessions' members (which finds processes
        that re-parented) and the descendants of each `ray start`; remembered in `seen`."""
        found: dict[int, psutil.Process] = {}
        sessions = self.sessions()
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in sessions and alive(proc):
                    found[proc.pid] = proc
            except (psutil.Error, ProcessLookupError):
                continue
        for node in self.nodes:
            try:
                for proc in [psutil.Process(node.pid), *psutil.Process(node.pid).children(True)]:
                    if alive(proc):
                        found[proc.pid] = proc
            except psutil.Error:
                continue
        for pid, proc in found.items():
            if pid not in self.seen:
                self.seen[pid] = proc
                with contextlib.suppress(psutil.Error):
                    self.names[pid] = proc.name()
        return list(found.values())

    def sockets(self) -> dict[int, list]:
        pids = [p.pid for p in self.processes()]
        out = subprocess.run(
            [*self.enter, sys.executable, "-c", SOCKETS, json.dumps(pids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return {pid: conns for pid, conns in json.loads(out)}

    def deepmine(self, *args: str, cwd: Path, timeout: float = 300, **env: str):
        """`python -m deepmine <args>` in the namespace: a driver on the head node."""
        return subprocess.run(
            [*self.enter, sys.executable, "-m", "deepmine", *args],
            cwd=cwd,
            env=deepmine_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.tmp.glob("*.log"))


def start_node(cluster: Cluster, name: str, *flags: str) -> None:
    # the nodes' own store must never be used: jobs write where the sweep's environment says
    env = deepmine_env(
        RAY_USAGE_STATS_ENABLED="0", MLFLOW_TRACKING_URI=f"sqlite:///{cluster.tmp}/decoy.db"
    )
    with open(cluster.tmp / f"{name}.log", "w") as log:
        cluster.nodes.append(
            subprocess.Popen(
                [*cluster.enter, str(RAY), "start", *flags, "--block"],
                cwd=cluster.tmp / "node-cwd",
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )


def common_flags() -> list[str]:
    # one CPU per node (one job at a time), a small object store on a shared machine
    return [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]


def stop(cluster: Cluster) -> None:
    """SIGTERM to each `ray start` (it stops its node's processes), SIGKILL to what is left
    of each session after STOP_TIMEOUT_S, then the namespace's holder."""
    for node in reversed(cluster.nodes):  # the worker node first, while the head still answers
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and {p.pid for p in cluster.processes()} - {
        cluster.holder.pid
    }:
        time.sleep(0.5)
    for pgid in [node.pid for node in cluster.nodes] + [cluster.holder.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for proc in [*cluster.nodes, cluster.holder]:
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail('Ray is not installed: run `pip install -e ".[ray]"`')
    holder = netns.start_holder()
    # short: Ray's Unix sockets live under it (a socket path must stay under 107 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="dm-ray-", dir="/tmp"))
    (tmp / "node-cwd").mkdir()
    cluster = Cluster(tmp, holder)
    try:
        started = time.monotonic()
        head = [f"--port={PORT}", "--include-dashboard=false", f"--temp-dir={tmp / 'ray'}"]
        start_node(cluster, "head", "--head", *head, *common_flags())
        # one log monitor per machine, as on a real cluster: two would both forward every
        # worker's output to the driver, since the nodes share the head's log folder here
        node = [f"--address={ADDRESS}", "--include-log-monitor=false"]
        start_node(cluster, "node", *node, *common_flags())
        probe = subprocess.run(
            [*cluster.enter, sys.executable, "-c", PROBE, ADDRESS, "2", str(START_TIMEOUT_S)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            env=deepmine_env(RAY_USAGE_STATS_ENABLED="0"),
        )
        cluster.cold_start_s = time.monotonic() - started
        assert probe.returncode == 0, probe.stderr[-3000:] + cluster.logs()
        cluster.node_ids = set(json.loads(probe.stdout.strip().splitlines()[-1]))
        assert len(cluster.node_ids) == 2, cluster.logs()
        print(f"two-node Ray cluster up in {cluster.cold_start_s:.1f} s")
        yield cluster
    finally:
        stop(cluster)
        cluster.processes()  # a last look for anything that joined the sessions late
        left = [p for p in cluster.seen.values() if alive(p)]
        shutil.rmtree(tmp, ignore_errors=True)
    assert len(cluster.seen) > 10  # both trees were seen, not an empty list
    assert left == [], f"cluster processes left after the teardown: {left}"


def alive(proc: psutil.Process) -> bool:
    try:  # is_running() also tells a reused pid from the process seen
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_on_loopback(cluster: Cluster) -> None:
    """Every socket of every process of both nodes: bound and connected to loopback only."""
    sockets = cluster.sockets()
    names = cluster.names
    off = [
        (pid, names.get(pid), *conn)
        for pid, conns in sockets.items()
        for conn in conns
        if conn[1] not in LOOPBACK or conn[2] not in (None, *LOOPBACK)
    ]
    assert off == [], f"sockets off loopback (pid, name, status, local, remote): {off}"
    # the check saw what it is about: both raylets, the GCS and the agents, listening
    listening = sorted(
        names.get(pid, "?")
        for pid, conns in sockets.items()
        if any(c[0] == "LISTEN" for c in conns)
    )
    assert listening.count("raylet") == 2 and "gcs_server" in listening, listening
    assert listening.count("ray::DashboardAgent") == 2, listening


def test_the_cluster_listens_on_loopback_only(cluster):
    assert_on_loopback(cluster)


def split(runs):
    parents = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    return parents, children


def test_a_sweep_runs_its_jobs_on_both_nodes(cluster, sandbox):
    started = time.monotonic()
    proc = cluster.deepmine(
        "train",
        "-m",
        "launcher=ray",
        f"hydra.launcher.address={ADDRESS}",
        "debug=fast",
        "data=digits",
        "seed=0,1,0,1",
        f"paths.log_dir={sandbox.logs}",
        cwd=sandbox.cwd,
        # the store comes from the sweep's environment, which the jobs must get too
        MLFLOW_TRACKING_URI=sandbox.uri,
    )
    print(f"4-job sweep on the cluster: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    (parent,), children = split(sandbox.runs())
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["deepmine.sweep.launcher"].endswith("ray_launcher.RayLauncher")
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["deepmine.sweep.job"]) for c in children) == [0, 1, 2, 3]
    keys = {"train/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"}
    assert all(keys <= set(c.data.metrics) for c in children)
    # one CPU per node and per job: two jobs at once, one on each node
    assert {c.data.tags[NODE_TAG] for c in children} == cluster.node_ids
    # each job ran in the sweep's context, not in its node's
    assert not (cluster.tmp / "decoy.db").exists()
    assert {c.data.tags["deepmine.argv"] for c in children} == {parent.data.tags["deepmine.argv"]}
    sweep_dir = Path(parent.data.tags["deepmine.sweep.dir"])
    for num in range(4):
        hydra_cfg = yaml.safe_load((sweep_dir / str(num) / ".hydra" / "hydra.yaml").read_text())
        assert hydra_cfg["hydra"]["runtime"]["cwd"] == str(sandbox.cwd)
    # Ray reused its workers, and a job in a reused worker got what a fresh one gets
    assert len({c.data.tags["deepmine.host.pid"] for c in children}) < 4
    by_seed: dict[str, set] = {}
    for child in children:
        by_seed.setdefault(child.data.params["seed"], set()).add(child.data.metrics["test/acc"])
    assert all(len(values) == 1 for values in by_seed.values()), by_seed
    # the workers that ran the jobs are processes of the cluster too
    assert_on_loopback(cluster)


def test_jobs_no_node_can_hold_stop_the_sweep_before_it_starts(cluster, sandbox):
    proc = cluster.deepmine(
        "train",
        "-m",
        "launcher=ray",
        f"hydra.launcher.address={ADDRESS}",
        "hydra.launcher.num_cpus=2",
        "hydra.launcher.num_gpus=1",
        "debug=fast",
        "data=digits",
        "seed=0,1",
        f"paths.log_dir={sandbox.logs}",
        cwd=sandbox.cwd,
        MLFLOW_TRACKING_URI=sandbox.uri,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert "has the 2 CPU and 1 GPU that each job asks for" in line
    assert "(its nodes: 1 CPU 0 GPU, 1 CPU 0 GPU)" in line
    assert (
        "Fix: ask for what a node has, e.g. hydra.launcher.num_cpus=1 hydra.launcher.num_gpus=0"
        in line
    )
    assert sandbox.runs() == []


@pytest.mark.parametrize("address", [None, "127.0.0.1:6380"])
def test_a_missing_or_wrong_address_is_one_line_and_no_run(cluster, sandbox, address):
    # in the cluster's namespace nothing listens on 6380: the connection is refused at once
    given = [] if address is None else [f"hydra.launcher.address={address}"]
    started = time.monotonic()
    proc = cluster.deepmine(
        "train",
        "-m",
        *sandbox.overrides("launcher=ray", *given, "debug=fast", "data=digits", "seed=0,1"),
        cwd=sandbox.cwd,
        timeout=60,
    )
    assert time.monotonic() - started < 30  # no waiting on Ray's own connect retries
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    says = "(hydra.launcher.address is null)" if address is None else "no Ray cluster answers at"
    assert says in line
    assert line.endswith(
        "Fix: pass the address that `ray start --head` printed on the head node, "
        "e.g. hydra.launcher.address=10.0.0.5:6379"
    )
    assert sandbox.runs() == []  # none left RUNNING: none opened


def test_ctrl_c_stops_the_jobs_and_closes_their_runs_killed(cluster, sandbox):
    """Ray kills the tasks of a driver that exits: the sweep cancels them first, so a running
    job closes its run KILLED (as in any other launcher) and a queued one never starts."""
    long_jobs = ("trainer.max_epochs=1000", "callbacks.early_stopping=null")
    sweep = subprocess.Popen(
        [
            *cluster.enter,
            sys.executable,
            "-m",
            "deepmine",
            "train",
            "-m",
            "launcher=ray",
            f"hydra.launcher.address={ADDRESS}",
            "data=digits",
            "debug=fast",
            *long_jobs,
            "callbacks.progress_bar=null",
            "seed=0,1,2",
            f"paths.log_dir={sandbox.logs}",
        ],
        cwd=sandbox.cwd,
        env=deepmine_env(MLFLOW_TRACKING_URI=sandbox.uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    try:
        while True:  # a job runs on each node: two children are open
            children = split(sandbox.runs())[1]
            if [c.info.status for c in children] == ["RUNNING", "RUNNING"]:
                break
            assert sweep.poll() is None, sweep.stderr.read()[-3000:]
            assert time.monotonic() - started < 180, "the jobs never started training"
            time.sleep(0.5)
        sweep.send_signal(signal.SIGINT)
        assert sweep.wait(timeout=90) == 130, sweep.stderr.read()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    print(f"Ctrl-C test: {time.monotonic() - started:.1f} s")
    (parent,), children = split(sandbox.runs())
    assert parent.info.status == "KILLED"
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"]
    assert sorted(int(c.data.tags["deepmine.sweep.job"]) for c in children) == [0, 1]
