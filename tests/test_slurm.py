"""`launcher=slurm` on a real two-node SLURM cluster (tests/slurm_cluster.py): a sweep of real
jobs, one run trained by DDP across both nodes, a preempted job that continues its MLflow run
in its next attempt, and `runs doctor` asking the queue about a run whose job died.

Every command runs inside the cluster's loopback-only network namespace, as a user's commands
run on a login node; the store is an SQLite file in the test's folder, which every node sees
(they share this host's filesystem, as cluster nodes share theirs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, start_cluster, stop_cluster
from test_ui import free_port

from conftest import Sandbox, deepmine_env

pytestmark = pytest.mark.cluster

PARENT = "mlflow.parentRunId"
#: a job SLURM can place here: no GPU, little memory, one core
SLURM = (
    "launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.signal_delay_s=60",
)
#: small enough for seconds per epoch, long enough (4 epochs, 144 steps each) to be preempted
#: after its first checkpoint; no dropout, so DDP's ranks and one process draw no masks apart
BASE = (
    "data=digits",
    "data.batch_size=8",
    "trainer.max_epochs=4",
    "net.dropout=0.0",
    "print_config=false",
)


def base(*changes: str) -> tuple[str, ...]:
    """BASE with `changes` in place of the keys they set (Hydra refuses a key given twice)."""
    keys = {change.split("=")[0] for change in changes}
    return (*[o for o in BASE if o.split("=")[0] not in keys], *changes)


@pytest.fixture(scope="module")
def cluster():
    started = start_cluster()
    print(f"SLURM cluster up in {started.cold_start_s:.1f} s (2 nodes)")
    try:
        yield started
    finally:
        leftovers = stop_cluster(started)
        assert not leftovers, f"processes outlived the SLURM cluster: {leftovers}"
        assert started.holder.poll() is not None


def deepmine(cluster: SlurmCluster, box: Sandbox, *args: str, timeout: float = 600):
    """`python -m deepmine <args>` inside the cluster's namespace, with its SLURM_CONF."""
    return subprocess.run(
        cluster.inside(sys.executable, "-m", "deepmine", *args),
        cwd=box.cwd,
        env=cluster.env(deepmine_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(cluster: SlurmCluster, box: Sandbox, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cluster.inside(sys.executable, "-m", "deepmine", *args),
        cwd=box.cwd,
        env=cluster.env(deepmine_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def split(runs):
    parents = [r for r in runs if PARENT not in r.data.tags]
    children = [r for r in runs if PARENT in r.data.tags]
    return parents, children


def results(run) -> dict:
    """Every final metric but wall times."""
    return {k: v for k, v in run.data.metrics.items() if not k.startswith("time/")}


def histories(box: Sandbox, run) -> dict:
    client = box.client()
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in results(run)
    }


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


@pytest.fixture(scope="module")
def team_server(cluster, tmp_path_factory):
    """A team store: `deepmine server` inside the cluster's namespace (where the jobs reach
    it), its backend an SQLite file the tests read directly (Sandbox.client)."""
    box = Sandbox(tmp_path_factory.mktemp("slurm-team"))
    box.db.parent.mkdir(parents=True)
    port = free_port()
    log = (box.path / "server.log").open("w")
    server = subprocess.Popen(
        cluster.inside(
            sys.executable, "-m", "deepmine", "server", "--backend-store-uri", box.uri,
            "--artifacts-destination", str(box.path / "artifacts"), "--port", str(port),
            "--workers", "1",
        ),
        cwd=box.cwd, env=cluster.env(deepmine_env()), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    probe = f"import urllib.request; urllib.request.urlopen('{url}/health', timeout=2)"
    try:

        def healthy() -> bool:
            assert server.poll() is None, (box.path / "server.log").read_text()[-3000:]
            probe_cmd = cluster.inside(sys.executable, "-c", probe)
            probing = subprocess.run(probe_cmd, capture_output=True)
            return probing.returncode == 0

        wait_for(healthy, 120, "deepmine server", poll_s=0.5)
        yield box, url
    finally:
        server.terminate()  # deepmine server stops its whole process group on SIGTERM
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def sweep(cluster, team_server):
    """`deepmine train -m launcher=slurm seed=0,1,2`: three real jobs of one job array,
    recording into the team server."""
    box, url = team_server
    overrides = [f"paths.log_dir={box.logs}", f"logger.tracking_uri={url}"]
    proc = deepmine(cluster, box, "train", "-m", *overrides, *SLURM, *BASE, "seed=0,1,2")
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.logs()
    return box, proc


def test_the_cluster_listens_and_connects_on_loopback_only(cluster):
    interfaces, endpoints = cluster.loopback_only()
    assert interfaces and all(line.startswith("lo ") for line in interfaces), interfaces
    for line in interfaces:
        address = ip_address(line.split()[2].split("/")[0])
        assert address.is_loopback, line
    assert endpoints, "no sockets seen: the check would prove nothing"
    for endpoint in endpoints:
        host = endpoint.rsplit(":", 1)[0].strip("[]").split("%")[0]
        if host in ("*", "0.0.0.0", "::"):
            continue  # a wildcard in a namespace whose only addresses are loopback ones
        assert ip_address(host).is_loopback, endpoint
    members = {" ".join(p.cmdline()[:1]) for p in cluster.namespace_members()}
    assert {"slurmctld", "slurmd", "munged"} <= {Path(m).name for m in members}, members


def test_a_sweep_is_one_job_array_with_a_child_run_per_job(cluster, sweep):
    box, proc = sweep
    parents, children = split(box.runs())
    assert len(parents) == 1 and len(children) == 3
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert "SlurmLauncher" in parent.data.tags["deepmine.sweep.launcher"]
    assert {c.data.tags[PARENT] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    jobs = sorted(c.data.tags["deepmine.slurm.job_id"] for c in children)
    array = {job.split("_")[0] for job in jobs}
    assert len(array) == 1 and [job.split("_")[1] for job in jobs] == ["0", "1", "2"], jobs
    assert {c.data.tags["deepmine.slurm.node"] for c in children} <= {"n1", "n2"}
    assert all(c.data.tags["deepmine.slurm.attempts"] == "1" for c in children)
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2"}
    assert all("test/acc" in c.data.metrics for c in children)
    assert "sweep summary" in proc.stdout and parent.info.run_id in proc.stdout
    # through the team server: its artifact store holds the parent's summary
    assert list((box.path / "artifacts").rglob("summary/trials.md"))
    (script,) = box.logs.glob("train/multiruns/*/*/.submitit/*/*submission.sh")
    assert "#SBATCH --signal=USR2@60" in script.read_text()  # the warning before a kill
    cluster.wait_empty()


def test_an_optuna_search_submits_each_batch_of_trials_as_slurm_jobs(cluster, tmp_path):
    """Two trials at a time, each a SLURM job reporting to the study (an SQLite file the nodes
    share) through the pruning callback; the sweeper tells the study what each job returned."""
    box = Sandbox(tmp_path)
    proc = deepmine(
        cluster, box, "train", "-m",
        *box.overrides(
            *SLURM, "hparams_search=fashion_mnist_optuna", "data=digits", "debug=fast",
            "trainer.max_epochs=2", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.logs()
    (parent,), children = split(box.runs("fashion_mnist_optuna"))
    assert parent.info.status == "FINISHED" and len(children) == 4
    trials = sorted(int(c.data.tags["deepmine.optuna.trial"]) for c in children)
    assert trials == [0, 1, 2, 3]
    jobs = {c.data.tags["deepmine.slurm.job_id"].split("_")[0] for c in children}
    assert len(jobs) == 2  # one job array per batch of n_jobs trials
    assert all("val/acc_best" in c.data.metrics for c in children)
    cluster.wait_empty()


def test_ddp_across_two_nodes_is_one_run_equal_to_one_process(cluster, tmp_path):
    """2 nodes x 1 task, batch 8 per rank, against one process with batch 16.

    deepmine's DDP batches are every world-size-th sample of one seeded order, so at each step
    the two ranks hold exactly the 16 samples the single process holds, and the averaged
    gradients are the same mean over them: the runs may differ only by float32 rounding (a
    mean of two half-batch means, summed by gloo, against one mean of 16). Measured: the
    validation metrics and test accuracy agree to every printed digit; the test loss differs
    by the way it is averaged over an odd split (below), not by training.
    """
    box = Sandbox(tmp_path)
    ddp = (
        *SLURM, *base("trainer.max_epochs=2"), "hydra.launcher.nodes=2",
        "hydra.launcher.tasks_per_node=1", "trainer=ddp", "trainer.devices=1",
        "trainer.num_nodes=2", "seed=0",
    )  # fmt: skip
    proc = deepmine(cluster, box, "train", "-m", *box.overrides(*ddp))
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.logs()
    _, (run,) = split(box.runs())
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.num_nodes"] == "2"
    before = {r.info.run_id for r in box.runs()}
    single = deepmine(
        cluster, box, "train",
        *box.overrides(*base("trainer.max_epochs=2", "data.batch_size=16"), "seed=0"),
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    (reference,) = [r for r in box.runs() if r.info.run_id not in before]
    ddp_metrics, single_metrics = results(run), results(reference)
    for key in ("val/loss", "val/acc", "val/acc_best", "test/acc"):  # rounding only
        assert ddp_metrics[key] == pytest.approx(single_metrics[key], rel=1e-5), key
    # the test split (359 samples) shards 180/179: Lightning averages each rank's mean loss
    # unweighted, which moves the mean loss by a few parts in a thousand (measured: 2.8e-3)
    assert ddp_metrics["test/loss"] == pytest.approx(single_metrics["test/loss"], rel=1e-2)
    steps = {m.step for m in box.client().get_metric_history(run.info.run_id, "val/acc")}
    ref_steps = {m.step for m in box.client().get_metric_history(reference.info.run_id,
                                                                  "val/acc")}  # fmt: skip
    assert steps == ref_steps  # the same number of optimizer steps per epoch
    cluster.wait_empty()


def test_ddp_ranks_started_by_deepmine_in_a_one_task_job(cluster, tmp_path):
    """`trainer=ddp` (2 processes) in a job of one task: deepmine starts rank 1 itself, and the
    ranks must not take their ranks from SLURM (SLURM_PROCID is 0 in both)."""
    box = Sandbox(tmp_path)
    proc = deepmine(
        cluster, box, "train", "-m",
        *box.overrides(*SLURM, "hydra.launcher.cpus_per_task=2", "trainer=ddp", "data=digits",
                       "debug=fast", "seed=0"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.logs()
    _, (run,) = split(box.runs())
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    (rank1_log,) = box.logs.glob("train/multiruns/*/*/0/ddp/rank1.log")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1_log.read_text()
    cluster.wait_empty()


def test_a_preempted_job_continues_its_run_in_the_next_attempt(cluster, sweep, tmp_path):
    reference_box, _ = sweep
    (reference,) = [c for c in split(reference_box.runs())[1] if c.data.params["seed"] == "0"]
    box = Sandbox(tmp_path)
    sweeper = start(cluster, box, "train", "-m", *box.overrides(*SLURM, *BASE, "seed=0"))
    try:
        checkpoint = wait_for(
            lambda: next(iter(box.logs.glob("train/multiruns/*/*/0/checkpoints/last.ckpt")), None),
            240,
            "the job's first checkpoint",
            poll_s=0.05,
        )
        (job,) = cluster.queue()
        cluster.client("scancel", "--signal=USR2", job)  # what SLURM sends before preempting
        # the run is parked and the job requeued: pending until its begin time
        parked = wait_for(
            lambda: [r for r in box.runs() if r.info.status == "SCHEDULED"], 120, "a parked run"
        )
        wait_for(lambda: cluster.queue().get(job) == "PENDING", 120, "the job back in the queue")
        listed = deepmine(cluster, box, "runs", "--tracking-uri", box.uri)
        assert f"SCHEDULED  alive  SLURM job {job} is PENDING" in listed.stdout, listed.stdout
        cluster.client("scontrol", "update", f"jobid={job}", "starttime=now")
        _, err = sweeper.communicate(timeout=300)
        assert sweeper.returncode == 0, err[-3000:] + cluster.logs()
    finally:
        with contextlib.suppress(ProcessLookupError):
            sweeper.kill()
    _, (run,) = split(box.runs())
    assert run.info.run_id == parked[0].info.run_id
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["deepmine.slurm.job_id"] == job and tags["deepmine.slurm.attempts"] == "2"
    assert tags["deepmine.resumed.checkpoint"] == str(checkpoint)
    assert results(run) == results(reference)  # every final metric, exactly
    # the steps replayed after the checkpoint were logged once: histories are equal
    assert histories(box, run) == histories(reference_box, reference)
    cluster.wait_empty()


def test_a_sweep_job_killed_outright_fails_alone(cluster, tmp_path):
    """SIGKILL (the OOM killer, a lost node): the job writes no result and closes nothing.
    Accounting tells submitit the job FAILED; the sweep records that job as failed, closes its
    run KILLED and goes on (here: its other job finishes) instead of waiting forever or dying
    with a traceback."""
    box = Sandbox(tmp_path)
    long_job = (*SLURM, *base("trainer.max_epochs=200"), "callbacks.early_stopping=null")
    sweeper = start(
        cluster, box, "train", "-m", *box.overrides(*long_job, "trainer.max_epochs=200,1")
    )
    try:
        (run,) = wait_for(
            lambda: [r for r in box.runs() if r.data.params.get("trainer.max_epochs") == "200"
                     and "val/acc" in r.data.metrics],
            240, "the long job's run",
        )  # fmt: skip
        job = run.data.tags["deepmine.slurm.job_id"]
        os.kill(int(run.data.tags["deepmine.heartbeat.pid"]), signal.SIGKILL)
        _, err = sweeper.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            sweeper.kill()
    assert sweeper.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs failed; job 0: RuntimeError: SLURM job") and (
        f"{job} ended FAILED without a result" in last
    ), last
    parents, children = split(box.runs())
    assert parents[0].info.status == "FAILED"
    statuses = {c.data.params["trainer.max_epochs"]: c.info.status for c in children}
    assert statuses == {"200": "KILLED", "1": "FINISHED"}
    killed = box.client().get_run(run.info.run_id).data.tags["deepmine.status_reason"]
    assert f"SLURM job {job} ended FAILED" in killed
    cluster.wait_empty()


def test_doctor_closes_a_run_whose_job_died(cluster, tmp_path):
    """A run submitted by hand (`sbatch --wrap`), its job killed outright: the run stays
    RUNNING; `runs doctor` asks the queue, which knows the job ended, and closes it KILLED."""
    box = Sandbox(tmp_path)
    command = " ".join(
        [sys.executable, "-m", "deepmine", "train",
         *box.overrides(*base("trainer.max_epochs=200"), "callbacks.early_stopping=null")]
    )  # fmt: skip
    submitted = subprocess.run(
        cluster.inside("sbatch", "--parsable", f"--chdir={box.cwd}",
                       f"--output={box.path / 'job.out'}", f"--wrap=exec {command}"),
        capture_output=True, text=True, timeout=60, env=cluster.env(deepmine_env()),
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    (run,) = wait_for(lambda: [r for r in box.runs() if "val/acc" in r.data.metrics], 240, "run")
    alive = deepmine(cluster, box, "runs", "doctor", "--tracking-uri", box.uri)
    assert alive.returncode == 0 and "no RUNNING run without its process" in alive.stdout
    listed = deepmine(cluster, box, "runs", "--tracking-uri", box.uri)
    assert f"RUNNING  alive  SLURM job {job} is RUNNING" in listed.stdout, listed.stdout
    # what the OOM killer or a crashing node does: no signal handler runs
    os.kill(int(run.data.tags["deepmine.heartbeat.pid"]), signal.SIGKILL)
    wait_for(lambda: job not in cluster.queue(), 120, "the job to leave the queue")
    assert box.client().get_run(run.info.run_id).info.status == "RUNNING"
    fixed = deepmine(cluster, box, "runs", "doctor", "--fix", "--tracking-uri", box.uri)
    assert fixed.returncode == 0, fixed.stderr
    after = box.client().get_run(run.info.run_id)
    assert after.info.status == "KILLED"
    assert f"SLURM job {job} ended FAILED" in after.data.tags["deepmine.status_reason"]
    train = ["-m", "deepmine", "train"]
    assert not [p for p in cluster.namespace_members() if p.cmdline()[1:4] == train]


def test_a_requeued_job_that_never_returns_leaves_no_run_open(cluster, tmp_path):
    """Doctor closes a run parked by a preempted job that was then cancelled while pending."""
    box = Sandbox(tmp_path)
    command = " ".join(
        [sys.executable, "-m", "deepmine", "train",
         *box.overrides(*base("trainer.max_epochs=200"), "callbacks.early_stopping=null")]
    )  # fmt: skip
    submitted = subprocess.run(
        cluster.inside("sbatch", "--parsable", "--requeue", f"--chdir={box.cwd}",
                       f"--output={box.path / 'job.out'}", f"--wrap=exec {command}"),
        capture_output=True, text=True, timeout=60, env=cluster.env(deepmine_env()),
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    wait_for(lambda: [r for r in box.runs() if "val/acc" in r.data.metrics], 240, "a run")
    cluster.client("scancel", "--batch", "--signal=USR2", job)
    (parked,) = wait_for(
        lambda: [r for r in box.runs() if r.info.status == "SCHEDULED"], 120, "a parked run"
    )
    wait_for(lambda: cluster.queue().get(job) == "PENDING", 120, "the job back in the queue")
    cluster.client("scancel", job)
    wait_for(lambda: job not in cluster.queue(), 120, "the job to leave the queue")
    fixed = deepmine(cluster, box, "runs", "doctor", "--fix", "--tracking-uri", box.uri)
    assert fixed.returncode == 0, fixed.stderr
    after = box.client().get_run(parked.info.run_id)
    assert after.info.status == "KILLED"
    assert f"SLURM job {job} ended CANCELLED" in after.data.tags["deepmine.status_reason"]
    assert os.path.isfile(box.path / "job.out")
