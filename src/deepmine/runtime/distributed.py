"""DDP ranks started by deepmine, not by re-executing the command line.

Lightning's default DDP launcher starts ranks 1..N-1 by re-running `sys.argv`. Under Hydra that
re-runs the whole command: inside a multirun every rank would start the sweep again (and with
`deepmine train` as the entry point it cannot even find the script). `ddp_spawn` avoids that
but trains only in spawned children: the Lightning logger's history, the test confusion matrix
and other state never return to the process that records the run.

So deepmine does what a cluster launcher (torchrun, srun) does: this process is rank 0, and each
other rank is `python -m deepmine.run.rank <resolved config>` with `LOCAL_RANK`, `WORLD_SIZE`,
`MASTER_ADDR` and `MASTER_PORT` set. Lightning sees the ranks were created externally and
launches nothing. Ranks > 0 build the same parts from the same resolved config, train and test
in lockstep and record nothing: rank 0 owns the MLflow run. Where a cluster already started
the ranks (`LOCAL_RANK` set by torchrun; the tasks of a SLURM step, started by srun), deepmine
starts none: Lightning reads the ranks from the cluster's environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.strategies import DDPStrategy as LightningDDPStrategy
from omegaconf import DictConfig, OmegaConf

from deepmine.errors import DeepmineError
from deepmine.runtime import slurm

RANK_ENV = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")

#: the entry point of a rank > 0: it builds a run's parts, so it lives in the run layer above
#: this one, which names it and starts it as a process but never imports it
RANK_MODULE = "deepmine.run.rank"


class DDPStrategy(LightningDDPStrategy):
    """Lightning's DDPStrategy without the SIGTERM handler Lightning installs for each fit/test.

    That handler broadcasts from inside the signal handler (Lightning 2.6, lightning#20825),
    wherever the signal lands in rank 0, while the other ranks are in collectives of their own:
    the broadcast pairs with the wrong one and rank 0 hangs (measured: still running 120 s after
    SIGTERM, until the 5-minute collective timeout). With the handler that was there before
    Lightning's back in place, SIGTERM reaches deepmine's handler at once on rank 0
    (KeyboardInterrupt: the run is closed KILLED and the other ranks are killed) and ends the
    other ranks (default action). Lightning restores that same handler when fit/test ends.
    """

    _sigterm = None

    def setup(self, trainer) -> None:
        # strategy setup runs just before Lightning registers its handlers
        self._sigterm = signal.getsignal(signal.SIGTERM)
        super().setup(trainer)

    def _drop_lightning_sigterm(self) -> None:
        if self._sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._sigterm)

    def on_train_start(self) -> None:
        self._drop_lightning_sigterm()
        super().on_train_start()

    def on_validation_start(self) -> None:
        self._drop_lightning_sigterm()
        super().on_validation_start()

    def on_test_start(self) -> None:
        self._drop_lightning_sigterm()
        super().on_test_start()

    def on_predict_start(self) -> None:
        self._drop_lightning_sigterm()
        super().on_predict_start()


def is_ddp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, str):
        return strategy.startswith("ddp") and strategy != "ddp_spawn"
    target = str(strategy.get("_target_", "")) if strategy else ""
    return target.endswith(".DDPStrategy")


def local_world_size(cfg: DictConfig) -> int:
    devices = cfg.trainer.get("devices", 1)
    return devices if isinstance(devices, int) else len(devices)


def adopt_slurm_ranks() -> None:
    """Every rank srun started (rank 0 here, the others in `deepmine.run.rank.train_rank`)
    meets rank 0 at its node's SLURM address, unless the site set MASTER_ADDR itself."""
    os.environ.setdefault("MASTER_ADDR", slurm.main_node_address())


@contextlib.contextmanager
def ranks(cfg: DictConfig, output_dir: Path) -> Iterator[int]:
    """Start ranks 1..N-1 for a DDP run and make this process rank 0; yields the world size
    (1 when there is nothing to start). Ranks are stopped if this one fails."""
    world = local_world_size(cfg)
    if is_ddp(cfg) and slurm.started_ranks():
        adopt_slurm_ranks()
        yield world
        return
    if not is_ddp(cfg) or world <= 1 or "LOCAL_RANK" in os.environ:
        yield world
        return
    if int(cfg.trainer.get("num_nodes", 1)) != 1:
        raise DeepmineError(
            "deepmine starts DDP ranks on one machine only (trainer.num_nodes > 1)",
            "use launcher=slurm with tasks_per_node=trainer.devices, so srun starts every rank",
        )
    folder = output_dir / "ddp"
    folder.mkdir(parents=True, exist_ok=True)
    # each rank reads the resolved config on its stdin, not from a file: it holds the run's
    # secrets in clear (only what is recorded is masked), and the output folder outlives the run
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    common = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "NODE_RANK": "0",
    }
    threads = max(1, (os.cpu_count() or 1) // world)
    started = []
    for rank in range(1, world):
        log = (folder / f"rank{rank}.log").open("w")
        env = {**os.environ, **common, "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": str(threads)}
        # the rank dies with this process however it ends (see `interrupts.die_with_parent`)
        command = [sys.executable, "-m", RANK_MODULE, "-", str(os.getpid())]
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        with contextlib.suppress(BrokenPipeError):  # a rank that died at once: _stop says so
            process.stdin.write(config_text)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        started.append((rank, process, log))
    saved = {k: os.environ.get(k) for k in RANK_ENV}
    os.environ.update(common, LOCAL_RANK="0")
    import torch

    torch.set_num_threads(threads)
    failed = True
    try:
        yield world
        failed = False
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        problems = _stop(started, terminate=failed)
    if problems:
        raise RuntimeError("; ".join(problems))


def _stop(started, terminate: bool) -> list[str]:
    """Wait for the ranks to finish; with `terminate` (this rank failed or was stopped), kill
    them at once. They record nothing and hold nothing worth a graceful exit (rank 0 owns the
    run), and a rank under Lightning's own SIGTERM handler (a strategy other than the
    `DDPStrategy` above) only takes note of SIGTERM: it used to hang until the 30 s wait below
    ran out. Lightning SIGKILLs the ranks it launches itself the same way."""
    problems = []
    for rank, process, log in started:
        if terminate:
            process.kill()
        try:
            code = process.wait(timeout=30 if terminate else 300)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
        if code != 0 and not terminate:
            problems.append(f"DDP rank {rank} exited with code {code} (log: {log.name})")
    return problems


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
