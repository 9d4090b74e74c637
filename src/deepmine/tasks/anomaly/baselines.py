"""Classical detectors scored in the same run, on exactly the net's split: fitted on the normal
training samples (flattened, as the net sees them: scaled pixels or standardized features) and
scored on the test split, higher meaning more anomalous.

- `isolation_forest`: scikit-learn's `IsolationForest` (Liu, Ting & Zhou 2008), 100 trees of
  256 samples each, seeded; the score is minus its `score_samples` (the average path length,
  normalized: short paths are anomalies).
- `pca`: the reconstruction error of PCA, the linear autoencoder: the mean squared error of
  each sample against its projection back from `components` principal components fitted on the
  normal training samples (by default as many as the net's code is wide).

Both are fitted on at most `MAX_FIT_ROWS` of the normal training samples (a seeded subsample
beyond that), which keeps them to seconds on any data: one class of Fashion-MNIST (about 5,400
samples) is fitted whole.
"""

from __future__ import annotations

import numpy as np

NAMES = ("isolation_forest", "pca")
#: normal training samples the baselines are fitted on, at most (a seeded subsample beyond)
MAX_FIT_ROWS = 20_000


def fit_rows(x: np.ndarray, seed: int) -> np.ndarray:
    """`x`, or a seeded subsample of `MAX_FIT_ROWS` of its rows (in their order)."""
    if len(x) <= MAX_FIT_ROWS:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), MAX_FIT_ROWS, replace=False))
    return x[rows]


def isolation_forest(fit: np.ndarray, scored: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    # 256 samples a tree (the paper's and scikit-learn's default), fewer if fewer are given
    model = IsolationForest(n_estimators=100, max_samples=min(256, len(fit)), random_state=seed)
    model.fit(fit)
    return -model.score_samples(scored)


def pca_error(fit: np.ndarray, scored: np.ndarray, components: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    components = max(1, min(int(components), len(fit), fit.shape[1]))
    model = PCA(n_components=components, random_state=seed).fit(fit)
    rebuilt = model.inverse_transform(model.transform(scored))
    return ((scored - rebuilt) ** 2).mean(axis=1)


def baseline_scores(
    normal_train: np.ndarray, scored: np.ndarray, components: int, seed: int
) -> dict[str, np.ndarray]:
    """Each baseline's score of every row of `scored` (2-D, rows: samples), fitted on
    `normal_train` (subsampled to `MAX_FIT_ROWS`)."""
    fit = fit_rows(normal_train, seed)
    return {
        "isolation_forest": isolation_forest(fit, scored, seed),
        "pca": pca_error(fit, scored, components, seed),
    }
