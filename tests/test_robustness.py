"""Adversarial robustness: the attacks against closed forms and each other, the evaluation after
the test, robust validation (checkpoints selected by val/robust_acc), adversarial training end to
end and both evaluations under DDP (real subprocess runs into a real SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_configs import compose_cfg
from test_train_records import artifact_paths
from torch import nn
from torch.nn import functional as F

from deepmine.data.batches import Normalize
from deepmine.run.build import build_task
from deepmine.tasks.classification.attacks import (
    PixelModel,
    SampleNoise,
    attack,
    attack_context,
    fgsm,
    pgd,
)

FAST = ("data=digits", "net=cnn", "debug=fast")


def linear_model(seed: int = 0, features: int = 16, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def batch(n: int = 32, features: int = 16, classes: int = 2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, features, generator=generator) * 0.6 + 0.2  # away from the box edges
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def test_fgsm_on_a_linear_model_is_the_closed_form_worst_case():
    """Two classes: the loss depends on the logit margin (w_y - w_other)·x only, so the L∞
    worst case within the box moves every pixel by ε·sign(w_other - w_y), and FGSM finds it."""
    model, (x, y) = linear_model(), batch()
    eps = 0.1
    weight = model[1].weight.detach()
    direction = (weight[1 - y] - weight[y]).sign()
    expected = x + eps * direction
    adversarial = fgsm(model, x, y, eps)
    assert torch.allclose(adversarial, expected, atol=1e-6)
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        worst_loss = F.cross_entropy(model(expected), y, reduction="none")
        found_loss = F.cross_entropy(model(adversarial), y, reduction="none")
    margin_gain = eps * (weight[1] - weight[0]).abs().sum()
    assert torch.all(found_loss > clean_loss)
    assert torch.allclose(found_loss, worst_loss, atol=1e-5)

    # the margin moved by exactly ε·‖w_1 - w_0‖₁ for each sample
    def margins(z):
        return model(z).gather(1, y[:, None]) - model(z).gather(1, 1 - y[:, None])

    with torch.no_grad():
        moved = margins(x) - margins(adversarial)
    assert torch.allclose(moved.squeeze(1), margin_gain.expand(len(y)), atol=1e-4)


def small_cnn(dropout: float = 0.3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(8 * 8 * 8, 10),
    )


def image_batch(n: int = 64, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


@pytest.mark.parametrize("eps", [0.03, 0.1, 0.3])
def test_pgd_is_never_worse_than_fgsm(eps):
    model, (x, y) = small_cnn(), image_batch()
    model.eval()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y)
    fgsm_x = attack("fgsm", model, x, y, eps)
    pgd_x = attack("pgd", model, x, y, eps, steps=20, step_size=eps / 4, restarts=2)
    with torch.no_grad():
        fgsm_loss, pgd_loss = F.cross_entropy(model(fgsm_x), y), F.cross_entropy(model(pgd_x), y)
        fgsm_acc = (model(fgsm_x).argmax(1) == y).float().mean()
        pgd_acc = (model(pgd_x).argmax(1) == y).float().mean()
    assert before < fgsm_loss <= pgd_loss
    assert pgd_acc <= fgsm_acc


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_attacks_stay_in_the_box_and_the_eps_ball(name):
    model, (x, y) = small_cnn(), image_batch()
    x = torch.cat([x, torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)])  # pixels on the edges
    y = torch.cat([y, torch.zeros(8, dtype=torch.long)])
    eps = 0.2
    adversarial = attack(name, model, x, y, eps, steps=5, step_size=0.1)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert (adversarial - x).abs().max() > eps / 2  # it did move


def test_eval_mode_layers_do_not_mask_gradients_and_modes_are_restored():
    """With BatchNorm and Dropout in the net (left in training mode by the caller), the attack
    still finds gradients and changes predictions, sees a deterministic net (no dropout
    noise), leaves BatchNorm's statistics alone and hands each module back in its own mode."""
    model, (x, y) = small_cnn(dropout=0.5), image_batch()
    model.train()
    model[2].eval()  # a submodule's own mode must come back as it was, too
    running_mean = model[1].running_mean.clone()
    adversarial = attack("pgd", model, x, y, 0.2, steps=5, step_size=0.05, random_start=False)
    again = attack("pgd", model, x, y, 0.2, steps=5, step_size=0.05, random_start=False)
    assert torch.equal(adversarial, again)
    assert model.training and model[1].training and model[4].training and not model[2].training
    assert torch.equal(model[1].running_mean, running_mean)
    model.eval()
    with torch.no_grad():
        assert (model(adversarial).argmax(1) != model(x).argmax(1)).any()
    assert all(p.grad is None for p in model.parameters())  # only the input was differentiated


