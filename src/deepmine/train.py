"""`deepmine train`: compose -> check -> seed -> build -> open run -> fit -> test -> record.

Every check a user can fail (config types, seed, data version, tracking store) runs before the
MLflow run is opened, so bad input leaves no run behind; from the moment the run is open, it is
closed FINISHED, FAILED or KILLED whatever happens. Returns the objective (`optimized_metric`)
for sweepers.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from deepmine.config import (
    check_override_types,
    check_seed,
    check_values,
    register_resolvers,
    report_errors,
)
from deepmine.errors import DeepmineError, first_line
from deepmine.project import config_dir
from deepmine.runtime import interrupts, timeline

register_resolvers()


class RunFailed(DeepmineError):
    """Training raised after the run was opened; the run is recorded FAILED."""

    exit_code = 1


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@report_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


def train(cfg: DictConfig) -> float | None:
    """One run (or one job of a sweep); the process is left as it was found (see
    `deepmine.runtime.process_state`), so the next job in the same process starts clean."""
    from deepmine.runtime.process_state import isolated
    from deepmine.tracking.store import end_fluent_runs

    timeline.start_job()
    timeline.mark("composed")
    with isolated(end_fluent_runs):
        return _train(cfg)


def _train(cfg: DictConfig) -> float | None:
    from deepmine.sweeps.job import current_job

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    check_override_types(cfg, hydra_cfg.job.config_name, overrides)
    resumed = None
    if cfg.get("resume") not in (None, False) and hydra_cfg.mode != RunMode.MULTIRUN:
        cfg, resumed = _resumed(cfg, hydra_cfg, cfg.resume, overrides)
    seed = check_seed(cfg)
    check_values(cfg)
    _check_register(cfg)
    job = current_job()
    data_tags = verify_data(cfg)
    timeline.mark("data_checked")
    store = connect_store(cfg)
    timeline.mark("store_ready")
    if cfg.get("print_config"):
        _print_config(cfg)

    from deepmine.build import build, build_datamodule
    from deepmine.runtime import distributed
    from deepmine.runtime.seeding import seed_everything

    seed_everything(seed, deterministic=bool(cfg.trainer.get("deterministic")))
    output_dir = Path(cfg.paths.output_dir)
    # Optuna's pruning hook broadcasts its decision from rank 0; the ranks deepmine starts
    # build their parts from the config alone, so searches over DDP runs do not prune.
    pruning = job.callbacks() if job and not distributed.is_ddp(cfg) else []
    pruned_errors = job.pruned_errors() if pruning else ()
    # The data fills the config's null shape keys before DDP ranks get the resolved config.
    datamodule = build_datamodule(cfg)
    with distributed.ranks(cfg, output_dir):
        parts = build(cfg, extra_callbacks=pruning, datamodule=datamodule)
        timeline.mark("built")
        if store is None:
            result = _fit_and_test(cfg, parts, output_dir)
            _print_summary(result, parts.task, None, None)
            return result["objective"]
        return _recorded(cfg, parts, store, overrides, seed, data_tags, job, pruned_errors, resumed)


@dataclass
class Resumed:
    """A single run continued from its last checkpoint into the same MLflow run."""

    run_id: str
    checkpoint: Path
    output_dir: Path


def _resumed(cfg: DictConfig, hydra_cfg, resume, overrides: list[str]):
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


def _recorded(
    cfg, parts, store, overrides, seed, data_tags, job, pruned_errors, resumed=None
) -> float | None:
    """Fit and test inside an MLflow run that is closed FINISHED, FAILED or KILLED."""
    from deepmine.provenance.lineage import git_state, start_pip_freeze
    from deepmine.provenance.secrets import mask_overrides, mask_values, secret_values
    from deepmine.tracking.run import recorded_run

    output_dir = Path(cfg.paths.output_dir)
    secrets = secret_values(cfg, overrides)  # masked in a failure's error and traceback too
    git = git_state(Path(cfg.paths.root_dir))
    pip_freeze = start_pip_freeze(Path(cfg.paths.cache_dir), git)
    if resumed:  # the run keeps the tags of its start; the resume adds its own
        tags = {
            "deepmine.resumed.checkpoint": str(resumed.checkpoint),
            "deepmine.resumed.argv": " ".join(mask_overrides(sys.argv, secret_values(cfg))),
            "deepmine.resumed.git.commit": git.commit or "unknown",
        }
    else:
        tags = _start_tags(cfg, overrides, seed, data_tags, git)
    if job:
        tags.update(job.tags())
    if cfg.logger.run_name:
        run_name = cfg.logger.run_name
    elif job and hasattr(job, "run_name"):
        run_name = job.run_name()
    else:
        run_name = _run_name(HydraConfig.get(), overrides, secret_values(cfg, overrides))
    run = None
    pruned = None
    try:
        with (
            interrupts.installed(),
            recorded_run(
                store,
                cfg.experiment_name,
                run_name,
                tags,
                reopen_run_id=resumed.run_id if resumed else None,
                secret_values=secrets,
            ) as run,
        ):
            if not resumed:
                _record_start(run, cfg, output_dir, git)
            timeline.mark("run_opened")
            if job:
                run.log_params(job.params())
            if not resumed:
                _record_data_and_group(run, cfg, parts.datamodule, data_tags)
            parts.trainer.loggers = [
                run.lightning_logger(
                    with_history=bool(resumed), flush_every_s=cfg.logger.flush_every_s
                )
            ]
            try:
                checkpoint = resumed.checkpoint if resumed else None
                result = _fit_and_test(cfg, parts, output_dir, checkpoint)
            except pruned_errors as exc:
                pruned = exc
                _record_pruned(run, parts, exc, output_dir)
            else:
                _record_end(run, cfg, parts, result, output_dir, pip_freeze)
    except DeepmineError:
        raise
    except Exception as exc:
        if run is None:
            raise
        raise RunFailed(
            mask_values(
                f"run {run.run_id} FAILED: {type(exc).__name__}: {first_line(exc)}", secrets
            ),
            _failure_fix(exc, cfg),
        ) from exc
    finally:
        pip_freeze.cancel()  # when the run ended before its environment was recorded
    if pruned is not None:
        print(f"pruned        {first_line(pruned)} (run {run.run_id})", flush=True)
        raise pruned
    _print_summary(result, parts.task, run, store)
    return result["objective"]


def _failure_fix(exc: BaseException, cfg: DictConfig) -> str:
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


def verify_data(cfg: DictConfig) -> dict[str, str]:
    """Check DVC-tracked data against data.dvc; return the data tags for the run."""
    from deepmine.data.version import DVC_FILE, check, pull_command, read_pin

    root = Path(cfg.paths.root_dir)
    data_cls = hydra.utils.get_class(cfg.data._target_)  # the first import of torch/lightning
    timeline.mark("imported")
    from deepmine.build import check_pairing

    check_pairing(cfg)  # before anything reads the task's shape keys from the wrong data
    tracked = bool(getattr(data_cls, "dvc_tracked", False))
    tags = {}
    if cfg.data.get("path"):
        tracked, tags = _user_file(cfg, root)
    elif cfg.data.get("root"):
        tracked, tags = _user_folder(cfg, root)
    tags["deepmine.data.dvc_tracked"] = str(tracked).lower()
    if (root / DVC_FILE).is_file():
        tags["deepmine.data.md5"] = read_pin(root).md5
    if not tracked:
        return tags
    state = check(root)
    if not state.present:
        raise DeepmineError(f"{root / 'data'} is missing", f"run `{pull_command(root)}`")
    tags["deepmine.data.matches"] = str(state.matches).lower()
    if not state.matches:
        changed = ", ".join(state.changed)
        if not cfg.get("allow_data_mismatch"):
            raise DeepmineError(
                f"data/ does not match data.dvc: {changed}",
                f"run `{pull_command(root, force=True)}` to restore the pinned version, or pass "
                "allow_data_mismatch=true to train on it anyway (the run is tagged)",
            )
        tags["deepmine.data.changed"] = changed
        tags["deepmine.data.mismatch_allowed"] = "true"
    return tags


def _user_file(cfg: DictConfig, root: Path) -> tuple[bool, dict[str, str]]:
    """A data file the user names (`data.path`, e.g. a CSV): made absolute in the config, so
    the recorded run does not depend on the directory it was started from. Inside `data/` it
    is versioned by DVC like every file there; outside, the run records its path and MD5."""
    from deepmine.data.csv_table import resolve
    from deepmine.data.tables import file_md5
    from deepmine.data.version import DATA_DIR

    path = resolve(cfg.data.path)
    if not path.is_file():
        raise DeepmineError(
            f"data.path={cfg.data.path}: {path} does not exist",
            "point data.path at a CSV file (relative to the current directory or the project)",
        )
    cfg.data.path = str(path)
    if path.is_relative_to((root / DATA_DIR).resolve()):
        return True, {}
    return False, {"deepmine.data.csv.path": str(path), "deepmine.data.csv.md5": file_md5(path)}


def _user_folder(cfg: DictConfig, root: Path) -> tuple[bool, dict[str, str]]:
    """An image folder the user names (`data.root`), as `_user_file` treats a file: absolute in
    the config; inside `data/` versioned by DVC, elsewhere recorded by its path and content hash
    (`folder_hash`: every image's relative path, size and MD5)."""
    from deepmine.data.csv_table import resolve
    from deepmine.data.image_folder import folder_hash
    from deepmine.data.version import DATA_DIR

    path = resolve(cfg.data.root)
    if not path.is_dir():
        raise DeepmineError(
            f"data.root={cfg.data.root}: {path} is not a folder",
            "point data.root at a folder of class folders of images (relative to the current "
            "directory or the project)",
        )
    cfg.data.root = str(path)
    if path.is_relative_to((root / DATA_DIR).resolve()):
        return True, {}
    return False, {
        "deepmine.data.image_folder.root": str(path),
        "deepmine.data.image_folder.hash": folder_hash(path),
    }


def connect_store(cfg: DictConfig):
    """The tracking store named by `cfg.logger`, or None for `logger=none` (shared with eval)."""
    if not cfg.get("logger"):
        return None
    from deepmine.tracking.store import connect

    return connect(cfg.logger.tracking_uri, cfg.logger.get("artifact_location"))


#: longest run name made up by `_run_name` (MLflow's lists and legends cut longer ones)
RUN_NAME_CHARS = 60
#: overrides a run name leaves out (fnmatch patterns): net and data lead the name; the rest say
#: where things are written or recorded, or switch checks and printing, not what is trained
NAME_SKIPS = (
    "net",
    "data",
    "register",
    "paths.*",
    "logger.*",
    "tags.*",
    "hydra.*",
    "hydra/*",
    "print_config",
    "allow_data_mismatch",
    "trust_recorded_targets",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
)


def _run_name(hydra_cfg, overrides: list[str], secrets: set[str] = frozenset()) -> str:
    """`<net>-<data>` and the overrides that say what else was chosen, each key shortened to
    its last part unless that is ambiguous: `cnn-fashion_mnist lr=0.003 seed=1`. Overrides of
    where things are written or recorded (`NAME_SKIPS`: `paths.*`, `logger.*`, `tags.*`, ...)
    are left out, secret values masked; the same command line gives the same name. At most
    `RUN_NAME_CHARS` characters."""
    from fnmatch import fnmatchcase

    from deepmine.provenance.secrets import mask_overrides
    from deepmine.sweeps.names import short_keys

    choices = hydra_cfg.runtime.choices
    chosen = []
    for override in mask_overrides(overrides, secrets):
        key, given, value = override.lstrip("+~").partition("=")
        if not given or any(fnmatchcase(key, pattern) for pattern in NAME_SKIPS):
            continue
        if "/" in value:  # a path: its last part says which
            value = value.rstrip("/").rsplit("/", 1)[-1]
        chosen.append((key, value))
    # keys shortened as a sweep's children are named: to the last part unless that is ambiguous
    short = short_keys(key for key, _ in chosen)
    words = [f"{choices.get('net') or 'net'}-{choices.get('data') or 'data'}"]
    words += [f"{short[key]}={value}" for key, value in chosen]
    name = " ".join(words)
    return name if len(name) <= RUN_NAME_CHARS else name[: RUN_NAME_CHARS - 1] + "…"


def _summary_line(cfg: DictConfig, seed: int) -> str:
    """The values that tell runs apart at a glance: net, optimizer and lr, data, seed
    (`cnn adam lr=0.003 fashion_mnist seed=2`); the run's `deepmine.summary` tag."""
    choices = HydraConfig.get().runtime.choices
    words = [choices.get("net"), choices.get("optimizer")]
    lr = (cfg.get("optimizer") or {}).get("lr")
    if isinstance(lr, int | float):
        words.append(f"lr={lr:g}")
    words += [choices.get("data"), f"seed={seed}"]
    return " ".join(str(w) for w in words if w)


def _description(summary: str, cfg: DictConfig, task, result: dict) -> str:
    """The run's description in the MLflow UI: its summary line and what it reached,
    `cnn adam lr=0.003 fashion_mnist seed=2 → val/acc_best 0.912, test/acc 0.905`."""
    reached = []
    metric, value = cfg.get("optimized_metric"), result["objective"]
    if metric and value is not None:
        reached.append(f"{metric} {value:.4g}")
    test = f"test/{getattr(task, 'monitor', '')}"
    if test != metric and test in result["metrics"]:
        reached.append(f"{test} {result['metrics'][test]:.4g}")
    return f"{summary} → {', '.join(reached)}" if reached else summary


def _check_register(cfg: DictConfig) -> None:
    """`+register=<name>` is `logger.register=<name>` (moved there, so the run's params and
    group do not depend on which was typed); refused before any run exists when it cannot be
    honoured."""
    from omegaconf import open_dict

    name = cfg.get("register")
    if "register" in cfg:
        with open_dict(cfg):
            del cfg["register"]
    if not cfg.get("logger"):
        if name is not None:
            raise DeepmineError(
                "register=<name> registers the run's model in MLflow, and logger=none records "
                "nothing",
                "drop logger=none, or drop +register",
            )
        return
    if name is None:
        name = cfg.logger.get("register")
    if name is None:
        return
    name = str(name)
    if not name.strip() or "/" in name or ":" in name:
        raise DeepmineError(
            f"register={name!r} is not a model name (MLflow refuses empty names and '/' or ':')",
            "name the model plainly, e.g. +register=fashion_cnn",
        )
    if not cfg.logger.get("log_model", True):
        raise DeepmineError(
            f"register={name} registers the run's model, and logger.log_model=false logs none",
            "drop logger.log_model=false",
        )
    with open_dict(cfg):
        cfg.logger.register = name


def _start_tags(cfg: DictConfig, overrides: list[str], seed: int, data_tags: dict, git) -> dict:
    import torch

    from deepmine.provenance.lineage import source_tags
    from deepmine.provenance.secrets import (
        MASK,
        is_secret_key,
        mask_overrides,
        mask_values,
        secret_values,
    )

    values = secret_values(cfg, overrides)
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
        "deepmine.summary": _summary_line(cfg, seed),
        **data_tags,
        **user_tags,
    }
    # a secret may also sit inside another value (a URL, a path): no tag carries one
    return {key: mask_values(value, values) for key, value in tags.items()}


