"""Every option of conf/ composes, and what it describes instantiates and behaves as documented.

In-process Hydra Compose API on the real conf/ tree; real data for the datamodules.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT
from deepmine.config import register_resolvers
from deepmine.run.build import build, build_callbacks, build_task

register_resolvers()
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(tmp_path: Path, *overrides: str, config: str = "train", conf: Path = CONF):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        return compose(config, overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_groups_have_the_documented_options():
    assert options("data") == [
        "co2",
        "csv",
        "diabetes",
        "digits",
        "elnino",
        "fashion_mnist",
        "image_folder",  # tests/test_image_folder.py
        "series_csv",
        "sunspots",
    ]
    assert options("net") == [
        "autoencoder",  # tests/test_clustering.py
        "cnn",
        "conv_autoencoder",  # tests/test_clustering.py
        "gru",
        "lstm",
        "mlp",
        "seed_mlp",
        "transformer",
    ]
    # a task is a folder of src/deepmine/tasks/ plus its config: neither comes without the other
    task_folders = sorted(
        p.name
        for p in (ROOT / "src" / "deepmine" / "tasks").iterdir()
        if (p / "__init__.py").exists()
    )
    assert options("task") == task_folders
    assert {"classification", "clustering", "forecasting", "regression"} <= set(task_folders)
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "step"]
    assert options("trainer") == ["cpu", "ddp", "default", "gpu"]
    assert options("logger") == ["mlflow", "none"]
    assert options("debug") == ["fast"]
    assert options("launcher") == ["joblib", "ray", "slurm", "submitit_local"]
    assert options("hparams_search") == ["fashion_mnist_optuna", "grid"]
    assert options("hydra/sweeper") == ["grid", "optuna"]
    assert options("augment") == ["flip", "none", "standard"]  # tests/test_augment.py


def compose_hydra(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        (None, "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("slurm", "hydra_plugins.deepmine_launchers.submitit_slurm.SlurmLauncher"),  # test_slurm
        ("ray", "hydra_plugins.deepmine_launchers.ray_launcher.RayLauncher"),  # test_ray_launcher
    ],
)
def test_launcher_options_pick_the_hydra_launcher(tmp_path, launcher, target):
    overrides = [f"launcher={launcher}"] if launcher else []
    cfg = compose_hydra(tmp_path, *overrides)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.sweeper._target_.endswith("deepmine_sweepers.sweepers.GridSweeper")
    if launcher == "joblib":
        assert cfg.hydra.launcher.n_jobs == 2
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition is None
        assert cfg.hydra.launcher.signal_delay_s == 120
    if launcher == "ray":
        assert cfg.hydra.launcher.address is None
        assert (cfg.hydra.launcher.num_cpus, cfg.hydra.launcher.num_gpus) == (1, 0)


def test_optuna_search_config_is_a_valid_search(tmp_path):
    import optuna

    from deepmine.sweeps.space import parse

    cfg = compose_hydra(tmp_path, "hparams_search=fashion_mnist_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("deepmine_sweepers.sweepers.OptunaSweeper")
    assert sweeper.study_name == "fashion_mnist_optuna" and sweeper.direction == "maximize"
    assert sweeper.storage.startswith("sqlite:////") and sweeper.storage.endswith("optuna.db")
    space = parse([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space.distributions) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "net.hidden_sizes",
        "net.dropout",
        "data.batch_size",
    }
    assert isinstance(instantiate(sweeper.sampler), optuna.samplers.TPESampler)
    assert isinstance(instantiate(sweeper.pruner), optuna.pruners.MedianPruner)
    # one process per study unless shared: several workers on one study, a dead one's trials
    # queued again after stale_after_s (tests/test_optuna_shared.py, tests/test_sweep_units.py)
    assert sweeper.shared is False and sweeper.stale_after_s == 120
    # every point of the space composes into a buildable run
    for choice in space.distributions["net.hidden_sizes"].choices:
        run = compose_cfg(
            tmp_path, "hparams_search=fashion_mnist_optuna", f"net.hidden_sizes={choice}"
        )
        assert run.net._target_.endswith("MLP") and run.optimizer._target_.endswith("AdamW")
        build_task(run)


def test_ddp_trainer_is_two_gloo_cpu_processes(tmp_path):
    from deepmine.runtime.distributed import is_ddp, local_world_size

    cfg = compose_cfg(tmp_path, "trainer=ddp")
    assert is_ddp(cfg) and local_world_size(cfg) == 2
    strategy = instantiate(cfg.trainer.strategy)
    assert strategy.__class__.__name__ == "DDPStrategy"
    assert strategy._process_group_backend == "gloo"
    assert strategy._timeout.total_seconds() == 300
    assert not is_ddp(compose_cfg(tmp_path))


#: the image sets; tables and series have their own tests (test_tables.py, test_series.py)
IMAGE_DATA = ["digits", "fashion_mnist"]
FLAT_NETS = ["mlp", "seed_mlp"]
AUTOENCODERS = ["autoencoder", "conv_autoencoder"]


@pytest.mark.parametrize("data", IMAGE_DATA)
def test_datamodule_loads_real_data_in_memory(tmp_path, data):
    cfg = compose_cfg(tmp_path, f"data={data}")
    dm = instantiate(cfg.data)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert list(x.shape) == [cfg.data.batch_size, *cfg.data.input_shape]
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # normalize=scale
    sizes = {split: len(t[0]) for split, t in dm.tensors.items()}
    expected_test = {"fashion_mnist": 10_000, "digits": 359}[data]
    assert sizes["test"] == expected_test
    assert set(range(cfg.data.num_classes)) == set(dm.tensors["train"][1].tolist())


def test_val_split_is_fixed_by_split_seed_not_by_seed(tmp_path):
    def val_targets(*overrides):
        dm = instantiate(compose_cfg(tmp_path, "data=digits", *overrides).data)
        dm.setup()
        return dm.tensors["val"][1]

    assert torch.equal(val_targets("seed=1"), val_targets("seed=2"))
    assert not torch.equal(val_targets("data.split_seed=0"), val_targets("data.split_seed=1"))
    assert len(val_targets("data.val_size=100")) == 100


@pytest.mark.parametrize("normalize", ["scale", "standardize", "none"])
def test_normalize_options(tmp_path, normalize):
    dm = instantiate(compose_cfg(tmp_path, "data=digits", f"data.normalize={normalize}").data)
    x = dm.normalized("train")[0]
    if normalize == "scale":
        assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    elif normalize == "standardize":
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    else:
        assert float(x.max()) == 16.0


@pytest.mark.parametrize("data", IMAGE_DATA)
@pytest.mark.parametrize("net", options("net"))
def test_every_net_fits_every_image_data(tmp_path, net, data):
    cfg = compose_cfg(tmp_path, f"net={net}", f"data={data}")
    model = instantiate(cfg.net)
    x = torch.rand(3, *cfg.data.input_shape)
    if net in AUTOENCODERS:  # task=clustering: the net rebuilds its input
        assert model(x).shape == x.shape
    else:
        assert model(x).shape == (3, cfg.data.num_classes)


@pytest.mark.parametrize("net", options("net"))
def test_flat_tables_fit_flat_nets_and_sequence_nets_say_so(tmp_path, net):
    cfg = compose_cfg(tmp_path, f"net={net}", "task=regression", "data=diabetes")
    if net in FLAT_NETS:
        assert instantiate(cfg.net)(torch.rand(3, 10)).shape == (3, 1)
    elif net == "autoencoder":
        assert instantiate(cfg.net)(torch.rand(3, 10)).shape == (3, 10)
    elif net == "conv_autoencoder":
        with pytest.raises(Exception, match="net=autoencoder"):
            instantiate(cfg.net)
    else:
        with pytest.raises(Exception, match="net=mlp"):
            instantiate(cfg.net)


def test_seed_mlp_is_the_seed_article_model(tmp_path):
    model = instantiate(compose_cfg(tmp_path, "net=seed_mlp").net)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert model.layers[1].out_features == 64 and model.layers[3].p == 0.2


@pytest.mark.parametrize("scheduler", options("scheduler"))
@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_optimizer_and_scheduler_complete_in_configure_optimizers(tmp_path, optimizer, scheduler):
    cfg = compose_cfg(tmp_path, f"optimizer={optimizer}", f"scheduler={scheduler}")
    configured = build_task(cfg).configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(opt).__name__.lower() == optimizer
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if scheduler == "none":
        assert not isinstance(configured, dict)
    else:
        sched = configured["lr_scheduler"]["scheduler"]
        expected = {"cosine": "CosineAnnealingLR", "step": "StepLR"}[scheduler]
        assert type(sched).__name__ == expected
    if scheduler == "cosine":
        assert sched.T_max == cfg.trainer.max_epochs


@pytest.mark.parametrize("scheduler", ["none", "cosine"])
def test_the_lr_monitor_runs_only_when_a_scheduler_changes_the_rate(tmp_path, scheduler):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from deepmine.run.build import build_callbacks

    callbacks = _unfolded(build_callbacks(compose_cfg(tmp_path, f"scheduler={scheduler}")))
    monitors = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    assert len(monitors) == (scheduler != "none")
    assert len(callbacks) >= 6  # the other callbacks stay


def _unfolded(callbacks: list) -> list:
    """The callbacks with deepmine's folded ones listed one by one."""
    from deepmine.runtime.callbacks import FoldedCallbacks

    flat = []
    for callback in callbacks:
        flat += callback.members if isinstance(callback, FoldedCallbacks) else [callback]
    return flat


