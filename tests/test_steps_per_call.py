"""`task.steps_per_call=k`: k optimizer steps inside one Lightning step train the same net as
Lightning's own loop, bit for bit, and log the same metrics at the same steps. `auto`, the
default, is 8 with the training batches fetched as blocks of 8 (`TensorBatches(block=8)`), and 1,
said in one line, where k > 1 would not be the same run (`deepmine.run.fast_path`)."""

from __future__ import annotations

import pytest
import torch

from conftest import Sandbox, one_line_error

# 3 epochs of digits at batch 32 (39 batches, not a multiple of 8: the last call of an epoch
# runs 7 steps); the learning rate drops every epoch (the scheduler must step where Lightning
# steps it); train/loss every 3 steps (logging steps fall inside the calls).
CONFIG = (
    "data=digits",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=3",
    "scheduler=step",
    "scheduler.step_size=1",
    "scheduler.gamma=0.5",
    "print_config=false",
)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same seed trained with k=1 (Lightning's loop) and as every run is by default
    (`auto`: k=8, blocks of 8 batches): `{k: (sandbox, run)}`."""
    runs = {}
    for k, override in ((1, ("task.steps_per_call=1",)), (8, ())):
        box = Sandbox(tmp_path_factory.mktemp(f"k{k}"))
        proc = box.train(*CONFIG, *override)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "task.steps_per_call=auto is 1" not in proc.stderr
        (run,) = box.runs()
        runs[k] = box, run
    return runs


def test_the_default_is_eight_batches_a_step_and_the_run_records_it(two_runs):
    assert two_runs[8][1].data.params["task.steps_per_call"] == "8"
    assert two_runs[1][1].data.params["task.steps_per_call"] == "1"


def _last_checkpoint(box: Sandbox) -> dict:
    (path,) = box.logs.glob("train/runs/*/*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_same_weights_bit_for_bit(two_runs):
    one, eight = (_last_checkpoint(box) for box, _ in (two_runs[1], two_runs[8]))
    assert one["state_dict"].keys() == eight["state_dict"].keys()
    for name, tensor in one["state_dict"].items():
        assert torch.equal(tensor, eight["state_dict"][name]), name
    # the global step counts optimizer steps, and the learning rate was decayed as often
    assert one["global_step"] == eight["global_step"] == 3 * 39
    lrs = [[g["lr"] for g in c["optimizer_states"][0]["param_groups"]] for c in (one, eight)]
    assert lrs[0] == lrs[1]


def test_same_metrics_at_the_same_steps(two_runs):
    (box1, run1), (box8, run8) = two_runs[1], two_runs[8]
    keys = {k for k in run1.data.metrics if not k.startswith("time/")}  # wall times differ
    assert keys == {k for k in run8.data.metrics if not k.startswith("time/")}
    assert "train/loss" in keys and "val/acc" in keys and "lr-Adam" in keys
    for key in sorted(keys):

        def history(box, run, key=key):
            found = box.client().get_metric_history(run.info.run_id, key)
            return sorted((m.step, m.value) for m in found)

        assert history(box1, run1) == history(box8, run8), key
    losses = box1.client().get_metric_history(run1.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(2, 3 * 39, 3))


#: clipping tight enough to act on every step, and groups of 3 batches (39 batches an epoch:
#: 13 optimizer steps)
CLIP_AND_ACCUMULATE = ("+trainer.gradient_clip_val=0.05", "+trainer.accumulate_grad_batches=3")


@pytest.fixture(scope="module")
def two_clipped_runs(tmp_path_factory):
    """`two_runs` with gradient clipping and accumulation: Lightning's own loop does them at
    k=1, the task does them at k=8 (the Trainer is built without them, `build`)."""
    runs = {}
    for k in (1, 8):
        box = Sandbox(tmp_path_factory.mktemp(f"clipped-k{k}"))
        proc = box.train(*CONFIG, *CLIP_AND_ACCUMULATE, f"task.steps_per_call={k}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        (run,) = box.runs()
        runs[k] = box, run
    return runs


def test_clipping_and_accumulation_give_the_same_weights_and_metrics(two_clipped_runs, two_runs):
    (box1, run1), (box8, run8) = two_clipped_runs[1], two_clipped_runs[8]
    one, eight = _last_checkpoint(box1), _last_checkpoint(box8)
    for name, tensor in one["state_dict"].items():
        assert torch.equal(tensor, eight["state_dict"][name]), name
    assert one["global_step"] == eight["global_step"] == 3 * 13  # optimizer steps
    unclipped = _last_checkpoint(two_runs[1][0])["state_dict"]  # the options did act
    assert not all(torch.equal(t, unclipped[n]) for n, t in one["state_dict"].items())
    assert run8.data.params["trainer.accumulate_grad_batches"] == "3"
    for key in ("train/loss", "train/loss_epoch", "val/acc", "lr-Adam"):
        history = [
            sorted((m.step, m.value) for m in box.client().get_metric_history(run.info.run_id, key))
            for box, run in ((box1, run1), (box8, run8))
        ]
        assert history[0] == history[1], key
    # train/loss on every 3rd optimizer step (the group's last batch), not on every batch
    losses = box8.client().get_metric_history(run8.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(2, 3 * 13, 3))


def test_a_bad_accumulation_is_one_line_error(sandbox):
    proc = sandbox.train(
        "debug=fast", "data=digits", "task.steps_per_call=4", "+trainer.accumulate_grad_batches=0"
    )
    assert proc.returncode == 2
    assert "accumulate_grad_batches=0" in one_line_error(proc)
    assert sandbox.runs() == []  # refused before any run opened


def test_the_nan_check_keeps_its_interval_when_steps_jump_by_k():
    """`callbacks.finite_loss` reads its device-side sum each time global_step passes a
    multiple of check_every_n_steps, also when global_step moves 8 steps per Lightning step."""
    from types import SimpleNamespace

    from deepmine.runtime.callbacks import NonFiniteLoss, StopOnNonFiniteLoss

    guard = StopOnNonFiniteLoss(check_every_n_steps=50)
    trainer = SimpleNamespace(global_step=0)
    guard.on_train_epoch_start(trainer, None)
    checked_at = None
    for step in range(8, 200, 8):
        trainer.global_step = step
        try:
            guard.on_train_batch_end(trainer, None, torch.tensor(float("nan")), None, 0)
        except NonFiniteLoss:
            checked_at = step
            break
    assert checked_at == 56  # the first call past step 50, not step 200 (lcm of 8 and 50)


class _CountSteps:
    """A callback that listens to the optimizer step (so Lightning's dispatch must stay)."""

    def __new__(cls):
        import lightning.pytorch as pl

        class CountSteps(pl.Callback):
            def __init__(self):
                self.calls = 0

            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                self.calls += 1

        return CountSteps()


def _fit_digits(k: int, *callbacks, profiler=None, clip=None, accumulate=1):
    """Two epochs of the MLP on digits in this process: the task, after fit. `clip` and
    `accumulate` go to the Trainer at k=1 and to the task at k>1, as `build` hands them."""
    import functools

    import lightning.pytorch as pl

    from deepmine.data.digits import DigitsDataModule
    from deepmine.nets.mlp import MLP
    from deepmine.tasks.classification import ClassificationTask

    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(input_shape=[1, 8, 8], num_classes=10, batch_size=32)
    net = MLP([1, 8, 8], 10, hidden_sizes=[16], dropout=0.2)
    task = ClassificationTask(
        net,
        10,
        functools.partial(torch.optim.Adam, lr=1e-3),
        steps_per_call=k,
        gradient_clip_val=clip,
        accumulate_grad_batches=accumulate,
    )
    trainer = pl.Trainer(
        gradient_clip_val=clip if k == 1 else None,
        accumulate_grad_batches=accumulate if k == 1 else 1,
        max_epochs=2,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        profiler=profiler,
    )
    trainer.fit(task, datamodule=data)
    return task, trainer


def test_nobody_listening_means_direct_calls_and_a_listener_is_still_called():
    """With the default hooks unheard, inner steps call the batch hooks and the optimizer
    directly; a callback on the optimizer step (or a profiler) brings Lightning's dispatch
    back, called once per optimizer step. All three train the same weights."""
    plain, trainer = _fit_digits(8)
    assert plain._direct_hooks is not None
    steps = 2 * trainer.num_training_batches  # 41 an epoch, not a multiple of 8
    assert trainer.global_step == steps
    counter = _CountSteps()
    heard, trainer = _fit_digits(8, counter)
    assert heard._direct_hooks is None
    assert counter.calls == trainer.global_step == steps
    profiled, _ = _fit_digits(8, profiler="simple")
    assert profiled._direct_hooks is None
    for task in (heard, profiled):
        for name, tensor in plain.state_dict().items():
            assert torch.equal(tensor, task.state_dict()[name]), name


def test_clipping_and_accumulation_on_the_direct_path_and_through_lightnings_dispatch():
    """Both ways of running an inner step clip and accumulate as Lightning's own loop does:
    41 batches an epoch in groups of 3 (the last group of 2 steps too)."""
    own, trainer = _fit_digits(1, clip=0.05, accumulate=3)
    direct, _ = _fit_digits(8, clip=0.05, accumulate=3)
    dispatched, dispatched_trainer = _fit_digits(8, clip=0.05, accumulate=3, profiler="simple")
    assert direct._direct_hooks is not None and dispatched._direct_hooks is None
    assert trainer.global_step == dispatched_trainer.global_step == 2 * 14
    for task in (direct, dispatched):
        for name, tensor in own.state_dict().items():
            assert torch.equal(tensor, task.state_dict()[name]), name
    unclipped, _ = _fit_digits(8, accumulate=3)  # clipping did act
    assert not all(torch.equal(t, unclipped.state_dict()[n]) for n, t in own.state_dict().items())


# --- blocks: one fetch for k batches ------------------------------------------------------


class _Shift:
    """A transform that is not elementwise-declared (runs batch by batch): adds the batch's
    own mean, so a wrong grouping of rows would show."""

    def __call__(self, x):
        x = x.to(torch.float32)
        return x + x.mean()


@pytest.mark.parametrize("transform", [None, "normalize", "shift"])
@pytest.mark.parametrize(("features", "batch_size", "max_batches"), [(8, 32, None), (3, 5, 7)])
def test_blocks_hold_the_same_batches_in_the_same_order(
    transform, features, batch_size, max_batches
):
    """A blocked epoch is the unblocked epoch's batches, grouped: the same rows, values and
    dtypes, aligned as fresh tensors (3 float features x 5 rows = 60 bytes: copied), with the
    batch limit counted in batches; the next epoch reshuffles the same way."""
    from deepmine.data.batches import ALIGNMENT, BatchBlock, Normalize, TensorBatches

    x = torch.arange(101 * features, dtype=torch.float32).reshape(101, features)
    y = torch.arange(101)
    made = {None: None, "normalize": Normalize(2.0, 1.0, 3.0), "shift": _Shift()}[transform]

    def loader(block):
        return TensorBatches(
            x, y, batch_size, shuffle=True, seed=3, transform=made, block=block,
            max_batches=max_batches,
        )  # fmt: skip

    one, blocked = loader(1), loader(4)
    assert blocked.batches() == one.batches() == len(one)
    assert len(blocked) == -(-len(one) // 4)
    for _epoch in range(2):
        flat = list(one)
        blocks = list(blocked)
        assert all(isinstance(b, BatchBlock) for b in blocks)
        assert [b.first for b in blocks] == list(range(0, len(flat), 4))
        grouped = [batch for block in blocks for batch in block]
        assert len(grouped) == len(flat)
        for (bx, by), (fx, fy) in zip(grouped, flat, strict=True):
            assert torch.equal(bx, fx) and torch.equal(by, fy) and bx.dtype == fx.dtype
            assert bx.data_ptr() % ALIGNMENT == 0 and by.data_ptr() % ALIGNMENT == 0


def _compose(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import ROOT
    from deepmine.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


#: a few epochs of digits, quiet, in this process
QUIET = (
    "data=digits",
    "logger=none",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "+trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
)


def _fit(tmp_path, *overrides):
    """`deepmine train`'s build and fit in this process: `(parts, weights)`."""
    from deepmine.run.build import build
    from deepmine.runtime.seeding import seed_everything

    cfg = _compose(tmp_path, *QUIET, *overrides)
    seed_everything(cfg.seed, deterministic=True)
    parts = build(cfg)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return parts, parts.task.state_dict()


@pytest.mark.parametrize(
    "extra",
    [
        # debug=fast's count limit, applied by the loader (Lightning would count blocks)
        ("+trainer.limit_train_batches=13",),
        # the augmentation draws its randomness batch by batch, as in Lightning's loop
        ("augment=standard", "+trainer.limit_train_batches=10"),
    ],
    ids=["batch_limit", "augmented"],
)
def test_blocks_train_what_lightnings_loop_trains(tmp_path, extra):
    own, own_weights = _fit(tmp_path / "one", "task.steps_per_call=1", *extra)
    auto, auto_weights = _fit(tmp_path / "auto", *extra)
    assert auto.task.steps_per_call == 8 and auto.datamodule.train_block == 8
    assert auto.trainer.limit_train_batches == 1.0  # the loader counts the batches
    assert own.trainer.global_step == auto.trainer.global_step == 2 * int(extra[-1][-2:])
    for name, tensor in own_weights.items():
        assert torch.equal(tensor, auto_weights[name]), name


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (("trainer=ddp",), "more than one device (DDP)"),
        (("trainer.precision=bf16-mixed",), "trainer.precision=bf16-mixed"),
        (("+trainer.val_check_interval=5",), "trainer.val_check_interval=5 counts"),
        (("+trainer.overfit_batches=2",), "trainer.overfit_batches counts"),
        (
            ("+callbacks.model_checkpoint.every_n_train_steps=10",),
            "callback ModelCheckpoint acts on every training batch",
        ),
        (("scheduler=step", "callbacks.lr_monitor.logging_interval=step"), "LearningRateMonitor"),
        (("task.steps_per_call=3",), None),  # a number is taken as it is
        ((), None),
        (("scheduler=step",), None),  # the epoch-interval monitor does not count batches
    ],
)
def test_auto_says_why_it_is_one(tmp_path, overrides, reason):
    from deepmine.run import fast_path
    from deepmine.run.build import build_callbacks

    cfg = _compose(tmp_path, "data=digits", *overrides)
    found = fast_path.why_not(cfg, build_callbacks(cfg))
    if reason is None:
        assert found is None
        steps = fast_path.resolve(cfg, build_callbacks(cfg))
        assert (
            steps == cfg.task.steps_per_call == (3 if "task.steps_per_call=3" in overrides else 8)
        )
    else:
        assert reason in found
        assert fast_path.resolve(cfg, build_callbacks(cfg)) == cfg.task.steps_per_call == 1


def test_a_callback_on_every_batch_gets_one_batch_a_step_and_a_line(sandbox):
    proc = sandbox.train(
        "debug=fast", "data=digits", "+callbacks.model_checkpoint.every_n_train_steps=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "task.steps_per_call=auto" in line]
    assert lines == [
        "task.steps_per_call=auto is 1 (one batch per step): callback ModelCheckpoint acts on "
        "every training batch (on_train_batch_end: every_n_train_steps/train_time_interval); "
        "set task.steps_per_call=8 to call it once per 8 batches"
    ]
    (run,) = sandbox.runs()
    assert run.data.params["task.steps_per_call"] == "1"
