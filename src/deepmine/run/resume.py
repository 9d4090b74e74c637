"""`resume=<run id>`: a single run continued from its last checkpoint into the same MLflow run,
composed as it was recorded (its overrides, then any given now)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from deepmine.errors import DeepmineError
from deepmine.tracking.store import connect_store


@dataclass
class Resumed:
    """A single run continued from its last checkpoint into the same MLflow run."""

    run_id: str
    checkpoint: Path
    output_dir: Path


def resumed_config(cfg: DictConfig, hydra_cfg, resume, overrides: list[str]):
    """The config run `resume` was composed with (its recorded overrides, then any given
    here), writing into its own output folder, and where to continue from."""
    if resume is True:
        raise DeepmineError(
            "resume=true continues an Optuna search, which needs -m (deepmine train -m "
            "hparams_search=<name> resume=true)",
            "drop resume to start a new run, or pass resume=<run id> to continue one",
        )
    import tempfile

    from deepmine.provenance.trust import check_targets
    from deepmine.tracking.fetch import get_run, recorded_overrides

    store = connect_store(cfg)
    if store is None:
        raise DeepmineError("resume=<run id> needs the MLflow logger", "drop logger=none")
    run_id = str(resume)
    run = get_run(store, run_id, example=lambda i: f"resume={i}", example_status="KILLED")
    if run.info.status == "FINISHED":
        raise DeepmineError(
            f"run {run_id} already FINISHED: nothing to resume",
            f"drop resume to start a new run, or replay it: `deepmine reproduce run {run_id}`",
        )
    output_dir = Path(run.data.tags.get("deepmine.output_dir", ""))
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise DeepmineError(
            f"run {run_id} has no last checkpoint at {checkpoint} (stopped before its first "
            "epoch ended, or trained on another machine)",
            "start it again as a new run",
        )
    extra = [o for o in overrides if not o.lstrip("+~").startswith("resume=")]
    with tempfile.TemporaryDirectory() as tmp:
        # a masked (secret) override must be given again: it is in `extra` or refused here
        recorded = recorded_overrides(store, run_id, Path(tmp), given=extra)
    composed = hydra.compose(
        hydra_cfg.job.config_name,
        overrides=[*recorded, *extra, f"paths.output_dir={output_dir}"],
    )
    # the flag comes from this command line: the recorded overrides could set it themselves
    trusted = bool(cfg.get("trust_recorded_targets"))
    check_targets(composed, trusted=trusted, overrides=recorded)
    return composed, Resumed(run_id, checkpoint, output_dir)