def test_attacks_run_inside_inference_mode():
    """`trainer.test` runs under inference mode: the attack must leave it, on tensors that
    were made inside it."""
    model = small_cnn()
    with torch.inference_mode():
        x, y = image_batch()
        adversarial = attack("fgsm", model, x, y, 0.1)
        with attack_context():
            moved = (adversarial.clone() - x.clone()).abs().max()
    assert moved > 0.05
    # without the context there is no gradient to take
    with pytest.raises(RuntimeError), torch.inference_mode():
        fgsm(model, x, y, 0.1)


def test_eps_zero_gives_clean_predictions_through_the_normalization():
    """Pixels recovered from a standardized batch, attacked with ε=0, give back the clean
    predictions; ε>0 measured in pixel space stays in the pixel ε-ball."""
    model = small_cnn()
    model.eval()
    raw = (torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 16).round()
    normalize = Normalize(16.0, torch.tensor(0.3), torch.tensor(0.4))
    pixel_model = PixelModel(model, normalize, 16.0)
    x = normalize(raw)
    pixels = pixel_model.to_pixels(x)
    assert torch.allclose(pixels, raw / 16, atol=1e-6)
    y = model(x).argmax(1)
    for name in ("fgsm", "pgd"):
        same = attack(name, pixel_model, pixels, y, 0.0)
        assert torch.equal(pixel_model(same).argmax(1), y)
    adversarial = attack("pgd", pixel_model, pixels, y, 0.1, steps=5, step_size=0.03)
    assert (adversarial - pixels).abs().max() <= 0.1 + 1e-6
    assert (pixel_model(adversarial).argmax(1) != y).any()


