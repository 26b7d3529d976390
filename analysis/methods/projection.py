"""2-D / 3-D projections of token clouds and the per-point values used to colour them.

* :func:`pca_2d3d` — principal components (centred, no scaling), deterministic signs;
* :func:`umap_embed` — UMAP (umap-learn), deterministic for a given ``seed`` (``random_state`` makes umap-learn
  run single-threaded and reproducible);
* colourings of the rows of an all-token cloud cut by ``clouds.all_token_cloud``: :func:`cloud_token_coordinates`
  (window index and position in window of every row, the same selection as the cloud), :func:`row_token_ids`
  and :func:`token_frequency` (how often each row's token occurs in the calibration tokens).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.decomposition import PCA

from analysis.errors import InputError
from analysis.methods.clouds import subsample_indices

__all__ = [
    "pca_2d3d",
    "umap_embed",
    "cloud_token_coordinates",
    "row_token_ids",
    "token_frequency",
]


def _check_cloud(X: np.ndarray, n_components: int, min_points: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"cloud must be a 2-D array [n_points, width], got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InputError("cloud contains NaN or infinite values")
    if n_components < 1:
        raise InputError(f"n_components must be at least 1, got {n_components}")
    if X.shape[0] < min_points:
        raise InputError(f"cloud has {X.shape[0]} points; at least {min_points} are needed")
    if n_components > X.shape[1]:
        raise InputError(f"n_components={n_components} exceeds the width {X.shape[1]}")
    return X


def pca_2d3d(X: np.ndarray, n_components: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project the centred cloud on its first ``n_components`` principal axes (2 or 3 for the views).

    Returns ``(coordinates [n_points, n_components] float32, explained_variance_ratio [n_components])``. The sign
    of each axis is fixed so that its loading of largest magnitude is positive, so results do not flip between
    runs or solvers. ``seed`` only matters when scikit-learn picks its randomized solver (large clouds).
    """
    X = _check_cloud(X, n_components, min_points=max(2, n_components))
    pca = PCA(n_components=n_components, random_state=seed)
    coords = pca.fit_transform(np.asarray(X, dtype=np.float64))
    components = pca.components_
    signs = np.sign(components[np.arange(n_components), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1.0
    return (coords * signs).astype(np.float32), np.asarray(pca.explained_variance_ratio_, dtype=np.float64)


def umap_embed(
    X: np.ndarray,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    metric: str = "euclidean",
) -> np.ndarray:
    """UMAP embedding ``[n_points, n_components]`` float32 of the cloud; the same ``seed`` gives the same output.

    ``n_neighbors`` must be at least 2 and below the number of points.
    """
    X = _check_cloud(X, n_components, min_points=max(n_components + 2, 4))
    if not 2 <= n_neighbors < X.shape[0]:
        raise InputError(f"n_neighbors must be in 2..{X.shape[0] - 1} for {X.shape[0]} points, got {n_neighbors}")
    if min_dist < 0.0:
        raise InputError(f"min_dist must be non-negative, got {min_dist}")
    import umap  # imported here: it pulls numba, slow to import

    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=metric,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        embedding = reducer.fit_transform(np.asarray(X, dtype=np.float32))
    return np.asarray(embedding, dtype=np.float32)


def cloud_token_coordinates(
    n_windows: int,
    window_len: int,
    n_max: int | None = None,
    seed: int = 0,
    exclude_first: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(window_index, position)`` of every row of ``clouds.all_token_cloud(states, s, n_max, seed, exclude_first)``.

    Both are int64 arrays of the cloud's length; ``position`` is the 0-based position in the window (counting the
    excluded first positions, so it matches the token ids). For the last-token cloud use
    ``(np.arange(n_windows), np.full(n_windows, window_len - 1))``.
    """
    kept = window_len - exclude_first
    if n_windows < 0 or kept < 1 or exclude_first < 0:
        raise InputError(
            f"bad window shape: n_windows={n_windows}, window_len={window_len}, exclude_first={exclude_first}"
        )
    flat = subsample_indices(n_windows * kept, n_max, seed).astype(np.int64)
    return flat // kept, exclude_first + flat % kept


def row_token_ids(token_ids: np.ndarray, window_index: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Token id of every cloud row, from the calibration ids ``[n_windows, window_len]``."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2:
        raise InputError(f"token_ids must be [n_windows, window_len], got shape {token_ids.shape}")
    return token_ids[np.asarray(window_index), np.asarray(position)]


def token_frequency(
    row_ids: np.ndarray,
    corpus_ids: np.ndarray | None = None,
    log: bool = False,
) -> np.ndarray:
    """How many times each row's token id occurs in ``corpus_ids`` (any shape; default: ``row_ids`` themselves).

    Returns int64 counts (0 for a token absent from the corpus), or with ``log=True`` ``log10(count)`` as float64
    — the usual colour scale, since token frequencies are Zipf-distributed; then a count of 0 raises
    ``ValueError`` instead of giving ``-inf``.
    """
    rows = np.asarray(row_ids).ravel()
    corpus = rows if corpus_ids is None else np.asarray(corpus_ids).ravel()
    values, counts = np.unique(corpus, return_counts=True)
    freq = np.zeros(rows.shape, dtype=np.int64)
    if values.size:
        where = np.clip(np.searchsorted(values, rows), 0, values.size - 1)
        found = values[where] == rows
        freq[found] = counts[where[found]]
    if not log:
        return freq
    if np.any(freq == 0):
        raise InputError("some row tokens do not occur in corpus_ids; log frequency undefined (pass log=False)")
    return np.log10(freq.astype(np.float64))
