"""Anomaly detection end to end: an autoencoder trained on the normal classes of digits in a real
subprocess run into a real SQLite store; the recorded threshold, AUROC, AP, precision/recall/F1
and baselines recomputed by numpy and scikit-learn from the scores the run recorded; a table
without labels scored, not evaluated; k batches per step; bad options refused in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from test_configs import compose_cfg
from test_train_records import artifact_paths

from conftest import one_line_error, one_recorded_run
from deepmine.errors import DeepmineError
from deepmine.run.build import build_task

NORMAL = (3, 8)
ANOMALY = ("task=anomaly", "net=autoencoder", "data=digits", "net.hidden_sizes=[64,32]")


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory):
    return one_recorded_run(
        tmp_path_factory,
        "anomaly",
        *ANOMALY,
        "trainer.max_epochs=3",
        f"task.normal_classes=[{NORMAL[0]},{NORMAL[1]}]",
    )


def recorded_scores(box, run) -> pd.DataFrame:
    path = box.client().download_artifacts(run.info.run_id, "results/scores.csv")
    return pd.read_csv(path)


def test_run_logs_metrics_baselines_and_figures(anomaly_run):
    box, proc, run = anomaly_run
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    ranked = [
        f"{prefix}{split}/{name}"
        for prefix, split in (("", "val"), ("", "test"), ("baseline/isolation_forest/", "test"))
        for name in ("auroc", "ap")
    ] + ["baseline/pca/test/auroc", "baseline/pca/test/ap"]
    for key in ranked:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert {
        "val/recon_loss",
        "val/recon_loss_best",
        "test/threshold",
        "test/precision",
        "test/recall",
        "test/f1",
        "test/recon_loss",
        "auroc_gain/best_baseline",
    } <= set(metrics)
    assert metrics["auroc_gain/isolation_forest"] == pytest.approx(
        metrics["test/auroc"] - metrics["baseline/isolation_forest/test/auroc"], abs=1e-6
    )
    # digits 3 and 8 against the other eight: far better than chance after 3 epochs
    assert metrics["test/auroc"] > 0.7
    assert run.data.params["task.monitor"] == "recon_loss" and run.data.params["task.mode"] == "min"
    assert run.data.tags["deepmine.anomaly.evaluated"] == "true"
    assert run.data.tags["deepmine.anomaly.normal_classes"] == "3,8"
    files = artifact_paths(box.client(), run.info.run_id)
    assert {
        "plots/score_histogram.png",
        "plots/top_anomalies.png",
        "results/scores.csv",
    } <= files
    assert "results/top_anomalies.csv" not in files  # images are drawn, not tabled
    assert "test/auroc" in proc.stdout and "isolation_forest" in proc.stdout


def test_recorded_metrics_match_numpy_and_scikit_learn(anomaly_run):
    """The threshold is the 95th percentile of the normal validation scores; AUROC, AP and the
    baselines' are the rankings of the recorded test scores; precision/recall/F1 flag what
    lies above the threshold."""
    box, _, run = anomaly_run
    metrics = run.data.metrics
    table = recorded_scores(box, run)
    val, test = table[table.split == "val"], table[table.split == "test"]
    assert len(test) == 359 and (table.label >= 0).all()
    assert (table.anomalous == ~table.label.isin(NORMAL)).all()
    threshold = np.percentile(val.score[val.anomalous == 0], 95)
    assert metrics["test/threshold"] == pytest.approx(threshold, rel=1e-6)
    assert (test.flagged == (test.score > threshold)).all()
    truth, flagged = test.anomalous.to_numpy(), test.flagged.to_numpy()
    expected = {
        "test/auroc": roc_auc_score(truth, test.score),
        "test/ap": average_precision_score(truth, test.score),
        "test/precision": precision_score(truth, flagged),
        "test/recall": recall_score(truth, flagged),
        "test/f1": f1_score(truth, flagged),
        "baseline/isolation_forest/test/auroc": roc_auc_score(truth, test.score_isolation_forest),
        "baseline/pca/test/auroc": roc_auc_score(truth, test.score_pca),
        "baseline/pca/test/ap": average_precision_score(truth, test.score_pca),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    assert metrics["test/recon_loss"] == pytest.approx(test.score[test.anomalous == 0].mean())
    history = box.client().get_metric_history(run.info.run_id, "val/recon_loss")
    assert metrics["val/recon_loss_best"] == pytest.approx(min(m.value for m in history))


def test_training_reconstructs_the_normal_rows_only(tmp_path):
    cfg = compose_cfg(tmp_path, *ANOMALY, f"task.normal_classes=[{NORMAL[0]},{NORMAL[1]}]")
    task = build_task(cfg)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=generator)
    y = torch.tensor([3, 0, 8, 5, 3, 9])
    loss, n = task.normal_loss(x, y)
    normal = torch.tensor([True, False, True, False, True, False])
    by_hand = ((task.net(x[normal]) - x[normal]) ** 2).mean()
    assert n == 3 and torch.allclose(loss, by_hand)
    # the anomalous rows do not count, whatever they hold
    changed = x.clone()
    changed[~normal] = 100.0
    assert torch.equal(task.normal_loss(changed, y)[0], loss)
    # a batch of anomalies only: a zero loss and zero gradients, not NaN
    loss, n = task.normal_loss(x, torch.tensor([0, 1, 2, 4, 5, 6]))
    loss.backward()
    assert n == 0 and float(loss.detach()) == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in task.net.parameters())


def wine_table(folder) -> str:
    from sklearn.datasets import load_wine

    x, _ = load_wine(return_X_y=True)
    path = folder / "wine.csv"
    pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).to_csv(path, index=False)
    return str(path)


UNLABELED = (
    "task=anomaly",
    "net=autoencoder",
    "net.hidden_sizes=[16]",
    "net.latent_dim=3",
    "data=csv",
    "data.target=null",
    "trainer.max_epochs=2",
)


def test_a_table_without_labels_is_scored_not_evaluated(sandbox):
    proc = sandbox.train(*UNLABELED, f"data.path={wine_table(sandbox.path)}", "task.top_k=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.data.tags["deepmine.anomaly.evaluated"] == "false"
    assert not [k for k in run.data.metrics if k.endswith(("auroc", "/ap")) or "baseline" in k]
    assert {"val/recon_loss", "test/threshold", "test/flagged"} <= set(run.data.metrics)
    assert "not evaluated (no AUROC)" in proc.stdout
    table = recorded_scores(sandbox, run)
    assert (table.label == -1).all() and table.anomalous.isna().all()
    assert np.isfinite(table.score).all() and "score_isolation_forest" not in table
    files = artifact_paths(sandbox.client(), run.info.run_id)
    assert {"plots/score_histogram.png", "results/top_anomalies.csv"} <= files
    assert "plots/top_anomalies.png" not in files
    top = pd.read_csv(
        sandbox.client().download_artifacts(run.info.run_id, "results/top_anomalies.csv")
    )
    test = table[table.split == "test"]
    assert list(top.score) == sorted(test.score, reverse=True)[:5]
    assert list(top.columns[:3]) == ["index", "score", "label"] and "f12" in top


def test_k_batches_per_step_give_the_same_run(sandbox):
    """task.steps_per_call=2 trains the same weights as Lightning's own loop: the masked loss
    keeps its sums exact; the run also covers the conv autoencoder and the AUROC monitor."""
    runs = {}
    for k in (1, 2):
        proc = sandbox.train(
            "task=anomaly",
            "net=conv_autoencoder",
            "net.channels=[8,16]",
            "data=digits",
            "task.monitor=auroc",
            "task.mode=max",
            "task.baseline=false",
            f"task.steps_per_call={k}",
            "debug=fast",
            f"logger.run_name=k{k}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    for run in sandbox.runs():
        runs[run.info.run_name] = run.data.metrics
    for key in ("train/loss_epoch", "val/auroc_best", "test/auroc", "test/threshold"):
        assert runs["k1"][key] == runs["k2"][key], key
    assert 0.0 <= runs["k2"]["test/auroc"] <= 1.0


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.normal_classes=[]", "is not a non-empty list of class indices"),
        ("task.normal_classes=[10]", "class 10 is not a class of this data"),
    ],
)
def test_bad_normal_classes_fail_before_any_run(sandbox, override, message):
    proc = sandbox.train(*ANOMALY, override)
    assert proc.returncode != 0
    line = one_line_error(proc)
    assert message in line and "Fix: " in line and "task.normal_classes=[0]" in line
    assert sandbox.runs() == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.normal_classes=[0,1,2,3,4,5,6,7,8,9]", "nothing is anomalous"),
        ("task.normal_classes=[-1]", "class -1 is not a class"),
        ("task.normal_classes=x", "is not a non-empty list"),
        ("task.monitor=auroc", "task.monitor=auroc is maximized, but task.mode=min"),
        ("task.threshold_percentile=0", r"task.threshold_percentile=0 is not in \(0, 100\]"),
        ("task.monitor=acc", "task.monitor=acc is not a metric"),
        ("net=mlp", "needs an autoencoder"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, *ANOMALY, override)
    with pytest.raises(DeepmineError, match=message):
        build_task(cfg)


def test_an_auroc_monitor_without_labels_fails_the_run_in_one_line(sandbox):
    proc = sandbox.train(
        *UNLABELED, f"data.path={wine_table(sandbox.path)}", "task.monitor=auroc", "task.mode=max"
    )
    assert proc.returncode != 0
    assert "needs labelled validation samples" in one_line_error(proc)
    assert [run.info.status for run in sandbox.runs()] in ([], ["FAILED"])