def _record_start(run, cfg: DictConfig, output_dir: Path, git) -> None:
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
    from deepmine.provenance.secrets import mask_config, mask_text, mask_values, secret_values

    # what is recorded is masked (deepmine.provenance.secrets); `cfg` itself, what trains, is not
    hydra_cfg = HydraConfig.get()
    values = secret_values(cfg, hydra_cfg.overrides.task)
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


def _record_data_and_group(run, cfg: DictConfig, datamodule, data_tags: dict) -> None:
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


def _fit_and_test(cfg: DictConfig, parts, output_dir: Path, resume_from=None) -> dict:
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
    (output_dir / "metrics.json").write_text(json.dumps(_summary(cfg, result), indent=2))
    return result


def _summary(cfg: DictConfig, result: dict) -> dict:
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


def _record_end(run, cfg: DictConfig, parts, result: dict, output_dir: Path, pip_freeze) -> None:
    """Artifacts known at the end: best checkpoint, the task's plots, learning curves, metrics
    summary, environment."""
    from deepmine.plots import learning_curves_png

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
    run.log_json(_summary(cfg, result), "metrics.json")
    if cfg.logger.get("log_model", True) and trainer.is_global_zero:
        result["model"] = _log_model(run, cfg, parts, result)
    summary = run.client.get_run(run.run_id).data.tags.get("deepmine.summary", "")
    if summary:
        run.set_tags({"mlflow.note.content": _description(summary, cfg, task, result)})
    run.log_text(pip_freeze.result(timeout=120), "environment/pip-freeze.txt")