def test_pgd_restarts_never_lose_a_found_example():
    model, (x, y) = small_cnn(), image_batch()
    model.eval()
    one = pgd(model, x, y, 0.05, steps=3, generator=torch.Generator().manual_seed(0))
    three = pgd(model, x, y, 0.05, steps=3, restarts=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_three = model(three).argmax(1) != y
    assert torch.all(fooled_three >= fooled_one)


def test_sample_noise_starts_each_sample_alike_however_the_batch_is_split():
    """Two DDP ranks attack the even and the odd samples of a split: with `SampleNoise` each
    sample gets the random starts (and so the adversarial example) it gets in one batch."""
    model, (x, y) = small_cnn(), image_batch()
    model.eval()

    def attacked(rows):
        noise = SampleNoise(7, rows)
        return attack("pgd", model, x[rows], y[rows], 0.1, steps=3, restarts=2, generator=noise)

    whole = attacked(torch.arange(64))
    for rank in (0, 1):
        assert torch.equal(attacked(torch.arange(rank, 64, 2)), whole[rank::2])
    other_seed = attack("pgd", model, x, y, 0.1, steps=3, generator=SampleNoise(8, range(64)))
    assert not torch.equal(other_seed, whole)


# --- configs ---------------------------------------------------------------------------------


def test_robustness_options_compose(tmp_path):
    off = compose_cfg(tmp_path, *FAST)
    assert off.robustness is None and off.task.robustness is None
    assert off.task.adversarial is None
    on = compose_cfg(tmp_path, *FAST, "robustness=fgsm_pgd", "robustness.max_samples=64")
    settings = on.task.robustness
    assert list(settings.eps) == [0.0, 0.05, 0.1, 0.2]
    assert list(settings.attacks) == ["fgsm", "pgd"]
    assert settings.max_samples == 64 and settings.pgd_steps == 10 and settings.restarts == 1
    assert settings.pgd_step_size == 0.25 and settings.random_start is True and settings.seed == 0
    task = build_task(on)
    assert task.robustness["max_samples"] == 64
    regression = compose_cfg(tmp_path, "task=regression", "data=diabetes", "net=mlp")
    assert "robustness" not in regression.task
    evaluated = compose_cfg(tmp_path, "run_id=abc", "robustness=fgsm_pgd", config="eval")
    assert evaluated.task.robustness.max_samples == 1000


@pytest.mark.parametrize("adversarial", ["pgd", "fgsm_rs"])
def test_adversarial_training_options_compose(tmp_path, adversarial):
    cfg = compose_cfg(
        tmp_path,
        *FAST,
        f"task.adversarial={adversarial}",
        "task.adversarial_eps=0.2",
        "task.adversarial_steps=3",
        "task.adversarial_step_size=0.5",
    )
    task = build_task(cfg)
    assert task.adversarial == adversarial and task.adversarial_eps == 0.2
    assert task.adversarial_steps == 3 and task.adversarial_step_size == 0.5


def test_unknown_adversarial_method_is_refused(tmp_path):
    from deepmine.errors import DeepmineError

    with pytest.raises(DeepmineError, match=r"task\.adversarial=trades"):
        build_task(compose_cfg(tmp_path, *FAST, "task.adversarial=trades"))


def test_robust_validation_options_compose(tmp_path):
    off = compose_cfg(tmp_path, *FAST)
    assert off.task.val_attack is None and off.task.val_attack_samples == 500
    assert off.task.val_attack_eps == off.task.adversarial_eps == 0.1  # the training budget
    assert list(off.task.input_shape) == [1, 8, 8]
    assert build_task(off).val_robust_acc is None
    cfg = compose_cfg(
        tmp_path,
        *FAST,
        "task.val_attack=pgd",
        "task.adversarial_eps=0.2",
        "task.val_attack_steps=3",
        "task.val_attack_step_size=0.5",
        "task.val_attack_samples=64",
        "task.monitor=robust_acc",
    )
    assert cfg.task.val_attack_eps == 0.2
    task = build_task(cfg)
    assert (task.val_attack, task.val_attack_eps, task.val_attack_steps) == ("pgd", 0.2, 3)
    assert task.val_attack_step_size == 0.5 and task.val_attack_samples == 64
    assert task.monitor == "robust_acc" and task.monitored == "val/robust_acc"
    # checkpointing, early stopping and the objective follow the monitor by interpolation
    assert cfg.callbacks.model_checkpoint.monitor == "val/robust_acc"
    assert cfg.callbacks.early_stopping.monitor == "val/robust_acc"
    assert cfg.optimized_metric == "val/robust_acc_best"


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory) -> Path:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    path = tmp_path_factory.mktemp("table") / "iris.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("task.val_attack=cw",), r"task\.val_attack=cw is not one of fgsm, pgd"),
        (("task.monitor=robust_acc",), r"task\.monitor=robust_acc needs a robust validation"),
        (("task.val_attack=pgd", "task.val_attack_samples=0"), r"task\.val_attack_samples=0"),
        (("task.val_attack=pgd", "task.input_shape=[4]"), r"task\.val_attack attacks images"),
    ],
)
def test_bad_robust_validation_options_are_refused(tmp_path, overrides, message):
    from deepmine.errors import DeepmineError

    with pytest.raises(DeepmineError, match=message):
        build_task(compose_cfg(tmp_path, *FAST, *overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*FAST, "task.val_attack=cw"), "task.val_attack=cw is not one of fgsm, pgd"),
        (("data=csv", "data.target=target", "net=mlp", "task.val_attack=pgd"), "attacks images"),
    ],
    ids=["unknown-attack", "table"],
)
def test_bad_robust_validation_is_one_line_and_opens_no_run(sandbox, iris_csv, overrides, message):
    """Refused before any run opens: exit code 2, one line, an empty store."""
    from conftest import one_line_error

    table = (f"data.path={iris_csv}",) if "data=csv" in overrides else ()
    proc = sandbox.train(*overrides, *table, "debug=fast")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in one_line_error(proc)
    assert "Traceback" not in proc.stderr
    assert sandbox.runs() == []


