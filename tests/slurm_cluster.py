"""A real two-node SLURM cluster on this machine, for the tests of `launcher=slurm`.

Debian's SLURM 22.05 runs without systemd or cgroups (`proctrack/linuxproc`, `task/none`) and
lets several slurmd share a host, so the cluster is one slurmctld and two slurmd (`n1`, `n2`,
both at NodeAddr 127.0.0.1, each on its own port) with munged on its own socket, and accounting
as a real site has it: slurmdbd on a throwaway MariaDB (`mariadb-install-db`, about 3 s), so
`sacct` answers, which is how submitit learns the state of a job that ended without writing its
result (killed, node lost). Every file lives in one temporary folder.

SLURM's daemons bind the wildcard address (22.05 has no option to bind one address) and srun
opens listeners of its own, so the whole cluster lives in a network namespace of its own whose
only interface is loopback: every daemon, job and client command (`sbatch`, `squeue`, the
`deepmine train -m` that submits) runs inside it (`nsenter --net`), and nothing in it can reach
or be reached from any other address. `loopback_only()` checks that from the namespace itself.

Stopping: jobs first (scancel, then wait for an empty queue: slurmd leaves running jobs behind
when it stops), then each daemon by pid, then the namespace's holder; `leftovers()` lists any
process still in the namespace, which the fixture asserts is none.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import netns
import psutil
import pytest

INSTALL = (
    "`apt-get install --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge "
    "mariadb-server` (or `make test`, which does)"
)
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "mariadb-install-db",
           "mungekey", "nsenter", "unshare")  # fmt: skip
NODES = ("n1", "n2")


def _require_binaries() -> None:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    missing += [name for name in ("sbatch", "squeue", "scontrol", "scancel", "sacct",
                                  "sacctmgr", "ss", "ip")
                if shutil.which(name) is None]  # fmt: skip
    if missing:
        pytest.fail(f"SLURM test cluster: {', '.join(missing)} not installed: {INSTALL}",
                    pytrace=False)  # fmt: skip


def _free_ports(count: int, consecutive: bool = False) -> list[int]:
    """Free TCP ports on loopback (checked here; the namespace has nothing else listening)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        ports = [first + i for i in range(count)] if consecutive else [first]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        if not consecutive and count > 1:
            return [first, *_free_ports(count - 1)]
        return ports
    raise RuntimeError("no free ports")


CONF = """\
# a throwaway two-node cluster (tests/slurm_cluster.py)
ClusterName=deepmine
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket.2
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# both nodes share this host's cores: each says it has 2
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
# the munge socket for slurmdbd connections (its default is the system's)
AccountingStoragePass={folder}/munge/munge.socket.2
JobCompType=jobcomp/none
MessageTimeout=10
KillWait=5
InactiveLimit=0
MinJobAge=600
NodeName=n[1-2] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{node_ports}] {node_size}
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
"""


DBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket.2
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={db_password}
StorageLoc=slurm_acct_db
PidFile={folder}/slurmdbd.pid
LogFile={folder}/slurmdbd.log
"""


@dataclass
class SlurmCluster:
    folder: Path
    holder: subprocess.Popen  # holds the network namespace open
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    cold_start_s: float = 0.0

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def inside(self, *command: str) -> list[str]:
        """`command` run inside the cluster's network namespace."""
        return [*netns.enter(self.holder), *command]

    def env(self, base: dict | None = None) -> dict[str, str]:
        return {**(base if base is not None else os.environ), "SLURM_CONF": str(self.conf)}

    def client(self, *command: str, check: bool = True) -> str:
        """A SLURM client command (squeue, scontrol, ...) against this cluster."""
        proc = subprocess.run(
            self.inside(*command), capture_output=True, text=True, timeout=60, env=self.env()
        )
        if check:
            assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr or proc.stdout}"
        return proc.stdout

    def queue(self) -> dict[str, str]:
        """job id -> state, for every job SLURM still lists as pending or running."""
        out = self.client("squeue", "--noheader", "--format=%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_empty(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.queue():
            assert time.monotonic() < deadline, f"jobs still queued: {self.queue()}"
            time.sleep(0.5)

    def idle_nodes(self) -> int:
        out = self.client("sinfo", "--noheader", "--format=%T %D", check=False)
        return sum(int(n) for state, n in (line.split() for line in out.splitlines())
                   if state == "idle")  # fmt: skip

    def namespace_members(self) -> list[psutil.Process]:
        """Every process in the cluster's network namespace: daemons, jobs, job steps, clients."""
        return netns.members(self.holder)

    def loopback_only(self) -> tuple[list[str], list[str]]:
        """(the namespace's interface addresses, every socket's local and peer address):
        what the tests check is loopback only."""
        addresses = self.client("ip", "-o", "addr").split("\n")
        interfaces = [" ".join(line.split()[1:4]) for line in addresses if line.strip()]
        sockets = self.client("ss", "--numeric", "--all", "--tcp", "--udp", "--no-header")
        endpoints = []
        for line in sockets.splitlines():
            fields = line.split()
            if len(fields) >= 6:
                endpoints += fields[4:6]
        return interfaces, endpoints

    def logs(self) -> str:
        text = []
        for log in sorted([*self.folder.glob("*.log"), *self.folder.glob("*.out")]):
            text.append(f"--- {log.name}\n{log.read_text()[-2000:]}")
        return "\n".join(text)


def start_cluster() -> SlurmCluster:
    _require_binaries()
    # short: the munge socket path must fit a Unix socket address (107 bytes)
    folder = Path(tempfile.mkdtemp(prefix="deepmine-slurm-"))
    folder.chmod(0o755)  # munged insists that everyone can reach its socket
    started = time.monotonic()
    cluster = SlurmCluster(folder, netns.start_holder())
    try:
        # SLURM binds its listeners through getaddrinfo(AI_ADDRCONFIG), which answers nothing
        # where the only IPv4 address is 127.0.0.1; glibc counts any other, so a second
        # loopback address (127.0.0.0/8 never leaves the host) makes it answer
        subprocess.run(
            cluster.inside("ip", "addr", "add", "127.0.0.2/8", "dev", "lo"), check=True, timeout=30
        )
        (folder / "munge").mkdir()
        (folder / "munge").chmod(0o755)
        for node in NODES:
            (folder / f"spool-{node}").mkdir()
        (folder / "state").mkdir()
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={folder / 'munge' / 'munge.key'}"],
            check=True,
            timeout=30,
        )
        ctl_port, dbd_port, db_port = _free_ports(3)
        node_port = _free_ports(2, consecutive=True)[0]
        db_password = secrets.token_hex(8)
        host = socket.gethostname()
        cluster.conf.write_text(
            CONF.format(
                host=host,
                folder=folder,
                ctl_port=ctl_port,
                dbd_port=dbd_port,
                node_ports=f"{node_port}-{node_port + 1}",
                node_size="CPUs=2 RealMemory=4000 State=UNKNOWN",
            )
        )
        munge = folder / "munge"
        _start(cluster, "munged", [
            "munged", "--foreground", f"--socket={munge / 'munge.socket.2'}",
            f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={folder / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
        ])  # fmt: skip
        deadline = time.monotonic() + 30
        while not (munge / "munge.socket.2").exists():
            assert cluster.daemons["munged"].poll() is None, cluster.logs()
            assert time.monotonic() < deadline, "munged made no socket\n" + cluster.logs()
            time.sleep(0.05)
        _start_accounting(cluster, host, dbd_port, db_port, db_password)
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)])
        for node in NODES:
            _start(cluster, node, ["slurmd", "-D", "-f", str(cluster.conf), "-N", node])
        deadline = time.monotonic() + 60
        while cluster.idle_nodes() < len(NODES):
            for name, daemon in cluster.daemons.items():
                assert daemon.poll() is None, f"{name} exited\n{cluster.logs()}"
            assert time.monotonic() < deadline, "nodes not idle after 60 s\n" + cluster.logs()
            time.sleep(0.1)
        cluster.cold_start_s = time.monotonic() - started
        return cluster
    except BaseException:
        stop_cluster(cluster)
        raise


