"""The fast paths of issue 5 give the same answers as the slow ones they replaced: batches cut
from stored uint8 tensors and normalized per batch, train metrics from confusion counts, and
metrics written by MLflow's background thread, all of which arrive, whatever ends the run."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from conftest import ROOT, one_line_error, start_cli
from deepmine.data.fashion_mnist import FashionMNISTDataModule
from deepmine.tasks.classification.task import confusion_scores


@pytest.fixture(scope="module")
def fashion():
    if not (ROOT / "data" / "fashion_mnist").is_dir():
        pytest.fail("data/ is missing: run `deepmine data pull` (make test does)")

    def make(normalize: str) -> FashionMNISTDataModule:
        dm = FashionMNISTDataModule(
            data_dir=str(ROOT / "data" / "fashion_mnist"),
            num_classes=10,
            input_shape=[1, 28, 28],
            batch_size=256,
            normalize=normalize,
            shuffle_seed=3,
        )
        dm.setup()
        return dm

    return make


@pytest.mark.parametrize("normalize", ["scale", "standardize", "none"])
def test_batches_equal_reference_indexing_of_the_whole_normalized_set(fashion, normalize):
    dm = fashion(normalize)
    x, y = dm.tensors["train"]
    assert x.dtype == torch.uint8  # stored as read: a quarter of float32's memory
    # the reference: the whole split normalized at once (the pre-issue-5 path), then indexed
    reference = x.to(torch.float32)
    if normalize != "none":
        reference = reference / 255.0
    if normalize == "standardize":
        mean, std = reference.mean(), reference.std().clamp_min(1e-8)
        reference = (reference - mean) / std
    loader = dm.train_dataloader()
    for epoch in range(2):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(3 + epoch))
        batches = list(loader)
        assert len(batches) == -(-len(x) // 256)
        for i in (0, 1, len(batches) - 1):
            index = order[i * 256 : (i + 1) * 256]
            assert batches[i][0].dtype == torch.float32
            assert torch.equal(batches[i][0], reference[index])
            assert torch.equal(batches[i][1], y[index])
    val = list(dm.val_dataloader())
    x_val = dm.tensors["val"][0].to(torch.float32)
    if normalize != "none":
        x_val = x_val / 255.0
    if normalize == "standardize":
        x_val = (x_val - mean) / std
    assert torch.equal(torch.cat([b[0] for b in val]), x_val)


def test_train_scores_from_counts_match_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 6, generator=generator)
    target = torch.randint(0, 5, (500,), generator=generator)  # class 5 never a target
    logits[:, 5] -= 100  # ... nor predicted: torchmetrics leaves it out of the macro mean
    predicted = logits.argmax(1)
    counts = torch.bincount(target * 6 + predicted, minlength=36).view(6, 6)
    scores = confusion_scores(counts)
    accuracy = MulticlassAccuracy(6, average="micro")(logits, target)
    f1 = MulticlassF1Score(6, average="macro")(logits, target)
    assert torch.allclose(scores["acc"], accuracy) and torch.allclose(scores["f1_macro"], f1)
    assert float(scores["f1_macro"]) != float(
        MulticlassF1Score(6, average="macro")(logits, predicted)
    )


@pytest.mark.parametrize("ending", ["finished", "failed", "interrupted"])
def test_every_buffered_metric_arrives_however_the_run_ends(tmp_path, ending):
    from deepmine.tracking.run import recorded_run
    from deepmine.tracking.store import connect

    store = connect(f"sqlite:///{tmp_path}/mlflow.db")
    raised = {"finished": None, "failed": RuntimeError, "interrupted": KeyboardInterrupt}[ending]
    expected = pytest.raises(raised) if raised else contextlib.nullcontext()
    with expected, recorded_run(store, "exp", "run", {}) as run:
        logger = run.lightning_logger(flush_every_s=3600)  # sent only in batches of 1000
        for step in range(2500):  # 2 batches go out, 500 metrics wait in the buffer
            logger.log_metrics({"train/loss": step / 10}, step=step)
        if raised:
            raise raised("stop")
    run_id = run.run_id
    status = store.client.get_run(run_id).info.status
    assert status == {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[ending]
    history = store.client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(2500))


def test_a_diverged_run_keeps_every_metric_up_to_its_failure(sandbox):
    # lr=1e9 makes the loss NaN within a few steps; metrics are only sent at the end
    proc = sandbox.train(
        "data=digits",
        "optimizer=sgd",
        "optimizer.lr=1e9",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "logger.flush_every_s=3600",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "NonFiniteLoss" in one_line_error(proc)
    (run,) = sandbox.runs()
    assert run.info.status == "FAILED"
    steps = [m.step for m in sandbox.client().get_metric_history(run.info.run_id, "train/loss")]
    assert steps and sorted(steps) == list(range(len(steps)))


def test_an_interrupted_run_keeps_every_metric_up_to_the_signal(sandbox):
    proc = start_cli(
        "train",
        *sandbox.overrides(
            "data=digits",
            "data.batch_size=8",
            "trainer.max_epochs=200",
            "callbacks.early_stopping=null",
            "trainer.log_every_n_steps=1",
            "logger.flush_every_s=3600",
        ),
        cwd=sandbox.cwd,
    )
    deadline = time.monotonic() + 240
    while not list(sandbox.logs.glob("train/runs/*/*/checkpoints/epoch*.ckpt")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.2)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]
    (run,) = sandbox.runs()
    assert run.info.status == "KILLED"
    client = sandbox.client()
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    # Metrics go out in batches of 1000 (a few epochs here); without the flush on the way out,
    # the steps and epochs since the last batch would be missing.
    (last,) = sandbox.logs.glob("train/runs/*/*/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert steps == list(range(len(steps))) and len(steps) >= checkpoint["global_step"]
    epochs = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(epochs) >= checkpoint["epoch"] + 1


def test_decoded_arrays_are_cached_and_a_changed_source_is_decoded_again(tmp_path):
    import shutil

    source = tmp_path / "fashion_mnist"
    shutil.copytree(ROOT / "data" / "fashion_mnist", source)
    cache = tmp_path / "cache"

    def setup() -> FashionMNISTDataModule:
        dm = FashionMNISTDataModule(
            data_dir=str(source), cache_dir=str(cache), num_classes=10, input_shape=[1, 28, 28]
        )
        dm.setup()
        return dm

    decoded = setup()
    (entry,) = cache.iterdir()
    assert sorted(f.name for f in entry.iterdir()) == [
        "x_test.npy",
        "x_train.npy",
        "y_test.npy",
        "y_train.npy",
    ]
    (entry / "y_test.npy").write_bytes(b"garbage")  # unreadable entry: decoded and rewritten
    for split in ("train", "val", "test"):
        assert all(
            torch.equal(a, b)
            for a, b in zip(setup().tensors[split], decoded.tensors[split], strict=True)
        )
    labels = source / "t10k-labels-idx1-ubyte.gz"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    setup()
    assert len(list(cache.iterdir())) == 2  # the changed file made a new entry
