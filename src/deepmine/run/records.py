"""What a run records, from its first tags to its last artifact: the tags and config at the start
(`start_tags`, `record_start`), its data as MLflow datasets and its comparison group
(`record_data_and_group`), and at the end the checkpoint, the task's plots and files, learning
curves, metrics summary, model and environment (`record_end`), or what a pruned trial leaves
(`record_pruned`). The secret values to mask are computed once per run and handed in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deepmine.errors import first_line


def start_tags(
    cfg: DictConfig, overrides: list[str], seed: int, data_tags: dict, git, secrets: set[str]
) -> dict:
    """The tags a new run opens with: its source, command line, seed, summary, data and the
    user's own tags, every secret value masked."""
    import torch

    from deepmine.provenance.lineage import source_tags
    from deepmine.provenance.secrets import MASK, is_secret_key, mask_overrides, mask_values
    from deepmine.run.names import summary_line
    from deepmine.runtime.placement import placement_tags

    values = secrets
    shown = mask_overrides(overrides, values)
    command = " ".join(["deepmine", HydraConfig.get().job.config_name, *shown])
    user_tags = {
        str(k): MASK if is_secret_key(k) else str(v) for k, v in (cfg.get("tags") or {}).items()
    }
    tags = {
        **source_tags(git),
        "deepmine.argv": " ".join(mask_overrides(sys.argv, values)),
        "mlflow.source.name": "deepmine train",
        "deepmine.command": command,
        "deepmine.overrides": " ".join(shown),
        "deepmine.seed": str(seed),
        # float reductions depend on the thread count: bit-identical reruns need the same one
        "deepmine.torch.num_threads": str(torch.get_num_threads()),
        "deepmine.output_dir": str(cfg.paths.output_dir),
        # the project this run was started in: params hold paths relative to it
        "deepmine.root_dir": str(cfg.paths.root_dir),
        "deepmine.summary": summary_line(cfg, seed),
        **data_tags,
        # the SLURM job and node, the Ray node: where an engine placed this run
        **placement_tags(),
        **user_tags,
    }
    # a secret may also sit inside another value (a URL, a path): no tag carries one
    return {key: mask_values(value, values) for key, value in tags.items()}


