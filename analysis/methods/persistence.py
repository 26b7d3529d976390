"""Per-layer Vietoris–Rips persistence of a point cloud and the summaries the TOPOLOGY views show.

A *diagram* is a float array ``[k, 2]`` of ``(birth, death)`` pairs of one homology dimension; ``death`` may be
``inf`` (the essential H0 bar of a connected cloud). Conventions used throughout:

* a bar ``(b, d)`` is alive on the half-open interval ``[b, d)``; its *lifetime* is ``d - b`` (``inf`` if essential);
* summaries of lifetimes (total persistence, persistent entropy) use the **finite** bars only;
* diagram distances drop infinite bars (every non-empty Rips diagram of H0 has exactly one, so keeping them would
  only add ``|inf - inf|`` terms) and use the L∞ ground metric by default (persim's Wasserstein uses L2).

The clouds are prepared by :mod:`analysis.methods.clouds` (scale normalisation by the median pairwise distance, greedy
farthest-point subsample); :func:`layer_diagrams` chains both before :func:`rips_diagrams`.

Rips persistence is computed by GUDHI (``gudhi.sklearn.RipsPersistence``, GUDHI's Ripser-based backend, Z/11Z
coefficients); it is two orders of magnitude faster than building a ``gudhi.RipsComplex`` simplex tree and gives the
same diagrams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from analysis.errors import InputError
from analysis.methods.clouds import farthest_point_subsample, normalise_scale

__all__ = [
    "Metric",
    "LayerDiagrams",
    "rips_diagrams",
    "layer_diagrams",
    "pairwise_distances",
    "lifetimes",
    "finite_bars",
    "betti_curve",
    "total_persistence",
    "persistent_entropy",
    "count_bars_above",
    "diagram_distance",
    "diagram_distance_matrix",
    "estimate_rips_seconds",
    "RIPS_SECONDS_AT_1000",
    "RIPS_SECONDS_EXPONENT",
]

Metric = Literal["euclidean", "cosine"]
DistanceKind = Literal["wasserstein", "bottleneck"]


# ----------------------------------------------------------------------------------------------------------------------
# Rips persistence


def pairwise_distances(X: np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """Dense ``[n, n]`` distance matrix of the rows of ``X`` (float64, zero diagonal, symmetric).

    ``"cosine"`` is ``1 - cos(x_i, x_j)`` (clipped to ``[0, 2]``; a zero row has distance 1 to every other row),
    the same definition as :func:`analysis.methods.clouds.farthest_point_subsample`. It is a dissimilarity, not a metric
    (no triangle inequality); Vietoris–Rips filtrations are well defined on it all the same.
    """
    X = np.asarray(X, dtype=np.float64)
    if metric == "euclidean":
        sq = np.einsum("ij,ij->i", X, X)
        D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (X @ X.T), 0.0))
    elif metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        U = X / np.where(norms > 0, norms, 1.0)
        D = np.clip(1.0 - U @ U.T, 0.0, 2.0)
    else:
        raise InputError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    return D


def rips_diagrams(
    X: np.ndarray,
    max_dim: int = 1,
    metric: Metric = "euclidean",
    max_edge: float | None = None,
) -> list[np.ndarray]:
    """Vietoris–Rips persistence diagrams of the cloud ``X`` for homology dimensions ``0..max_dim``.

    Returns one float64 array ``[k, 2]`` of ``(birth, death)`` per dimension, sorted by birth then death; deaths
    may be ``inf``. Bars of zero length are not reported. ``max_edge`` truncates the filtration at that edge
    length (bars still alive there get death ``inf``); ``None`` builds the full filtration.

    The caller passes an already prepared cloud (normalised, subsampled): the cost grows roughly like ``n**2.3`` for
    ``max_dim = 1`` and much faster for ``max_dim >= 2`` (see :func:`estimate_rips_seconds`).
    ``metric="euclidean"`` works on the points, ``"cosine"`` on the matrix of :func:`pairwise_distances`.
    """
    from gudhi.sklearn import RipsPersistence

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"a cloud must be a 2-D array [n_points, width], got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InputError("the cloud contains NaN or infinite values")
    if max_dim < 0:
        raise InputError(f"max_dim must be >= 0, got {max_dim}")
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
    if max_edge is not None and not max_edge > 0:
        raise InputError(f"max_edge must be positive or None, got {max_edge}")
    n = X.shape[0]
    dims = list(range(max_dim + 1))
    if n == 0:
        return [np.zeros((0, 2)) for _ in dims]
    if n == 1:
        return [np.array([[0.0, np.inf]])] + [np.zeros((0, 2)) for _ in dims[1:]]

    threshold = np.inf if max_edge is None else float(max_edge)
    if metric == "euclidean":
        rp = RipsPersistence(homology_dimensions=dims, threshold=threshold, input_type="point cloud")
        raw = rp.fit_transform([X])[0]
    else:
        rp = RipsPersistence(homology_dimensions=dims, threshold=threshold, input_type="full distance matrix")
        raw = rp.fit_transform([pairwise_distances(X, "cosine")])[0]
    return [_sorted_diagram(np.asarray(d, dtype=np.float64).reshape(-1, 2)) for d in raw]


class LayerDiagrams(NamedTuple):
    """Diagrams of one layer's cloud and the scale it was divided by (0.0 for a constant cloud)."""

    diagrams: list[np.ndarray]
    scale: float


