"""Clustering: an autoencoder learns to reconstruct its input, k-means groups its codes.

Training is plain reconstruction (MSE on the inputs as the net sees them); the monitored
metric is the validation reconstruction loss (`recon_loss`, minimized), so checkpointing,
early stopping and sweeps work as for any task. Labels never reach the loss: they are only
used after training, to score the clusters.

After the test epoch, on the best checkpoint (`finish_test`):

1. every sample of every split is encoded; k-means (scikit-learn, `kmeans_n_init` starts,
   seeded) is fitted on the codes of all samples (`fit_on=all`, DEC's transductive protocol)
   or of the training split only (`fit_on=train`) and assigns every sample;
2. with `refine=dec` the encoder and the centres are refined by DEC
   (`deepmine.tasks.clustering.dec`), starting from those k-means centres;
3. the clusters are scored against the labels (accuracy with the best one-to-one matching,
   NMI, ARI): `all/*` over every sample, `test/*` over the test split, for the last stage;
   `ae_kmeans/...` and `dec/...` keep each stage's scores;
4. the baseline in the same run: k-means on the input itself (the scaled pixels or
   standardized features), `baseline/kmeans/{all,test}/*`, with the same protocol.

Data without labels (every label -1) is clustered all the same; the scores are skipped and the
run says so (tag `deepmine.clustering.scored=false`, and a line in the summary).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError

from deepmine.errors import DeepmineError
from deepmine.tasks.base import Task
from deepmine.tasks.clustering.dec import DECSettings, refine
from deepmine.tasks.clustering.scores import SCORES, contingency, scores

FIT_ON = ("all", "train")
REFINE = ("dec",)
LATENT_MAPS = ("pca", "tsne")
#: points drawn in the latent map (a seeded sample of all samples)
MAP_POINTS = 5000


class ClusteringTask(Task):
    """Options are the keys of conf/task/clustering.yaml, documented there."""

    targets = "class"  # labels, if any, are for scoring only
    labels_optional = True
    prediction_buffers = ("cluster_centers",)
    pairing_hint = (
        "cluster class-labelled data (fashion_mnist, digits, csv with data.targets=class), "
        "or a table without labels (data.target=null)"
    )

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_clusters: int | None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        monitor: str = "recon_loss",
        mode: str = "min",
        kmeans_n_init: int = 20,
        fit_on: str = "all",
        baseline: bool = True,
        refine: str | None = None,
        dec: dict | None = None,
        latent_map: str = "pca",
        seed: int = 0,
        **steps,
    ):
        super().__init__(net, optimizer, scheduler, monitor, mode, **steps)
        if not all(callable(getattr(net, name, None)) for name in ("encode", "decode")):
            raise DeepmineError(
                f"task=clustering needs a net with codes (an autoencoder); {type(net).__name__} "
                "has no encode() and decode()",
                "use net=autoencoder or net=conv_autoencoder",
            )
        if num_clusters is None or int(num_clusters) < 2:
            raise DeepmineError(
                f"task.num_clusters={num_clusters}: clustering needs at least 2 clusters",
                "set task.num_clusters=<k> (data without labels has no class count to copy)",
            )
        for key, value, choices in (
            ("fit_on", fit_on, FIT_ON),
            ("latent_map", latent_map, LATENT_MAPS),
            ("refine", refine, (None, *REFINE)),
        ):
            if value not in choices:
                raise DeepmineError(
                    f"task.{key}={value} is not one of {', '.join(map(str, choices))}",
                    f"use task.{key}={choices[0]}",
                )
        self.num_clusters = int(num_clusters)
        self.kmeans_n_init = int(kmeans_n_init)
        self.fit_on, self.baseline, self.refine = fit_on, bool(baseline), refine
        self.dec_settings = DECSettings.from_config(dec)
        self.latent_map, self.seed = latent_map, int(seed)
        #: what the plots and the run's tags need, set by `finish_test`
        self.results: dict | None = None
        #: the final clusters' centres in code space (k-means', or DEC's after refining), set
        #: by `finish_test`: what a logged model assigns new samples with
        self.register_buffer("cluster_centers", torch.zeros(self.num_clusters, net.latent_dim))

    # --- training: reconstruction -----------------------------------------------------------

    def learning_target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"recon_loss": MeanSquaredError()})

    def compute_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, target)

    def metric_inputs(self, outputs: torch.Tensor, target: torch.Tensor):
        return outputs.flatten(1), target.flatten(1)

    # --- after the test: cluster, refine, score ---------------------------------------------

    def finish_test(self) -> None:
        datamodule = self.trainer.datamodule
        splits = [s for s in ("train", "val", "test") if s in datamodule.tensors]
        parts = [datamodule.normalized(s) for s in splits]
        x = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts]).numpy()
        sizes = [len(p[1]) for p in parts]
        split_of = np.repeat(np.arange(len(splits)), sizes)
        test = split_of == splits.index("test")
        fit_rows = split_of == splits.index("train") if self.fit_on == "train" else None
        codes, recon_loss = self._encode(x)
        self.log("all/recon_loss", recon_loss)
        shown = x[test][:8]
        with torch.no_grad():  # before DEC, which trains the encoder away from its decoder
            rebuilt = self.net(shown.to(self.device)).cpu()
        kmeans = _kmeans(codes.numpy(), self.num_clusters, self.kmeans_n_init, self.seed, fit_rows)
        stages = {"ae_kmeans": kmeans.labels}
        centers = torch.as_tensor(kmeans.centers, dtype=torch.float32)
        if self.refine == "dec":
            refined = self._dec(x, kmeans.centers)
            centers = refined.centers.cpu()
            stages["dec"] = refined.assignments.numpy()
            codes, _ = self._encode(x)
            self.log("dec/iterations", float(refined.iterations))
            self.log("dec/delta_label", refined.delta)
        scored = bool((labels >= 0).any())
        logged: dict[str, float] = {}
        if scored:
            known = labels >= 0
            for stage, assigned in stages.items():
                logged |= _scored(f"{stage}/", assigned, labels, known, test)
            final = stages["dec" if self.refine == "dec" else "ae_kmeans"]
            logged |= _scored("", final, labels, known, test)
            if self.baseline:
                pixels = x.flatten(1).numpy()
                base = _kmeans(pixels, self.num_clusters, self.kmeans_n_init, self.seed, fit_rows)
                logged |= _scored("baseline/kmeans/", base.labels, labels, known, test)
        for key, value in logged.items():
            self.log(key, value)
        final = stages["dec" if self.refine == "dec" else "ae_kmeans"]
        self.cluster_centers.copy_(centers.to(self.cluster_centers))
        self.results = {
            "split": np.asarray(splits)[split_of],
            "stages": stages,
            "baseline": base.labels if scored and self.baseline else None,
            "codes": codes.numpy(),
            "clusters": final,
            "labels": labels,
            "scored": scored,
            "reconstructions": (shown, rebuilt),
        }

    def _encode(self, x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, float]:
        """Codes of `x` (on the CPU) and its mean reconstruction loss, in eval mode."""
        codes, squared = [], 0.0
        with torch.no_grad():
            for part in x.split(chunk):
                part = part.to(self.device)
                code = self.net.encode(part)
                codes.append(code.cpu())
                # from the codes already made: the encoder runs once per sample
                squared += float(F.mse_loss(self.net.decode(code), part, reduction="sum"))
        return torch.cat(codes), squared / max(x.numel(), 1)

    def _dec(self, x: torch.Tensor, centers: np.ndarray):
        from deepmine.tasks.grad_mode import gradients_on

        generator = torch.Generator().manual_seed(self.seed)
        # trainer.test runs in inference mode; DEC needs gradients and ordinary tensors
        with gradients_on():
            x = x.clone()
            start = torch.as_tensor(centers, dtype=torch.float32, device=self.device)
            return refine(
                self.net.encode,
                list(self.net.parameters()),
                x,
                start,
                self.dec_settings,
                generator,
            )

    def predict_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The nearest centre of each sample's code (k-means' and DEC's assignment) and the
        distances to every centre."""
        distances = torch.cdist(self.net.encode(x), self.cluster_centers)
        return {"cluster": distances.argmin(1), "distances": distances}

    # --- what the run shows -----------------------------------------------------------------

    def result_files(self, folder: Path) -> list[Path]:
        """`assignments.csv`: each sample's split, position in that split, label (-1: none)
        and cluster at every stage (and of the pixel k-means baseline), for analysis
        outside deepmine."""
        import pandas as pd

        if self.results is None:
            return []
        results = self.results
        splits = results["split"]
        position = np.zeros(len(splits), dtype=np.int64)
        for name in np.unique(splits):
            position[splits == name] = np.arange(int((splits == name).sum()))
        columns = {"split": splits, "index": position, "label": results["labels"]}
        columns |= {f"cluster_{stage}": assigned for stage, assigned in results["stages"].items()}
        if results["baseline"] is not None:
            columns["cluster_baseline_kmeans"] = results["baseline"]
        path = folder / "assignments.csv"
        pd.DataFrame(columns).to_csv(path, index=False)
        return [path]

    def run_tags(self) -> dict[str, str]:
        if self.results is None:
            return {}
        return {"deepmine.clustering.scored": str(self.results["scored"]).lower()}

    def plots(self, folder: Path, title: str, datamodule) -> list[Path]:
        from deepmine.tasks.clustering.plots import (
            contingency_png,
            latent_map_png,
            reconstructions_png,
        )

        if self.results is None:
            return []
        results = self.results
        names = list(getattr(datamodule, "class_names", ()) or ())
        labels = results["labels"] if results["scored"] else None
        points = _latent_points(results["codes"], self.latent_map, self.seed)
        paths = [
            latent_map_png(
                points["xy"],
                results["clusters"][points["rows"]],
                None if labels is None else labels[points["rows"]],
                names,
                folder / "latent_map.png",
                f"{title} codes ({self.latent_map.upper()}, {len(points['rows'])} samples)",
            )
        ]
        if labels is not None:
            known = labels >= 0
            n_classes = int(labels[known].max()) + 1
            clusters = results["clusters"][known]
            table = contingency(clusters, labels[known], self.num_clusters, n_classes)
            paths.append(
                contingency_png(table, names, folder / "contingency.png", f"{title} clusters")
            )
        inputs, rebuilt = results["reconstructions"]
        if inputs.dim() == 4 and len(inputs):
            paths.append(
                reconstructions_png(
                    inputs, rebuilt, folder / "reconstructions.png", f"{title} test samples"
                )
            )
        return paths

    def summary_lines(self, metrics: dict[str, float]) -> list[str]:
        lines = [f"test/recon_loss {metrics.get('test/recon_loss', float('nan')):.4f}"]
        if self.results is not None and not self.results["scored"]:
            return [*lines, "labels        none: ACC, NMI and ARI skipped (k-means still ran)"]
        for prefix in ("all/", "test/", "baseline/kmeans/all/"):
            if prefix + SCORES[0] in metrics:
                values = "  ".join(f"{s} {metrics[prefix + s]:.4f}" for s in SCORES)
                lines.append(f"{prefix:<21}{values}")
        return lines