def _start_accounting(
    cluster: SlurmCluster, host: str, dbd_port: int, db_port: int, db_password: str
) -> None:
    """MariaDB on loopback with a `slurm` user, slurmdbd on it, and the cluster registered."""
    folder = cluster.folder
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={folder / 'db'}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    init = folder / "init.sql"
    init.write_text(
        f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
    )
    _start(cluster, "mariadbd", [
        "mariadbd", "--no-defaults", f"--datadir={folder / 'db'}", "--user=root",
        "--bind-address=127.0.0.1", f"--port={db_port}", f"--socket={folder / 'mysqld.sock'}",
        f"--pid-file={folder / 'mysqld.pid'}", f"--init-file={init}", "--skip-log-bin",
        "--innodb-buffer-pool-size=32M", f"--log-error={folder / 'mariadb.log'}",
    ])  # fmt: skip
    _wait_listening(cluster, "mariadbd", db_port)
    dbd_conf = folder / "slurmdbd.conf"  # read from SLURM_CONF's folder; slurmdbd wants 0600
    dbd_conf.write_text(
        DBD_CONF.format(
            folder=folder, host=host, dbd_port=dbd_port, db_port=db_port, db_password=db_password
        )
    )
    dbd_conf.chmod(0o600)
    _start(cluster, "slurmdbd", ["slurmdbd", "-D"])
    _wait_listening(cluster, "slurmdbd", dbd_port)
    cluster.client("sacctmgr", "--immediate", "add", "cluster", "deepmine")


def _wait_listening(cluster: SlurmCluster, name: str, port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s

    def listening() -> bool:
        lines = cluster.client("ss", "-ltnH").splitlines()
        return any(line.split()[3].endswith(f":{port}") for line in lines if line.strip())

    while not listening():
        assert cluster.daemons[name].poll() is None, f"{name} exited\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"{name} not listening\n{cluster.logs()}"
        time.sleep(0.05)


def _start(cluster: SlurmCluster, name: str, command: list[str]) -> None:
    log = (cluster.folder / f"{name}.out").open("w")
    cluster.daemons[name] = subprocess.Popen(
        cluster.inside(*command),
        env=cluster.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()


def stop_cluster(cluster: SlurmCluster) -> list[str]:
    """Cancel every job, wait for an empty queue, stop each daemon by its pid, then the
    namespace; returns the processes that were still in the namespace (and were killed)."""
    if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
        with contextlib.suppress(Exception):
            cluster.client("scancel", "--user", str(os.getuid()), check=False)
            cluster.wait_empty(timeout_s=60)
    # nodes, controller, accounting, then munge (nsenter execs the daemon: the pid is its)
    order = [*NODES, "slurmctld", "slurmdbd", "mariadbd", "munged"]
    for name in order:
        daemon = cluster.daemons.get(name)
        if daemon is None or daemon.poll() is not None:
            continue
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
    leftovers = [p for p in cluster.namespace_members() if p.pid != cluster.holder.pid]
    described = []
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline()[:4])}")
            process.kill()
    psutil.wait_procs(leftovers, timeout=10)
    if cluster.holder.poll() is None:
        cluster.holder.kill()
        cluster.holder.wait(timeout=10)
    shutil.rmtree(cluster.folder, ignore_errors=True)
    return described