def layer_diagrams(
    X: np.ndarray,
    n_points: int = 300,
    seed: int = 0,
    metric: Metric = "euclidean",
    max_dim: int = 1,
    max_edge: float | None = None,
) -> LayerDiagrams:
    """Scale-normalise ``X`` (median pairwise distance), farthest-point subsample ``n_points`` rows, run Rips.

    The scale is the median pairwise Euclidean distance of :func:`analysis.methods.clouds.normalise_scale`, computed on the
    full cloud before subsampling, so diagrams of different layers share a scale-free unit. The farthest-point
    subsample uses ``metric`` and starts from a row drawn with ``seed``. Returns ``(diagrams, scale)``.
    """
    Xn, scale = normalise_scale(np.asarray(X), seed=seed)
    idx = farthest_point_subsample(Xn, n_points, seed=seed, metric=metric)
    return LayerDiagrams(rips_diagrams(Xn[idx], max_dim=max_dim, metric=metric, max_edge=max_edge), scale)


def _sorted_diagram(dgm: np.ndarray) -> np.ndarray:
    if dgm.shape[0] == 0:
        return np.zeros((0, 2))
    order = np.lexsort((dgm[:, 1], dgm[:, 0]))
    return np.ascontiguousarray(dgm[order])


# ----------------------------------------------------------------------------------------------------------------------
# Summaries of one diagram