def test_task_loss_is_configurable(tmp_path):
    task = build_task(compose_cfg(tmp_path, "task.loss.label_smoothing=0.1"))
    assert task.loss_fn.label_smoothing == pytest.approx(0.1)


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_cpu_trainers_instantiate_deterministic(tmp_path, trainer):
    cfg = compose_cfg(tmp_path, f"trainer={trainer}")
    t = instantiate(cfg.trainer, logger=False)
    assert isinstance(t, pl.Trainer)
    assert torch.are_deterministic_algorithms_enabled()
    if trainer == "cpu":
        assert t.accelerator.__class__.__name__ == "CPUAccelerator"


def test_gpu_trainer_requests_a_gpu(tmp_path):
    cfg = compose_cfg(tmp_path, "trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.deterministic is True
    if torch.cuda.is_available():
        assert instantiate(cfg.trainer, logger=False).accelerator.__class__.__name__ == (
            "CUDAAccelerator"
        )
    else:
        with pytest.raises(Exception, match=r"(?i)gpu|cuda"):
            instantiate(cfg.trainer, logger=False)


def test_callbacks_are_name_keyed_and_each_can_be_nulled(tmp_path):
    cfg = compose_cfg(tmp_path, "scheduler=cosine")  # the lr monitor runs with a scheduler
    built = build_callbacks(cfg)
    # deepmine's three reach Lightning as one (FoldedCallbacks), Lightning's stay apart
    assert [type(c).__name__ for c in built][-1] == "FoldedCallbacks" and len(built) == 5
    names = {type(c).__name__ for c in _unfolded(built)}
    assert names == {
        "ModelCheckpoint",
        "EarlyStopping",
        "RichProgressBar",
        "LearningRateMonitor",
        "StopOnNonFiniteLoss",
        "RngStateInCheckpoint",
        "EpochTimer",
    }
    for key in cfg.callbacks:
        left = build_callbacks(compose_cfg(tmp_path, "scheduler=cosine", f"callbacks.{key}=null"))
        assert len(_unfolded(left)) == len(names) - 1
    finite = instantiate(cfg.callbacks.finite_loss)
    assert finite.check_every_n_steps == cfg.trainer.log_every_n_steps
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and checkpoint.monitor == "val/acc"


def test_folded_callbacks_call_each_hook_on_the_members_that_define_it_in_order():
    import lightning.pytorch as pl

    from deepmine.runtime.callbacks import FoldedCallbacks, find_callback, fold, listens

    calls = []

    class Starts(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            calls.append(("starts", trainer))

    class Both(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            calls.append(("both", trainer))

        def on_train_epoch_end(self, trainer, module):
            calls.append(("both-end", trainer))

    starts, both = Starts(), Both()
    folded = FoldedCallbacks([starts, both])
    folded.on_train_epoch_start("t", "m")
    folded.on_train_epoch_end("t", "m")
    assert calls == [("starts", "t"), ("both", "t"), ("both-end", "t")]
    assert listens(folded, "on_train_epoch_start") and not listens(folded, "on_train_batch_end")
    assert find_callback([folded], Both) is both and find_callback([folded], int) is None
    # only deepmine's own callbacks fold: these two are this test's, so they stay apart
    assert fold([starts, both]) == [starts, both]


def test_logger_options(tmp_path):
    mlflow_cfg = compose_cfg(tmp_path, "logger=mlflow")
    uri = mlflow_cfg.logger.tracking_uri
    assert uri == f"sqlite:///{ROOT}/mlflow.db" and uri.startswith("sqlite:////")
    assert mlflow_cfg.logger.offline is False and mlflow_cfg.logger.failover is False
    assert mlflow_cfg.logger.spool_dir == f"{ROOT}/mlruns-offline"
    assert compose_cfg(tmp_path, "logger=none").logger is None


def test_debug_fast_limits_batches(tmp_path):
    cfg = compose_cfg(tmp_path, "debug=fast")
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 5
    assert cfg.print_config is False


def test_paths_are_absolute_and_anchored_at_the_project(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert cfg.paths.root_dir == str(ROOT)
    for key in ("data_dir", "log_dir"):
        assert Path(cfg.paths[key]).is_absolute() and cfg.paths[key].startswith(str(ROOT))
    assert cfg.data.data_dir == f"{ROOT}/data/fashion_mnist"


def test_hydra_run_dirs_are_unique_per_microsecond(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    pattern = rf"^{ROOT}/logs/train/runs/\d{{4}}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{{6}}$"
    assert re.match(pattern, cfg.hydra.run.dir), cfg.hydra.run.dir
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.job_logging.root.handlers == ["file"]


def test_optional_local_config_is_composed_last(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    assert compose_cfg(tmp_path, conf=conf).trainer.max_epochs == 5
    (conf / "local" / "default.yaml").write_text("trainer:\n  max_epochs: 7\n")
    assert compose_cfg(tmp_path, conf=conf).trainer.max_epochs == 7


def test_eval_config_composes_with_every_group(tmp_path):
    cfg = compose_cfg(tmp_path, "run_id=abc", config="eval")
    assert cfg.run_id == "abc" and cfg.ckpt_path is None
    assert OmegaConf.select(cfg, "callbacks") is None


def test_whole_run_builds_before_any_logger(tmp_path):
    parts = build(compose_cfg(tmp_path, "data=digits", "net=cnn"))
    assert parts.trainer.loggers == []
    assert type(parts.task.net).__name__ == "SmallCNN"


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "sigmoid"])
def test_mlp_activations(tmp_path, activation):
    model = instantiate(compose_cfg(tmp_path, "net=mlp", f"net.activation={activation}").net)
    assert [type(m).__name__.lower() for m in model.layers][2] == activation
    assert [m.out_features for m in model.layers if isinstance(m, torch.nn.Linear)] == [
        256,
        128,
        10,
    ]


def test_cnn_options_shape_the_net(tmp_path):
    cfg = compose_cfg(
        tmp_path, "net=cnn", "net.channels=[8,16,32]", "net.kernel_size=3", "net.dropout=0.5"
    )
    model = instantiate(cfg.net)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and convs[0].kernel_size == (3, 3)
    assert isinstance(model.head[1], torch.nn.Dropout) and model.head[1].p == 0.5
    assert model.head[-1].in_features == 32 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_eval_batch_size_sets_val_and_test_batches(tmp_path):
    dm = instantiate(compose_cfg(tmp_path, "data=digits", "data.eval_batch_size=100").data)
    dm.setup()
    assert len(dm.val_dataloader()) == -(-len(dm.tensors["val"][0]) // 100)
    assert [len(b[0]) for b in dm.test_dataloader()] == [100, 100, 100, 59]