# --- in-process training: the adversarial step -----------------------------------------------


def fit_digits(tmp_path, *overrides: str):
    from deepmine.run.build import build

    pl.seed_everything(0)
    cfg = compose_cfg(tmp_path, *FAST, "logger=none", *overrides)
    parts = build(cfg)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return parts


def test_adversarial_batch_is_in_the_eps_ball_in_pixels(tmp_path):
    parts = fit_digits(tmp_path, "task.adversarial=pgd", "data.normalize=standardize")
    task = parts.task
    x, y = next(iter(parts.datamodule.train_dataloader()))
    task.train()
    adversarial, same_y = task.adversarial_batch((x, y))
    assert task.training and task.net.training
    model = task.pixel_model()
    moved = (model.to_pixels(adversarial) - model.to_pixels(x)).abs().max()
    assert 0.05 < moved <= 0.1 + 1e-5 and torch.equal(same_y, y)


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
    from conftest import one_recorded_run

    return one_recorded_run(
        tmp_path_factory, "robust", *FAST, "robustness=fgsm_pgd", "robustness.max_samples=64"
    )


def test_robustness_run_records_accuracies_and_plots(robust_run):
    box, proc, run = robust_run
    metrics = run.data.metrics
    for attack_name in ("fgsm", "pgd"):
        for eps in ("0", "0.05", "0.1", "0.2"):
            assert f"robust/{attack_name}/acc_eps{eps}" in metrics
        accuracies = [metrics[f"robust/{attack_name}/acc_eps{e}"] for e in ("0", "0.1", "0.2")]
        assert accuracies[0] > accuracies[2]  # a bigger budget hurts
    assert metrics["robust/pgd/acc_eps0"] == metrics["robust/fgsm/acc_eps0"]
    assert metrics["robust/pgd/acc_eps0.2"] <= metrics["robust/fgsm/acc_eps0.2"]
    assert "robust/pgd/acc_eps0.1" in proc.stdout
    files = artifact_paths(box.client(), run.info.run_id)
    assert {"plots/robust_accuracy.png", "plots/adversarial_examples.png"} <= files