def _as_diagram(diagram: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    d = np.asarray(diagram, dtype=np.float64)
    if d.size == 0:
        return np.zeros((0, 2))
    if d.ndim != 2 or d.shape[1] != 2:
        raise InputError(f"a diagram must have shape [k, 2], got {d.shape}")
    return d


def finite_bars(diagram: np.ndarray) -> np.ndarray:
    """The bars of ``diagram`` whose death is finite."""
    d = _as_diagram(diagram)
    return d[np.isfinite(d[:, 1])]


def lifetimes(diagram: np.ndarray) -> np.ndarray:
    """``death - birth`` of every bar (``inf`` for essential bars)."""
    d = _as_diagram(diagram)
    return d[:, 1] - d[:, 0]


def betti_curve(diagram: np.ndarray, grid: np.ndarray | Sequence[float]) -> np.ndarray:
    """Number of bars alive at each value ``t`` of ``grid``: ``#{(b, d) : b <= t < d}`` (int64, same shape as grid)."""
    d = _as_diagram(diagram)
    t = np.asarray(grid, dtype=np.float64)
    births = np.sort(d[:, 0])
    deaths = np.sort(d[:, 1])
    born = np.searchsorted(births, t, side="right")  # b <= t
    dead = np.searchsorted(deaths, t, side="right")  # d <= t
    return (born - dead).astype(np.int64)


def total_persistence(diagram: np.ndarray, p: float = 1.0) -> float:
    """``sum (d - b)**p`` over the finite bars (0.0 for none)."""
    life = lifetimes(finite_bars(diagram))
    return float(np.sum(life**p)) if life.size else 0.0


def persistent_entropy(diagram: np.ndarray) -> float:
    """Shannon entropy (natural log, nats) of the normalised lifetimes of the finite bars.

    With ``l_i = d_i - b_i > 0`` and ``p_i = l_i / sum_j l_j``, returns ``-sum_i p_i log p_i``: 0 for one bar (or
    none), ``log m`` for ``m`` bars of equal length. Zero-length bars contribute nothing. Divide by ``log m`` for a
    value in ``[0, 1]``.
    """
    life = lifetimes(finite_bars(diagram))
    life = life[life > 0]
    if life.size == 0:
        return 0.0
    p = life / life.sum()
    return float(-np.sum(p * np.log(p)))


def count_bars_above(diagram: np.ndarray, threshold: float) -> int:
    """Number of bars with lifetime strictly greater than ``threshold`` (essential bars count: lifetime ``inf``)."""
    return int(np.count_nonzero(lifetimes(diagram) > threshold))


# ----------------------------------------------------------------------------------------------------------------------
# Distances between diagrams


def diagram_distance(
    a: np.ndarray,
    b: np.ndarray,
    kind: DistanceKind = "wasserstein",
    order: float = 1.0,
    internal_p: float = np.inf,
    delta: float = 1e-4,
) -> float:
    """Distance between two diagrams of the same homology dimension, infinite bars dropped.

    ``"bottleneck"``: GUDHI's exact bottleneck distance (``gudhi.bottleneck_distance``).
    ``"wasserstein"``: the ``order``-Wasserstein distance whose ground metric between two points is the
    L^``internal_p`` norm in the plane (default L∞, GUDHI's and Hera's convention: a point is matched to the diagonal
    at cost ``(d - b) / 2``), computed by Hera through ``gudhi.hera.wasserstein_distance`` to a relative error
    ``delta``. ``persim.wasserstein`` is the ``order = 1, internal_p = 2`` case (computed exactly), between 1 and
    sqrt(2) times the L∞ value: say which one a figure shows.
    """
    import gudhi
    import gudhi.hera

    fa, fb = finite_bars(a), finite_bars(b)
    if kind == "bottleneck":
        return float(gudhi.bottleneck_distance(fa, fb, 0))
    if kind == "wasserstein":
        if order < 1:
            raise InputError(f"Wasserstein order must be >= 1, got {order}")
        if fa.shape[0] == 0 and fb.shape[0] == 0:
            return 0.0
        return float(gudhi.hera.wasserstein_distance(fa, fb, order=order, internal_p=internal_p, delta=delta))
    raise InputError(f"unknown diagram distance {kind!r}; use 'wasserstein' or 'bottleneck'")


def diagram_distance_matrix(
    diagrams: Sequence[np.ndarray],
    kind: DistanceKind = "wasserstein",
    order: float = 1.0,
    internal_p: float = np.inf,
) -> np.ndarray:
    """Symmetric ``[n, n]`` matrix of :func:`diagram_distance` between every pair of ``diagrams``.

    All diagrams must be of the same homology dimension (e.g. the H1 diagram of every layer); infinite bars are
    dropped. The diagonal is 0. ``kind``, ``order`` and ``internal_p`` as in :func:`diagram_distance`.
    """
    fin = [finite_bars(d) for d in diagrams]
    n = len(fin)
    M = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            M[i, j] = M[j, i] = diagram_distance(fin[i], fin[j], kind=kind, order=order, internal_p=internal_p)
    return M


# ----------------------------------------------------------------------------------------------------------------------
# Cost estimate

#: Seconds for a Rips persistence of 1000 points, by ``max_dim``, and the exponent ``a`` of
#: ``seconds ~ (n / 1000) ** a``: least-squares fits on one core of the development machine (2 shared cores),
#: Gaussian clouds in 256 dimensions divided by their median distance, full filtration. Sizes measured:
#: H0 500..4000 (0.05..3.8 s), H1 300..2000 (0.04..2.7 s), H2 150..600 (0.07..5.4 s), H3 60..150 (0.007..0.29 s;
#: its value at 1000 points is an extrapolation). Reproduce with::
#:
#:     X, _ = normalise_scale(np.random.default_rng(0).normal(size=(n, 256)))
#:     t = time.perf_counter(); rips_diagrams(X, max_dim=d); print(time.perf_counter() - t)
RIPS_SECONDS_AT_1000: dict[int, float] = {0: 0.18, 1: 0.6, 2: 30.0, 3: 900.0}
RIPS_SECONDS_EXPONENT: dict[int, float] = {0: 2.1, 1: 2.3, 2: 3.2, 3: 4.1}


def estimate_rips_seconds(n_points: int, max_dim: int = 1) -> float:
    """Rough wall time of :func:`rips_diagrams` on ``n_points`` points with the full filtration (``max_dim <= 3``).

    ``RIPS_SECONDS_AT_1000[max_dim] * (n_points / 1000) ** RIPS_SECONDS_EXPONENT[max_dim]``. Meant for a "this will
    take about ..." hint before running; expect a factor of 2-3 either way (it depends on the cloud, on
    ``max_edge`` and on the load of the machine). Clouds with a decaying spectrum, like hidden states, farthest-point
    subsampled, ran at or below the estimate (H1, 1000 points: 0.8 s). The bad case is a cloud whose points are
    all nearly equidistant, e.g. a farthest-point subsample of an isotropic 64-dimensional Gaussian: H1 of 1000 such
    points took 36 s (600: 6 s), because almost every edge closes a loop. The first call also pays ~2 s of imports.
    """
    if n_points < 0:
        raise InputError(f"n_points must be non-negative, got {n_points}")
    if max_dim not in RIPS_SECONDS_AT_1000:
        raise InputError(f"no cost calibration for max_dim={max_dim}; calibrated: {sorted(RIPS_SECONDS_AT_1000)}")
    return float(RIPS_SECONDS_AT_1000[max_dim] * (n_points / 1000.0) ** RIPS_SECONDS_EXPONENT[max_dim])