class _KMeansResult:
    def __init__(self, labels: np.ndarray, centers: np.ndarray):
        self.labels, self.centers = labels, centers


def _kmeans(points: np.ndarray, k: int, n_init: int, seed: int, fit_rows) -> _KMeansResult:
    from sklearn.cluster import KMeans

    if len(points) < k:
        raise DeepmineError(
            f"task.num_clusters={k} is more than the {len(points)} samples",
            "lower task.num_clusters or use more data",
        )
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    model.fit(points if fit_rows is None else points[fit_rows])
    return _KMeansResult(model.predict(points), model.cluster_centers_)


def _scored(prefix: str, assigned, labels, known, test) -> dict[str, float]:
    out = {}
    for where, rows in (("all", known), ("test", known & test)):
        if rows.any():
            for name, value in scores(assigned[rows], labels[rows]).items():
                out[f"{prefix}{where}/{name}"] = value
    return out


def _latent_points(codes: np.ndarray, method: str, seed: int) -> dict:
    """A seeded sample of at most MAP_POINTS codes, projected to 2-D."""
    rows = np.random.default_rng(seed).permutation(len(codes))[:MAP_POINTS]
    rows.sort()
    sample = codes[rows]
    if sample.shape[1] <= 2:
        xy = np.pad(sample, ((0, 0), (0, 2 - sample.shape[1])))
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, init="pca", random_state=seed).fit_transform(sample)
    else:
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=seed).fit_transform(sample)
    return {"rows": rows, "xy": xy}