def test_eval_of_a_recorded_run_attacks_it(robust_run):
    from conftest import run_cli

    box, _, run = robust_run
    proc = run_cli(
        "eval",
        *box.overrides(f"run_id={run.info.run_id}", "robustness=fgsm_pgd"),
        "robustness.attacks=[fgsm]",
        "robustness.eps=[0.0,0.1]",
        cwd=box.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "robust/fgsm/acc_eps0.1" in proc.stdout and "robust/pgd" not in proc.stdout
    evaluation = [r for r in box.runs() if r.info.run_id != run.info.run_id]
    (evaluated,) = evaluation
    # the same model on the same (first 1000 >= all 2-batch) samples: the same accuracy
    assert "robust/fgsm/acc_eps0.1" in evaluated.data.metrics
    files = artifact_paths(box.client(), evaluated.info.run_id)
    assert "plots/robust_accuracy.png" in files


def test_eval_without_robustness_attacks_nothing(robust_run):
    from conftest import run_cli

    box, _, run = robust_run
    proc = run_cli("eval", *box.overrides(f"run_id={run.info.run_id}"), cwd=box.cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "robust/" not in proc.stdout


def test_adversarial_training_runs_end_to_end_and_differs_from_natural(sandbox):
    runs = {}
    for method in (None, "fgsm_rs", "pgd"):
        extra = [] if method is None else [f"task.adversarial={method}", "task.adversarial_steps=3"]
        proc = sandbox.train(*FAST, "logger=none", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (summary,) = [
            p
            for p in sandbox.logs.glob("train/runs/*/*/metrics.json")
            if p.parent.name not in {r["folder"] for r in runs.values()}
        ]
        runs[method] = {"folder": summary.parent.name, **json.loads(summary.read_text())}
    natural = runs[None]["metrics"]["train/loss_epoch"]
    for method in ("fgsm_rs", "pgd"):
        # trained on adversarial batches: a higher training loss than on clean ones
        assert runs[method]["metrics"]["train/loss_epoch"] > natural, method
    losses = {method: run["metrics"]["train/loss_epoch"] for method, run in runs.items()}
    assert losses["fgsm_rs"] != losses["pgd"]


def test_monitor_robust_acc_selects_the_checkpoint_by_it(sandbox):
    """Two epochs monitored by val/robust_acc: the best checkpoint, val/robust_acc_best and the
    objective all come from the per-epoch val/robust_acc history."""
    proc = sandbox.train(
        *FAST,
        "trainer.max_epochs=2",
        "task.val_attack=fgsm",
        "task.val_attack_samples=128",
        "task.monitor=robust_acc",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    history = sorted(
        sandbox.client().get_metric_history(run.info.run_id, "val/robust_acc"),
        key=lambda m: m.step,
    )
    values = [m.value for m in history]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)
    assert all(v * 128 == round(v * 128) for v in values)  # a count out of 128 samples
    best_epoch = values.index(max(values))  # ties keep the earlier checkpoint
    metrics = run.data.metrics
    assert metrics["val/robust_acc_best"] == max(values)
    out = Path(run.data.tags["deepmine.output_dir"])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["objective"] == {"name": "val/robust_acc_best", "value": max(values)}
    assert Path(summary["best_checkpoint"]).name == f"epoch{best_epoch:03d}.ckpt"
    checkpoint = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/robust_acc"
    assert float(state["best_model_score"]) == pytest.approx(max(values))
    assert checkpoint["deepmine_val_best"] == pytest.approx(max(values))


def test_ddp_robust_metrics_equal_a_single_process_evaluation(sandbox, tmp_path):
    """trainer=ddp (2 gloo CPU processes): each rank attacks the samples of its own test and
    validation shards and the correct counts are summed over the ranks. The same checkpoint
    evaluated by one process (`deepmine eval run_id=...`, and an in-process `validate`) gives
    the same accuracies, exactly: the same samples (each rank's share of the first n), the
    same random start per sample (SampleNoise), integer counts summed. Only float rounding
    that depends on the batch size could flip a prediction, and here none does."""
    from conftest import run_cli
    from deepmine.run.build import build
    from deepmine.runtime.checkpoints import load_weights

    robust_val = ("task.val_attack=pgd", "task.val_attack_samples=100", "task.monitor=robust_acc")
    proc = sandbox.train(
        *FAST, "trainer=ddp", "robustness=fgsm_pgd", "robustness.max_samples=64", *robust_val
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    out = Path(run.data.tags["deepmine.output_dir"])
    assert (out / "ddp" / "rank1.log").is_file() and run.data.params["trainer.devices"] == "2"
    trained = {k: v for k, v in run.data.metrics.items() if k.startswith("robust/")}
    assert len(trained) == 8
    assert {"plots/robust_accuracy.png", "plots/adversarial_examples.png"} <= artifact_paths(
        sandbox.client(), run.info.run_id
    )

    evaluated = run_cli(
        "eval",
        *sandbox.overrides(f"run_id={run.info.run_id}", "robustness=fgsm_pgd"),
        "robustness.max_samples=64",
        cwd=sandbox.cwd,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (evaluation,) = [r for r in sandbox.runs() if r.info.run_id != run.info.run_id]
    single = {k: v for k, v in evaluation.data.metrics.items() if k.startswith("robust/")}
    assert single == trained
    assert all(v * 64 == round(v * 64) for v in single.values())  # counts out of 64 samples

    cfg = compose_cfg(tmp_path, *FAST, "logger=none", *robust_val)
    parts = build(cfg)
    (checkpoint,) = (out / "checkpoints").glob("epoch*.ckpt")
    load_weights(parts.task, checkpoint)
    (validated,) = parts.trainer.validate(parts.task, datamodule=parts.datamodule, verbose=False)
    assert validated["val/robust_acc"] == run.data.metrics["val/robust_acc"]
    assert validated["val/acc"] == run.data.metrics["val/acc"]