def record_start(run, cfg: DictConfig, output_dir: Path, git, secrets: set[str]) -> None:
    """What is known before training: config, overrides, code diff; the run id on disk (in
    the run folder, not among the checkpoints: Lightning warns about a checkpoint folder that
    holds files before the first checkpoint)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "mlflow_run.json").write_text(
        json.dumps(
            {
                "run_id": run.run_id,
                "experiment": run.experiment_name,
                "tracking_uri": run.store.uri,
            },
            indent=2,
        )
    )
    from deepmine.provenance.secrets import mask_config, mask_text, mask_values

    # what is recorded is masked (provenance.secrets); `cfg` itself, what trains, is not
    hydra_cfg = HydraConfig.get()
    values = secrets
    masked = mask_config(cfg)
    run.log_params(masked)
    run.log_text(OmegaConf.to_yaml(OmegaConf.create(masked)), "config/config.yaml")
    hydra_dir = output_dir / hydra_cfg.output_subdir
    for name in ("overrides.yaml", "hydra.yaml"):
        if (hydra_dir / name).is_file():
            run.log_text(mask_text((hydra_dir / name).read_text(), values), f"config/{name}")
    if git.dirty:
        run.log_text(mask_values(git.status, values), "git/status.txt")
        run.log_text(mask_values(git.diff, values), "git/diff.patch")


def record_data_and_group(run, cfg: DictConfig, datamodule, data_tags: dict) -> None:
    """Once the params are logged: the data as MLflow datasets (one per split) and the run's
    group (`deepmine.compare.groups`), computed from exactly the params the store holds, so
    `deepmine compare` reading them back finds the same group."""
    from deepmine.compare.groups import GROUP_TAG, group_key
    from deepmine.tracking.datasets import data_source, log_datasets

    run.set_tags({GROUP_TAG: group_key(run.params)})
    tensors = getattr(datamodule, "tensors", {})
    name = HydraConfig.get().runtime.choices.get("data") or "data"
    source = data_source(cfg.data, data_tags, Path(cfg.paths.root_dir), tensors)
    log_datasets(run, str(name), source, tensors)


def record_end(run, cfg: DictConfig, parts, result: dict, output_dir: Path, pip_freeze) -> None:
    """Artifacts known at the end: best checkpoint, the task's plots, learning curves, metrics
    summary, environment."""
    from deepmine.figures import learning_curves_png

    trainer, task = parts.trainer, parts.task
    if result["best_checkpoint"] and cfg.logger.get("log_checkpoint", True):
        run.log_file(result["best_checkpoint"], "checkpoints")
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    # plots are titled by the run's name, which says what differs (`lr=0.01 seed=2`)
    for path in task.plots(plots, run.name or run.run_id[:8], parts.datamodule):
        run.log_file(path, "plots")
    results = output_dir / "results"
    results.mkdir(exist_ok=True)
    for path in task.result_files(results):
        run.log_file(path, "results")
    names = getattr(parts.datamodule, "class_names", ())
    if names:  # a table's labels are known only once it is read
        run.set_tags({"deepmine.data.class_names": ", ".join(map(str, names))[:8000]})
    if task.run_tags():
        run.set_tags(task.run_tags())
    history = trainer.loggers[0].history
    curves = learning_curves_png(
        history, plots / "learning_curves.png", run.name or run.run_id[:8], task.monitor
    )
    run.log_file(curves, "plots")
    from deepmine.run.fit import metrics_summary

    run.log_json(metrics_summary(cfg, result), "metrics.json")
    if cfg.logger.get("log_model", True) and trainer.is_global_zero:
        result["model"] = log_model(run, cfg, parts, result)
    from deepmine.run.names import description

    summary = run.client.get_run(run.run_id).data.tags.get("deepmine.summary", "")
    if summary:
        run.set_tags({"mlflow.note.content": description(summary, cfg, task, result)})
    run.log_text(pip_freeze.result(timeout=120), "environment/pip-freeze.txt")


def log_model(run, cfg: DictConfig, parts, result: dict):
    """The whole pipeline as the run's MLflow model: the datamodule's fitted preprocessing, the
    best weights (what `trainer.test` loaded and scored, plus what the test fitted) in a task
    module built afresh from the config, and the task's outputs in the user's terms
    (`deepmine.run.pipeline`)."""
    from deepmine.run.pipeline import build_pipeline
    from deepmine.tracking.model import log_model as log_mlflow_model

    pipeline = build_pipeline(cfg, parts.datamodule, parts.task)
    register = cfg.logger.get("register")
    return log_mlflow_model(run, pipeline, step=result["global_step"], register=register)


def record_pruned(run, parts, exc: BaseException, output_dir: Path) -> None:
    """A pruned trial ends FINISHED (pruning is the search working), tagged as pruned, with the
    learning curves up to where it stopped; it is not tested."""
    from deepmine.figures import learning_curves_png

    run.set_tags({"deepmine.sweep.pruned": "true", "deepmine.status_reason": first_line(exc)})
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    history = parts.trainer.loggers[0].history
    title, metric = run.name or run.run_id[:8], parts.task.monitor
    run.log_file(
        learning_curves_png(history, plots / "learning_curves.png", title, metric), "plots"
    )


def mask_hydra_files(cfg: DictConfig) -> None:
    """Mask the secrets in the files Hydra wrote into this job's `.hydra/` folder (config.yaml,
    hydra.yaml, overrides.yaml) before the task runs: Hydra writes them with the values as
    given, and the output folders outlive the run (they are copied, shared, archived). The
    config that trains is not changed. Never fails the job: a config that cannot resolve (what
    its error will be about) is masked from the overrides and the files' own secret keys."""
    from deepmine.provenance.secrets import mask_yaml_file, secret_values

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None:
        return
    overrides = list(hydra_cfg.overrides.task)
    try:
        values = secret_values(cfg, overrides)
    except Exception:
        values = secret_values(None, overrides)
    folder = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        mask_yaml_file(folder / name, values)
