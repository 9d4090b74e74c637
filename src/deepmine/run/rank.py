"""A DDP rank > 0 that deepmine starts itself (`deepmine.runtime.distributed.ranks`): it builds the
same parts from rank 0's resolved config and fits and tests beside it. An internal entry point,
run as `python -m deepmine.run.rank <resolved config> <parent pid>`, not a command.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf


def run_rank(config_path: str) -> None:
    """Rank > 0: same seed, same parts, same fit and test as rank 0; no logger, no records."""
    from deepmine.config import register_resolvers
    from deepmine.run.build import build
    from deepmine.runtime.seeding import seed_everything

    register_resolvers()
    cfg = OmegaConf.load(config_path)
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
