"""Fit, then test with the best checkpoint; what a failure during training means for the user."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from deepmine.errors import EXIT_FAILED, DeepmineError
from deepmine.runtime import timeline


class RunFailed(DeepmineError):
    """Training raised after the run was opened; the run is recorded FAILED."""

    exit_code = EXIT_FAILED


def fit_and_test(cfg: DictConfig, parts, output_dir: Path, resume_from=None) -> dict:
    from deepmine.runtime.callbacks import EpochTimer, find_callback

    trainer, task, datamodule = parts.trainer, parts.task, parts.datamodule
    # weights_only: a checkpoint holds tensors and plain values only (RNG states included), so
    # resuming never unpickles code
    started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_seconds = time.perf_counter() - started
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    tested = trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)
    test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    metric = cfg.get("optimized_metric")
    metrics = {**fit_metrics, **test_metrics}
    if metric and metric not in metrics:
        raise DeepmineError(
            f"optimized_metric={metric} was never logged (logged: {', '.join(sorted(metrics))})",
            "pick one of the logged metrics",
        )
    result = {
        "best_checkpoint": best,
        "metrics": metrics,
        "objective": metrics.get(metric) if metric else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "fit_seconds": fit_seconds,
        "epoch_seconds": getattr(find_callback(trainer.callbacks, EpochTimer), "epoch_seconds", []),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics_summary(cfg, result), indent=2))
    return result


def failure_fix(exc: BaseException, cfg: DictConfig) -> str:
    """What to do about a run that failed while training: the known causes get their own fix,
    anything else points at the recorded traceback."""
    import errno

    from deepmine.runtime.callbacks import NonFiniteLoss

    if isinstance(exc, NonFiniteLoss):
        lr = float(cfg.optimizer.get("lr") or 1e-3)
        lower = 1e-3 if lr > 1e-3 else lr / 10
        return (
            f"lower the learning rate, e.g. optimizer.lr={lower:g}, or clip gradients with "
            "trainer.gradient_clip_val=1.0"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or "the run's output and artifact folders"
        return (
            f"free space on the disk that holds {where}, then run the same command again "
            "(what the run logged before is kept)"
        )
    return "see the traceback in the run's artifact error/traceback.txt"


def metrics_summary(cfg: DictConfig, result: dict) -> dict:
    return {
        "metrics": result["metrics"],
        "objective": {"name": cfg.get("optimized_metric"), "value": result["objective"]},
        "epochs": result["epochs"],
        "global_step": result["global_step"],
        "best_checkpoint": result["best_checkpoint"],
        # wall time of trainer.fit (sanity check, training, validation, checkpoints) and of
        # each epoch (training and validation): what benchmarks/ compares
        "fit_seconds": result["fit_seconds"],
        "epoch_seconds": result["epoch_seconds"],
        # seconds from entering the CLI to each start-up step (deepmine.runtime.timeline)
        "startup": timeline.since_cli(),
    }