def _log_model(run, cfg: DictConfig, parts, result: dict):
    """The best weights (what `trainer.test` loaded and scored) in a task module built afresh
    from the config, so the MLflow model carries no trainer, test results or plots' data, and
    the first rows of a real test batch as its input example."""
    from deepmine.build import build_task
    from deepmine.tracking.model import log_model

    model = build_task(cfg)
    model.load_state_dict(parts.task.state_dict())
    batch = next(iter(parts.datamodule.test_dataloader()))
    inputs = batch[0] if isinstance(batch, list | tuple) else batch
    register = cfg.logger.get("register")
    return log_model(run, model, inputs, step=result["global_step"], register=register)


def _record_pruned(run, parts, exc: BaseException, output_dir: Path) -> None:
    """A pruned trial ends FINISHED (pruning is the search working), tagged as pruned, with the
    learning curves up to where it stopped; it is not tested."""
    from deepmine.plots import learning_curves_png

    run.set_tags({"deepmine.sweep.pruned": "true", "deepmine.status_reason": first_line(exc)})
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    history = parts.trainer.loggers[0].history
    title, metric = run.name or run.run_id[:8], parts.task.monitor
    run.log_file(
        learning_curves_png(history, plots / "learning_curves.png", title, metric), "plots"
    )


def _print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(f"[bold]{key}[/]").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    Console(stderr=True).print(tree)


def _print_summary(result: dict, task, run, store) -> None:
    lines = task.summary_lines(result["metrics"])
    if run is not None:
        lines.insert(0, f"MLflow run    {run.run_id} (experiment '{run.experiment_name}')")
        model = result.get("model")
        if model is not None:
            registered = ""
            if model.registered:
                name, version = model.registered.rsplit("/", 1)
                registered = f" (registered as '{name}' version {version})"
            lines.append(f"model         {model.uri}{registered}")
        lines.append(f"store         {store.uri}")
        if store.uri.startswith(("http://", "https://")):
            base = store.uri.rstrip("/")
            lines.append(f"open the runs {base}/{run.experiment_ui_path()}")
            lines.append(f"open the run  {base}/{run.ui_path()}")
        else:
            lines.append(
                f"open the UI   deepmine ui   (or: mlflow ui --backend-store-uri {store.uri})"
            )
            lines.append(f"then the runs http://127.0.0.1:5000/{run.experiment_ui_path()}")
            lines.append(f"and this run  http://127.0.0.1:5000/{run.ui_path()}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    from deepmine.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
