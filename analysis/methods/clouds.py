"""Point clouds of token representations and the scale-free preparation every shape metric needs.

A *cloud* is a 2-D float array ``[n_points, width]``. Captured hidden states have shape
``[n_states, n_windows, window_len, width]``; the helpers below cut clouds out of them:

* the **all-token cloud** of a state: every token vector of every window (optionally without the first
  ``exclude_first`` positions of each window), subsampled to ``n_max`` rows with a fixed seed;
* the **last-token cloud** of a state: one vector per window, its last position.

Norms grow with depth, so comparisons of shape across layers must be scale-free: ``normalise_scale``
divides a cloud by its median pairwise distance (the choice is stated wherever it is shown).
"""

from __future__ import annotations

import numpy as np

from analysis.errors import InputError

__all__ = [
    "all_token_cloud",
    "last_token_cloud",
    "subsample_rows",
    "dedupe_rows",
    "median_pairwise_distance",
    "normalise_scale",
    "farthest_point_subsample",
]


def subsample_rows(X: np.ndarray, n_max: int | None, seed: int = 0) -> np.ndarray:
    """Return at most ``n_max`` rows of ``X`` chosen uniformly without replacement (sorted, fixed seed).

    The row indices are sorted so that a subsample of an ordered cloud keeps its order.
    """
    n = X.shape[0]
    if n_max is None or n <= n_max:
        return X
    idx = np.sort(np.random.default_rng(seed).choice(n, size=int(n_max), replace=False))
    return X[idx]


def subsample_indices(n: int, n_max: int | None, seed: int = 0) -> np.ndarray:
    """The indices :func:`subsample_rows` would keep for ``n`` rows."""
    if n_max is None or n <= n_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(n_max), replace=False))


def all_token_cloud(
    states: np.ndarray,
    state: int,
    n_max: int | None = None,
    seed: int = 0,
    exclude_first: int = 0,
) -> np.ndarray:
    """All-token cloud of hidden state ``state`` from captured ``states[n_states, n_windows, T, d]``.

    The same ``(n_max, seed, exclude_first)`` picks the same tokens for every state, so clouds of two states
    are paired row by row (what linearity and block influence need).
    """
    s = states[state]
    if exclude_first:
        s = s[:, exclude_first:, :]
    flat = np.asarray(s).reshape(-1, s.shape[-1])
    idx = subsample_indices(flat.shape[0], n_max, seed)
    return np.asarray(flat[idx], dtype=np.float32)


def last_token_cloud(states: np.ndarray, state: int) -> np.ndarray:
    """Last-token cloud of hidden state ``state``: one row per window (windows are never padded)."""
    return np.asarray(states[state][:, -1, :], dtype=np.float32)


def dedupe_rows(X: np.ndarray) -> np.ndarray:
    """Drop exact duplicate rows, keeping the first occurrence and the original order.

    Repeated first tokens of windows give identical states; nearest-neighbour estimators see distance 0
    for them and break, so they are removed before any such estimator.
    """
    X = np.ascontiguousarray(X)
    if X.shape[0] == 0:
        return X
    _, first = np.unique(X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel(), return_index=True)
    return X[np.sort(first)]


def median_pairwise_distance(X: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Median Euclidean distance over all pairs of (at most ``max_points`` subsampled) rows."""
    Y = subsample_rows(np.asarray(X, dtype=np.float64), max_points, seed)
    n = Y.shape[0]
    if n < 2:
        return 0.0
    sq = np.einsum("ij,ij->i", Y, Y)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (Y @ Y.T)
    iu = np.triu_indices(n, k=1)
    return float(np.sqrt(np.median(np.maximum(d2[iu], 0.0))))


def normalise_scale(X: np.ndarray, max_points: int = 2000, seed: int = 0) -> tuple[np.ndarray, float]:
    """Divide the cloud by its median pairwise distance; return ``(X / scale, scale)``.

    A constant cloud (scale 0) is returned unchanged with scale 0.0; callers report it instead of dividing.
    """
    scale = median_pairwise_distance(X, max_points=max_points, seed=seed)
    if scale <= 0.0 or not np.isfinite(scale):
        return np.asarray(X, dtype=np.float32), 0.0
    return (np.asarray(X, dtype=np.float64) / scale).astype(np.float32), scale


def farthest_point_subsample(X: np.ndarray, m: int, seed: int = 0, metric: str = "euclidean") -> np.ndarray:
    """Indices of a greedy farthest-point subsample of ``m`` rows (keeps the shape of the cloud).

    Starts from a row drawn with ``seed`` and repeatedly adds the row farthest from those chosen.
    ``metric`` is ``"euclidean"`` or ``"cosine"`` (1 − cosine similarity).
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if m >= n:
        return np.arange(n)
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)

        def dist(i: int) -> np.ndarray:
            return 1.0 - X @ X[i]
    elif metric == "euclidean":
        sq = np.einsum("ij,ij->i", X, X)

        def dist(i: int) -> np.ndarray:
            return np.sqrt(np.maximum(sq + sq[i] - 2.0 * (X @ X[i]), 0.0))
    else:
        raise InputError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    nearest = dist(first)
    for _ in range(m - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, dist(nxt))
    return np.array(chosen)
