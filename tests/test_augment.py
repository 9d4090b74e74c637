"""`augment=none|flip|standard`: Keras ImageDataGenerator options on whole training batches.

Every option composes and builds; the transforms are what the presets say (a flip flips); a seed
fixes them; they run in `fit` on training batches only, never on validation, sanity-check or
test batches; and a resumed augmented run ends exactly as an uninterrupted one. Real data
(scikit-learn's digits), real Trainer runs in this process, one CLI run for the refusal.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import ROOT, one_line_error, run_cli
from deepmine.config import register_resolvers
from deepmine.data.augment import BatchAugmentation, PixelSpace, batch_augmentation
from deepmine.errors import DeepmineError
from deepmine.run.build import build, build_datamodule
from deepmine.runtime.seeding import seed_everything

register_resolvers()
CONF = ROOT / "conf"
OPTIONS = sorted(p.stem for p in (CONF / "augment").glob("*.yaml"))
#: a few batches of digits, quiet: what the in-process fits below train on
TINY = (
    "data=digits",
    "logger=none",
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
)


def compose_cfg(tmp_path: Path, *overrides: str, config: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=[f"paths.output_dir={tmp_path}", *overrides])


def digits(tmp_path: Path, *overrides: str):
    """A set-up digits datamodule built as a run builds it."""
    dm = build_datamodule(compose_cfg(tmp_path, "data=digits", *overrides))
    dm.setup()
    return dm


def train_batch(dm) -> torch.Tensor:
    return next(iter(dm.train_dataloader()))[0]


@pytest.mark.parametrize("data", ["digits", "fashion_mnist"])
@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_and_builds(tmp_path, option, data):
    cfg = compose_cfg(tmp_path, f"augment={option}", f"data={data}")
    dm = build_datamodule(cfg)
    if option == "none":
        assert cfg.augment is None and cfg.data.augment is None and dm.augmentation is None
        return
    assert OmegaConf.to_container(cfg.data.augment) == OmegaConf.to_container(cfg.augment)
    steps = [type(step).__name__ for step in dm.augmentation.steps]
    if option == "flip":  # the seed article's ImageDataGenerator(horizontal_flip=True)
        assert steps == ["RandomHorizontalFlip"]
    else:  # Keras' order: one affine warp, then the flip, then brightness
        assert steps == ["RandomAffine", "RandomHorizontalFlip", "ColorJitter"]
        affine = dm.augmentation.steps[0]
        assert affine.p == 1.0 and affine.flags["padding_mode"].name.lower() == "border"
        assert affine.flags["resample"].name.lower() == "bilinear"  # Keras' interpolation order 1
        generator = affine._param_generator
        assert generator.degrees == 10.0 and generator.translate == (0.1, 0.1)
        assert generator.scale == pytest.approx((0.9, 1.1, 0.9, 1.1))
        assert dm.augmentation.steps[2].brightness == (0.8, 1.2)
    assert dm.augmentation.steps[steps.index("RandomHorizontalFlip")].p == 0.5


def test_eval_composes_and_never_augments(tmp_path):
    cfg = compose_cfg(tmp_path, "run_id=abc", "data=digits", config="eval")
    assert OmegaConf.select(cfg, "augment") is None and cfg.data.augment is None


def test_every_key_overrides_on_a_preset(tmp_path):
    dm = digits(tmp_path, "augment=flip", "augment.rotation_range=5", "augment.fill_mode=reflect")
    affine = dm.augmentation.steps[0]
    assert affine._param_generator.degrees == 5.0
    assert affine.flags["padding_mode"].name.lower() == "reflection"


def test_flip_flips_each_sample_or_leaves_it_bit_for_bit(tmp_path):
    dm = digits(tmp_path, "augment=flip")
    x = train_batch(dm)
    torch.manual_seed(0)
    out = dm.augmentation(x)
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, x.flip(-1), strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped | kept).all()) and flipped.any() and kept.any()
    always = BatchAugmentation({"horizontal_flip": True})
    always.steps[0].p = 1.0
    assert torch.equal(always(x), torch.flip(x, [-1]))


def test_brightness_multiplies_pixels_as_keras_does(tmp_path):
    dm = digits(tmp_path, "data.normalize=standardize")
    x = train_batch(dm)
    darker = BatchAugmentation({"brightness_range": [0.5, 0.5]})
    darker.pixels = PixelSpace(dm.transform, dm.pixel_max)
    pixels = darker.pixels.to_pixels(x)
    assert torch.allclose(darker.pixels.to_pixels(darker(x)), pixels * 0.5, atol=1e-5)


def test_a_seed_fixes_the_augmentation(tmp_path):
    dm = digits(tmp_path, "augment=standard")
    x = train_batch(dm)

    def augmented(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return dm.augmentation(x)

    assert torch.equal(augmented(1), augmented(1))
    assert not torch.equal(augmented(1), augmented(2))
    assert not torch.equal(augmented(1), x)


@pytest.mark.parametrize("normalize", ["scale", "standardize", "none"])
def test_batches_keep_shape_dtype_device_and_the_data_normalization(tmp_path, normalize):
    dm = digits(tmp_path, "augment=standard", f"data.normalize={normalize}")
    x = train_batch(dm)
    out = dm.augmentation(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    pixels = PixelSpace(dm.transform, dm.pixel_max)
    raw = dm.tensors["train"][0][:4].to(torch.float32)
    assert torch.allclose(pixels.to_pixels(dm.transform(raw)), raw / dm.pixel_max, atol=1e-6)
    assert torch.allclose(pixels.from_pixels(raw / dm.pixel_max), dm.transform(raw), atol=1e-5)
    on_pixels = dm.augmentation.pixels.to_pixels(out)  # brightness clamps to [0, 1] pixels
    assert float(on_pixels.min()) >= -1e-5 and float(on_pixels.max()) <= 1 + 1e-5
    if torch.cuda.is_available():
        on_gpu = dm.augmentation(x.cuda())
        assert on_gpu.device == x.cuda().device and on_gpu.dtype == x.dtype


def test_the_hook_augments_only_while_training(tmp_path):
    dm = digits(tmp_path, "augment=standard")
    batch = next(iter(dm.train_dataloader()))
    for training in (False, True):
        dm.trainer = SimpleNamespace(training=training)
        x, y = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(x, batch[0]) is not training and y is batch[1]
    dm.trainer = None
    assert dm.on_after_batch_transfer(batch, 0) is batch


class BatchSpy(pl.Callback):
    """The batches the task is fed (after Lightning's transfer hooks), by stage."""

    def __init__(self):
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["val"].append(batch[0].clone())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append(batch[0].clone())


def test_fit_augments_training_batches_and_never_validation_sanity_or_test(tmp_path):
    cfg = compose_cfg(tmp_path, *TINY, "augment=standard", "trainer.max_epochs=1")
    seed_everything(cfg.seed, deterministic=True)
    spy = BatchSpy()
    parts = build(cfg, extra_callbacks=[spy])
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    parts.trainer.test(parts.task, datamodule=parts.datamodule, verbose=False)
    stored = digits(tmp_path)  # the same data, unaugmented, in the order of epoch 0
    train = [x for x, _ in stored.train_dataloader()][: len(spy.seen["train"])]
    assert len(train) == 6
    assert all(not torch.equal(seen, x) for seen, x in zip(spy.seen["train"], train, strict=True))
    val = next(iter(stored.val_dataloader()))[0]
    assert len(spy.seen["val"]) == 2  # the sanity check's batch and epoch 0's
    assert all(torch.equal(seen, val) for seen in spy.seen["val"])
    test = next(iter(stored.test_dataloader()))[0]
    assert torch.equal(spy.seen["test"][0], test)


class StopAtEpoch(pl.Callback):
    """Interrupt a fit as a kill would, after the checkpoint of the epoch before."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise InterruptedError(f"stopped at epoch {self.epoch}")


def fitted(cfg, ckpt_path=None, stop_at: int | None = None):
    """A fit as `deepmine train` does it: seed, build from the config (its callbacks include
    `RngStateInCheckpoint` and the last-checkpoint writer), fit from `ckpt_path` if given."""
    seed_everything(cfg.seed, deterministic=True)
    parts = build(cfg, extra_callbacks=[StopAtEpoch(stop_at)] if stop_at is not None else [])
    parts.trainer.fit(
        parts.task, datamodule=parts.datamodule, ckpt_path=ckpt_path, weights_only=True
    )
    return parts


def test_resumed_augmented_run_equals_uninterrupted(tmp_path):
    def config(name: str):
        return compose_cfg(tmp_path / name, *TINY, "augment=standard", "trainer.max_epochs=3")

    uninterrupted = fitted(config("whole"))
    with pytest.raises(InterruptedError):
        fitted(config("cut"), stop_at=1)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed = fitted(config("cut"), ckpt_path=str(last))
    assert resumed.trainer.current_epoch == uninterrupted.trainer.current_epoch == 3
    whole, cut = uninterrupted.task.state_dict(), resumed.task.state_dict()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)  # every weight, exactly

    def results(parts) -> dict:  # every final metric but the wall time (time/epoch_s)
        metrics = parts.trainer.callback_metrics.items()
        return {k: float(v) for k, v in metrics if not k.startswith("time/")}

    assert results(resumed) == results(uninterrupted) and "val/acc" in results(resumed)
    unaugmented = fitted(compose_cfg(tmp_path / "none", *TINY, "trainer.max_epochs=3"))
    plain = unaugmented.task.state_dict()
    assert not all(torch.equal(whole[k], plain[k]) for k in whole)  # augmentation trained


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+augment.vertical_flip=true", "augment.vertical_flip is not an augmentation setting"),
        ("augment.rotation_range=400", "augment.rotation_range=400 is outside [0, 180)"),
        ("augment.width_shift_range=2", "augment.width_shift_range=2 is outside [0, 1)"),
        ("augment.fill_mode=wrap", "augment.fill_mode='wrap' is not one of nearest"),
        ("augment.brightness_range=[1.2,0.8]", "augment.brightness_range="),
        ("augment.horizontal_flip=1", "is not true or false"),
    ],
)
def test_bad_settings_are_refused_before_a_run(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, "data=digits", "augment=standard", override)
    with pytest.raises(DeepmineError, match=re.escape(message)):
        build_datamodule(cfg)


def test_settings_that_change_nothing_add_no_work():
    assert batch_augmentation(None) is None
    assert batch_augmentation({}) is None
    assert batch_augmentation({"horizontal_flip": False, "brightness_range": [1, 1]}) is None
    with pytest.raises(DeepmineError, match="augment must be a mapping"):
        batch_augmentation("flip")


def test_augmenting_data_without_images_is_one_line_before_any_run(tmp_path):
    with pytest.raises(DeepmineError, match=r"no images"):
        build_datamodule(compose_cfg(tmp_path, "data=diabetes", "task=regression", "augment=flip"))
    proc = run_cli(
        "train",
        "data=diabetes",
        "task=regression",
        "augment=flip",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "augment applies to image batches, but this data (DiabetesDataModule) has no images" in (
        one_line_error(proc)
    )
    assert not (tmp_path / "store" / "mlflow.db").exists()  # refused before the store opened
