"""`deepmine eval`: test a trained model, from a recorded run or a checkpoint file.

With `run_id=...` the model is rebuilt from that run's recorded config (so no overrides need
repeating) and its best checkpoint; the data is verified against data.dvc as for training. The
evaluation is itself recorded as an MLflow run tagged `deepmine.evaluated_run`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deepmine.config import register_resolvers
from deepmine.errors import DeepmineError
from deepmine.project import config_dir
from deepmine.run.checks import check_override_types, verify_data
from deepmine.run.errors import report_errors
from deepmine.tracking.store import connect_store

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
@report_errors
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


def evaluate(cfg: DictConfig) -> dict:
    from deepmine.runtime import quiet

    quiet.silence_lightning_tips()  # before the Trainer is built
    hydra_cfg = HydraConfig.get()
    check_override_types(cfg, hydra_cfg.job.config_name, list(hydra_cfg.overrides.task))
    store = connect_store(cfg)
    if bool(cfg.run_id) == bool(cfg.ckpt_path) or cfg.ckpt_path:
        _check_source(cfg, store)
    model_cfg = cfg
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.run_id:
            if store is None:
                raise DeepmineError("run_id needs an MLflow store", "drop logger=none")
            from deepmine.provenance.trust import check_targets
            from deepmine.tracking.fetch import recorded_config_and_checkpoint

            config_path, checkpoint = recorded_config_and_checkpoint(store, cfg.run_id, Path(tmp))
            model_cfg = OmegaConf.load(config_path)
            check_targets(model_cfg, trusted=bool(cfg.get("trust_recorded_targets")))
        else:
            checkpoint = Path(cfg.ckpt_path)
        model_cfg = OmegaConf.merge(
            model_cfg, {"allow_data_mismatch": cfg.allow_data_mismatch, "paths": cfg.paths}
        )
        # the task's eval options (classification: robustness=... decides the attacks) come
        # from this command, not from the recorded run; a task config without such a key (a
        # run older than it) stays as it was
        from hydra.utils import get_class

        model_task = get_class(model_cfg.task._target_)
        own = getattr(model_task, "eval_options", ())
        for key in own:
            value = cfg.task.get(key)
            if value or key in model_cfg.task:
                model_cfg.task[key] = value
        # an option this command's task config offers that the tested model's task does not
        # take (robustness=... on a regression model) is refused, not silently dropped
        for key in getattr(get_class(cfg.task._target_), "eval_options", ()):
            if key not in own and cfg.task.get(key):
                raise DeepmineError(
                    f"{key} applies to {cfg.task._target_.rsplit('.', 1)[-1]} models, and this "
                    f"model is a {model_task.__name__}",
                    f"drop {key}=... from the command",
                )
        data_tags = verify_data(model_cfg)
        metrics, run_id = _test(cfg, model_cfg, checkpoint, store, data_tags)
    width = max([14, *(len(key) + 2 for key in metrics)])
    for key, value in sorted(metrics.items()):
        print(f"{key:<{width}}{value:.4f}")
    if run_id:
        print(f"MLflow run    {run_id} (experiment '{cfg.experiment_name}')")
    return metrics


def _check_source(cfg: DictConfig, store) -> None:
    """One source, and a ckpt_path that is a checkpoint; the fix names a real run to evaluate
    (its recorded config fits its checkpoint, which a bare ckpt_path needs overrides for)."""
    from deepmine.runtime.checkpoints import GENERIC_FIX, check_is_checkpoint
    from deepmine.tracking.fetch import latest_run_id

    latest = latest_run_id(store) if store is not None else None
    example = (
        f"evaluate a recorded run, e.g. run_id={latest} (the latest finished)" if latest else None
    )
    if cfg.run_id and cfg.ckpt_path:
        raise DeepmineError(
            "deepmine eval got both run_id and ckpt_path",
            "drop ckpt_path to evaluate the run (its checkpoint comes with it)",
        )
    if not cfg.ckpt_path:
        raise DeepmineError(
            "deepmine eval needs a run_id or a ckpt_path",
            example or "pass run_id=<run id> or ckpt_path=<file>",
        )
    fix = f"point ckpt_path at a checkpoint of deepmine train, or drop ckpt_path and {example}"
    check_is_checkpoint(Path(cfg.ckpt_path), fix if example else GENERIC_FIX)


def _test(cfg, model_cfg, checkpoint: Path, store, data_tags: dict) -> tuple[dict, str | None]:
    from hydra.utils import instantiate

    from deepmine.run.build import build_datamodule, build_task
    from deepmine.runtime.checkpoints import load_weights
    from deepmine.runtime.seeding import seed_everything

    seed_everything(int(cfg.seed), deterministic=bool(cfg.trainer.get("deterministic")))
    datamodule = build_datamodule(model_cfg)
    task = build_task(model_cfg)
    load_weights(task, checkpoint)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    if store is None:
        tested = trainer.test(task, datamodule=datamodule, verbose=False)
        return {k: float(v) for k, v in tested[0].items()}, None

    from deepmine.provenance.secrets import (
        MASK,
        is_secret_key,
        mask_config,
        mask_overrides,
        mask_values,
        secret_values,
    )
    from deepmine.tracking.run import recorded_run

    # what is recorded is masked (provenance.secrets): this command's secret overrides and the
    # model config's secrets (a checkpoint's config is this command's own)
    overrides = list(HydraConfig.get().overrides.task)
    values = secret_values(cfg, overrides) | secret_values(model_cfg)
    user_tags = {
        str(k): MASK if is_secret_key(k) else str(v) for k, v in (cfg.get("tags") or {}).items()
    }
    tags = {
        "mlflow.source.name": "deepmine eval",
        "deepmine.evaluated_run": str(cfg.run_id or ""),
        "deepmine.evaluated_checkpoint": str(checkpoint if not cfg.run_id else ""),
        "deepmine.command": " ".join(["deepmine eval", *mask_overrides(overrides, values)]),
        **data_tags,
        **user_tags,
    }
    tags = {key: mask_values(value, values) for key, value in tags.items()}
    name = f"eval-{cfg.run_id[:8]}" if cfg.run_id else f"eval-{checkpoint.stem}"
    with recorded_run(store, cfg.experiment_name, name, tags, secret_values=values) as run:
        masked = mask_config(model_cfg)
        run.log_params(masked)
        run.log_text(OmegaConf.to_yaml(OmegaConf.create(masked)), "config/config.yaml")
        trainer.loggers = [run.lightning_logger(flush_every_s=cfg.logger.flush_every_s)]
        tested = trainer.test(task, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in tested[0].items()}
        run.log_json({"metrics": metrics}, "metrics.json")
        with tempfile.TemporaryDirectory() as folder:
            for path in task.plots(Path(folder), run.run_id[:8], datamodule):
                run.log_file(path, "plots")
            for path in task.result_files(Path(folder)):
                run.log_file(path, "results")
        if task.run_tags():
            run.set_tags(task.run_tags())
        if cfg.logger.get("log_model", True):
            # the tested model as a whole pipeline (what `deepmine predict` scores with): how
            # a run whose model was logged before pipelines gets one
            from deepmine.run.pipeline import build_pipeline
            from deepmine.tracking.model import log_model

            logged = log_model(run, build_pipeline(model_cfg, datamodule, task))
            print(f"model         {logged.uri}")
    return metrics, run.run_id


def run(args: list[str]) -> int:
    """`deepmine eval [overrides]`: Hydra reads the overrides (and -m, --cfg, --help)."""
    from deepmine.run.hydra_app import run_hydra_app

    return run_hydra_app(main, "eval", args)
