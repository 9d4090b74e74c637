"""Clustering end to end: an autoencoder trained in a real subprocess run into a real SQLite
store, k-means and DEC on its codes, scores checked against scikit-learn and scipy on the
assignments the run recorded; the scoring, DEC and the nets unit by unit."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from test_configs import compose_cfg
from test_train_records import artifact_paths

from conftest import one_line_error
from deepmine.errors import DeepmineError
from deepmine.nets.autoencoder import Autoencoder, ConvAutoencoder
from deepmine.run.build import build_task
from deepmine.run.checks import check_pairing
from deepmine.tasks.clustering.dec import DECSettings, refine, soft_assignments, target_distribution
from deepmine.tasks.clustering.scores import cluster_accuracy, contingency, scores

CLUSTER = ("task=clustering", "net=autoencoder", "data=digits", "net.hidden_sizes=[64,32]")


@pytest.fixture(scope="module")
def clustering_run(tmp_path_factory):
    """AE pretraining, k-means on the codes, a short DEC refinement and the pixel baseline,
    all in one recorded run on digits."""
    from conftest import one_recorded_run

    return one_recorded_run(
        tmp_path_factory,
        "clustering",
        *CLUSTER,
        "trainer.max_epochs=4",
        "task.kmeans_n_init=3",
        "task.refine=dec",
        "task.dec.update_interval=20",
        "task.dec.max_iterations=60",
    )


def recorded_assignments(box, run) -> pd.DataFrame:
    path = box.client().download_artifacts(run.info.run_id, "results/assignments.csv")
    return pd.read_csv(path)


def test_run_logs_scores_baseline_and_plots(clustering_run):
    box, proc, run = clustering_run
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for prefix in ("", "ae_kmeans/", "dec/", "baseline/kmeans/"):
        for where in ("all", "test"):
            for name in ("acc", "nmi", "ari"):
                assert f"{prefix}{where}/{name}" in metrics, f"{prefix}{where}/{name}"
    # the headline is the last stage (DEC), the AE + k-means stage is kept beside it
    assert metrics["all/acc"] == metrics["dec/all/acc"]
    assert 0 < metrics["dec/iterations"] <= 60
    assert {"val/recon_loss_best", "test/recon_loss", "all/recon_loss"} <= set(metrics)
    assert run.data.params["task.monitor"] == "recon_loss" and run.data.params["task.mode"] == "min"
    assert run.data.tags["deepmine.clustering.scored"] == "true"
    files = artifact_paths(box.client(), run.info.run_id)
    assert {
        "plots/latent_map.png",
        "plots/contingency.png",
        "plots/reconstructions.png",
        "results/assignments.csv",
    } <= files
    assert "plots/confusion_matrix.png" not in files
    assert "baseline/kmeans/all/" in proc.stdout and "test/recon_loss" in proc.stdout


def test_recorded_scores_match_scikit_learn_and_scipy(clustering_run):
    """Recomputed from the recorded assignments: NMI and ARI by scikit-learn, accuracy by a
    brute-force search over every one-to-one matching of the clusters present."""
    box, _, run = clustering_run
    table = recorded_assignments(box, run)
    assert len(table) == 1797 and set(table.split) == {"train", "val", "test"}
    assert (table.label >= 0).all()
    metrics = run.data.metrics
    for column, prefix in (
        ("cluster_ae_kmeans", "ae_kmeans/"),
        ("cluster_dec", "dec/"),
        ("cluster_baseline_kmeans", "baseline/kmeans/"),
    ):
        for where, rows in (("all", table), ("test", table[table.split == "test"])):
            clusters, labels = rows[column].to_numpy(), rows.label.to_numpy()
            nmi = normalized_mutual_info_score(labels, clusters)
            ari = adjusted_rand_score(labels, clusters)
            assert metrics[f"{prefix}{where}/nmi"] == pytest.approx(nmi, abs=1e-4)
            assert metrics[f"{prefix}{where}/ari"] == pytest.approx(ari, abs=1e-4)
            assert metrics[f"{prefix}{where}/acc"] == pytest.approx(
                cluster_accuracy(clusters, labels), abs=1e-6
            )
    # the labels never reached training: the pixel baseline scores far above chance
    assert metrics["baseline/kmeans/all/acc"] > 0.5


def test_checkpoint_follows_the_lowest_reconstruction_loss(clustering_run):
    box, _, run = clustering_run
    history = [m.value for m in box.client().get_metric_history(run.info.run_id, "val/recon_loss")]
    assert len(history) == 4
    assert run.data.metrics["val/recon_loss_best"] == pytest.approx(min(history))


def test_every_option_runs_without_labels_in_a_table(sandbox):
    """A CSV with no label column (data.target=null) is clustered, not scored, and the run
    says so; the run also covers the task's other options: k-means fitted on the training
    split, the t-SNE latent map, no baseline."""
    from sklearn.datasets import load_wine

    x, _ = load_wine(return_X_y=True)
    path = sandbox.path / "wine.csv"
    pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).to_csv(path, index=False)
    proc = sandbox.train(
        "task=clustering",
        "net=autoencoder",
        "net.hidden_sizes=[16]",
        "net.latent_dim=3",
        "data=csv",
        f"data.path={path}",
        "data.target=null",
        "task.num_clusters=3",
        "task.fit_on=train",
        "task.latent_map=tsne",
        "task.baseline=false",
        "trainer.max_epochs=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.data.tags["deepmine.clustering.scored"] == "false"
    assert not [k for k in run.data.metrics if k.endswith(("/acc", "/nmi", "/ari"))]
    assert "labels        none: ACC, NMI and ARI skipped" in proc.stdout
    table = recorded_assignments(sandbox, run)
    assert (table.label == -1).all() and set(table.cluster_ae_kmeans) == {0, 1, 2}
    assert "cluster_baseline_kmeans" not in table
    files = artifact_paths(sandbox.client(), run.info.run_id)
    assert "plots/latent_map.png" in files and "plots/contingency.png" not in files


def test_conv_autoencoder_clusters_images(sandbox):
    proc = sandbox.train(
        "task=clustering",
        "net=conv_autoencoder",
        "net.channels=[8,16]",
        "data=digits",
        "task.kmeans_n_init=2",
        "debug=fast",
        "logger=none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all/" in proc.stdout and "acc" in proc.stdout


# --- refused before any run --------------------------------------------------------------------


def test_a_net_without_codes_is_refused(tmp_path):
    cfg = compose_cfg(tmp_path, "task=clustering", "net=mlp", "data=digits")
    with pytest.raises(DeepmineError, match="needs a net with codes"):
        build_task(cfg)


def test_a_table_without_labels_is_refused_for_supervised_tasks(sandbox):
    path = sandbox.path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n")
    proc = sandbox.train("data=csv", f"data.path={path}", "data.target=null", "net=mlp")
    assert proc.returncode != 0
    assert "data.target=null" in one_line_error(proc) and "task=clustering" in one_line_error(proc)
    assert sandbox.runs() == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.fit_on=everything", "task.fit_on=everything is not one of all, train"),
        ("task.latent_map=umap", "task.latent_map=umap"),
        ("task.refine=idec", "task.refine=idec"),
        ("task.num_clusters=1", "at least 2 clusters"),
        ("+task.dec.lr_decay=0.5", "task.dec has unknown key"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, "task=clustering", "net=autoencoder", "data=digits", override)
    check_pairing(cfg)
    with pytest.raises(DeepmineError, match=message.replace(".", r"\.")):
        build_task(cfg)


# --- units -------------------------------------------------------------------------------------


def test_cluster_accuracy_is_the_best_one_to_one_matching():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    clusters = np.where(rng.random(300) < 0.7, (labels + 1) % 4, rng.integers(0, 4, 300))
    brute = max(
        np.mean(np.asarray(mapping)[clusters] == labels)
        for mapping in itertools.permutations(range(4))
    )
    assert cluster_accuracy(clusters, labels) == pytest.approx(brute)
    assert cluster_accuracy((labels * 3 + 2) % 4, labels) == 1.0  # a relabelling is perfect
    # more clusters than classes: unmatched clusters count as wrong
    assert cluster_accuracy(np.arange(8) % 4 + 4 * (np.arange(8) >= 4), np.arange(8) % 4) == 0.5


def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels, clusters = rng.integers(0, 5, 500), rng.integers(0, 6, 500)
    got = scores(clusters, labels)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-5)
    assert got["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-5)
    table = contingency(clusters, labels, 6, 5)
    assert table.shape == (6, 5) and table.sum() == 500
    assert table[clusters[0], labels[0]] >= 1


def test_dec_sharpens_and_stops_at_tolerance():
    q = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    p = target_distribution(q)
    assert torch.allclose(p.sum(1), torch.ones(3))
    assert p[0, 0] > q[0, 0] and p[2, 1] > q[2, 1]
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    soft = soft_assignments(torch.tensor([[0.1, 0.0], [2.9, 0.1]]), centers, 1.0)
    assert torch.allclose(soft.sum(1), torch.ones(2)) and soft[0, 0] > 0.9 and soft[1, 1] > 0.9

    generator = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(100, 2, generator=generator) * 0.3 + c for c in (-2.0, 2.0)])
    truth = np.repeat([0, 1], 100)
    encoder = torch.nn.Linear(2, 2)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(2))
        encoder.bias.zero_()
    settings = DECSettings(update_interval=5, tol=0.01, max_iterations=500, batch_size=32)
    refined = refine(
        encoder,
        list(encoder.parameters()),
        blobs,
        torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
        settings,
        torch.Generator().manual_seed(0),
    )
    assert refined.converged and refined.iterations < 500
    assert cluster_accuracy(refined.assignments.numpy(), truth) == 1.0


@pytest.mark.parametrize("shape", [[1, 28, 28], [1, 8, 8], [3, 32, 32], [1, 7, 9]])
def test_conv_autoencoder_rebuilds_the_exact_input_shape(shape):
    net = ConvAutoencoder(shape, [8, 16, 32], latent_dim=5)
    x = torch.randn(2, *shape)
    assert net(x).shape == x.shape and net.encode(x).shape == (2, 5)


def test_autoencoder_is_dec_shaped_by_default():
    net = Autoencoder([1, 28, 28], [500, 500, 2000], latent_dim=10)
    widths = [m.out_features for m in net.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [500, 500, 2000, 10]
    assert [m.out_features for m in net.decoder if isinstance(m, torch.nn.Linear)] == [
        2000,
        500,
        500,
        784,
    ]
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 1, 28, 28)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)  # plain tensors: loadable with weights_only
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == net.state_dict().keys()
