"""A DDP rank > 0, started by deepmine itself (`deepmine.runtime.distributed.ranks`) or by srun as
a task of a SLURM job (`train_rank`): it builds the same parts from the same config and fits and
tests beside rank 0. An internal entry point,
run as `python -m deepmine.run.rank <resolved config file, or - for stdin> <parent pid>`, not a
command. deepmine hands the config over on stdin: it holds the run's secrets in clear.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf


def run_rank(config_path: str) -> None:
    """Rank > 0 that deepmine started: the resolved config rank 0 wrote (`-`: on stdin)."""
    from deepmine.config import register_resolvers

    register_resolvers()
    train_rank(OmegaConf.load(sys.stdin if config_path == "-" else config_path))


def train_rank(cfg) -> None:
    """Rank > 0 (deepmine's or a cluster's): same seed, same parts, same fit and test as rank
    0; no logger, no records."""
    from deepmine.run.build import build
    from deepmine.runtime.seeding import seed_everything

    seed_everything(int(cfg.seed), deterministic=bool(cfg.trainer.get("deterministic")))
    parts = build(cfg)
    from lightning.pytorch.loggers.logger import DummyLogger

    # Rank 0 records; the others still need a logger for callbacks that insist on one
    # (LearningRateMonitor), and Lightning's DummyLogger discards everything.
    parts.trainer.loggers = [DummyLogger()]
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    best = getattr(parts.trainer.checkpoint_callback, "best_model_path", "") or None
    parts.trainer.test(parts.task, datamodule=parts.datamodule, ckpt_path=best, verbose=False)


if __name__ == "__main__":
    from deepmine.runtime.interrupts import die_with_parent

    die_with_parent(int(sys.argv[2]))
    run_rank(sys.argv[1])
