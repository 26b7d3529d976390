"""Intrinsic dimension (ID) of token clouds, and the ID-against-depth profile (METHODS.md §4).

Estimators (all take a cloud ``X[n_points, width]`` and return a float):

* :func:`twonn` — Facco et al. 2017, "Estimating the intrinsic dimension of datasets by a minimal
  neighborhood information". For every point ``μ_i = r_2 / r_1`` (distances to its 2nd and 1st nearest
  neighbour). Under local uniformity ``μ`` is Pareto: ``F(μ) = 1 − μ^{−d}``, so
  ``−log(1 − F(μ)) = d · log μ``. ``fit="linear"`` sorts the ``μ``, drops the largest ``discard_fraction``,
  and fits that line through the origin with the empirical ``F(μ_(i)) = i / N`` (i = 1..N, N = all points, as in
  the paper and scikit-dimension). ``fit="mle"`` is the maximum-likelihood estimate of the Pareto shape: with
  ``log μ ~ Exponential(d)`` and the largest ratios censored (type-II censoring, ``n_keep`` of ``N`` kept),
  ``d = (n_keep − 1) / (Σ_{i ≤ n_keep} log μ_(i) + (N − n_keep) log μ_(n_keep))``; with ``discard_fraction=0``
  this is the unbiased ``(N − 1) / Σ log μ_i`` of METHODS.md.
* :func:`gride` — Denti et al. 2022, "The generalized ratios intrinsic dimension estimator" (Sci. Rep. 12, 20005).
  ``μ_i = r_{2k} / r_k`` (neighbours of order ``n1 = k`` and ``n2 = 2k``). Under local uniformity up to the
  ``n2``-th neighbour, ``μ`` has density

      f(μ) = d (μ^d − 1)^{n2−n1−1} / ( B(n2−n1, n1) · μ^{(n2−1)d + 1} ),   μ > 1,

  so, with ``ℓ_i = log μ_i`` and ``N`` points, the log-likelihood is (up to terms free of ``d``)

      log L(d) = (N − 1) log d + (n2−n1−1) Σ log(1 − e^{−d ℓ_i}) − n1 d Σ ℓ_i

  (``(N − 1) log d`` instead of ``N log d`` is DADApy's convention, which makes ``k = 1`` the unbiased TwoNN
  MLE). It is strictly concave in ``d``: the score

      ∂ log L / ∂d = (N − 1)/d + (n2−n1−1) Σ ℓ_i / (e^{d ℓ_i} − 1) − n1 Σ ℓ_i

  decreases from +∞ (d → 0) to ``−n1 Σ ℓ_i < 0`` (d → ∞), so the maximiser is its unique root, found by
  bracketing and Brent's method. The standard error is ``1 / sqrt(observed Fisher information)`` with
  ``I(d) = (N − 1)/d² + (n2−n1−1) Σ ℓ_i² e^{d ℓ_i} / (e^{d ℓ_i} − 1)²``. As in DADApy, ratios above
  ``q50 + 20 (q95 − q50)`` of ``μ`` are dropped as likely overlapping points (``outlier_cut``).
  :func:`gride_sweep` evaluates ``k = 1, 2, 4, …``: the ID against scale.
* :func:`correlation_dimension` — Grassberger & Procaccia 1983: ``C(r)`` = fraction of pairs closer than ``r``;
  the ID is the least-squares slope of ``log C(r)`` against ``log r`` over ``n_radii`` log-spaced radii between
  two radii chosen as **quantiles of the pairwise distances** (default the 0.1 % and 5 % quantiles, i.e. the
  scale where ``C(r)`` goes from 0.001 to 0.05). Quantile-defined radii make the estimate scale invariant and put
  the fit in the small-``r`` regime on every layer whatever its norm; absolute radii (``radii=(r_lo, r_hi)``)
  are also accepted, and then the cloud's scale matters — pass scale-normalised clouds
  (``clouds.normalise_scale``) so that one range means the same on every layer. The estimator is biased low in
  high dimension (finite samples cannot reach the small-``r`` regime: with 2000 Gaussian points, about −8 % at
  d = 5 and −20 % at d = 10, where TwoNN and GRIDE are within 5 %); it is the *correlation dimension*, not the
  "correlators" of arXiv 2503.22547, whose exact definition could not be verified.

Nearest-neighbour distances are exact (:func:`knn_distances`): fast float32 blocked matrix products on the
centred cloud (``torch``, optionally on a GPU) propose candidates, which are re-measured as ``‖x_i − x_j‖`` in
the input's precision and certified against a rigorous bound on the float32 error (rows that fail are widened,
then measured against every row). Exact duplicate rows are removed (``clouds.dedupe_rows``) before any estimate.

Bad input never gives NaN silently: fewer than ``MIN_POINTS`` distinct rows (which covers constant and
all-duplicate clouds), non-finite entries, or a degenerate ratio distribution raise :class:`ValueError` with the
reason.

:func:`id_with_spread` repeats an estimator on disjoint random subsets; :func:`id_profile` builds the per-state
table, on scale-normalised clouds: the headline is the estimate of the whole distinct cloud, the subsets give the
spread. TwoNN depends on the sample size (the scale it probes): on the bundled model, subsets of ~1024 of 4096
points read up to a third higher than the whole cloud.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
from scipy.optimize import brentq

from analysis.errors import InputError
from analysis.methods.clouds import dedupe_rows, normalise_scale, subsample_rows

__all__ = [
    "MIN_POINTS",
    "knn_distances",
    "twonn",
    "twonn_from_knn",
    "gride",
    "gride_with_error",
    "gride_sweep",
    "gride_sweep_from_knn",
    "correlation_dimension",
    "id_with_spread",
    "id_profile",
    "ESTIMATORS",
]

MIN_POINTS = 20
"""Fewest distinct points an estimator accepts; below this it raises ``ValueError``."""

_BLOCK_ELEMENTS = 1 << 23  # ≈ 64 MiB of float64 per block of the distance matrix
_GATHER_ELEMENTS = 1 << 23  # candidate rows gathered at once when re-measuring distances
_PROBE_ROWS = 256  # rows of the first block, which decide whether float32 candidates are worth computing


# ----------------------------------------------------------------------------------------------------------------
# input checks and exact nearest neighbours


def _prepare(X: np.ndarray, what: str = "cloud", min_points: int = MIN_POINTS) -> np.ndarray:
    """Validate a cloud and drop exact duplicate rows.

    float32 clouds stay float32 (captured hidden states are float32; their differences are exact in it), any
    other real dtype becomes float64.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"{what} must be a 2-D array [n_points, width], got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {X.shape})")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise InputError(f"{what} must hold real numbers, got dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        raise InputError(f"{what} contains NaN or infinite values")
    n_rows = X.shape[0]
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    # + 0.0 turns -0.0 into +0.0: the same point with different bytes would escape the byte-wise dedupe
    X = dedupe_rows(np.asarray(X, dtype=dtype) + dtype(0.0))
    if X.shape[0] == 1:
        raise InputError(f"{what} is constant: all {n_rows} rows are the same point; its dimension is undefined")
    if X.shape[0] < min_points:
        raise InputError(
            f"{what} has {X.shape[0]} distinct points (of {n_rows} rows); at least {min_points} are needed"
        )
    return X


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def knn_distances(X: np.ndarray, k: int, device: str | torch.device | None = None) -> np.ndarray:
    """Exact Euclidean distances from every row to its ``k`` nearest *other* rows, sorted ascending.

    Returns ``[n_points, k]`` float64. Rows are not deduplicated here (a duplicate has distance 0).

    Algorithm (exact, not approximate):

    1. candidates: on the centred cloud rounded to float32, blocked products ``‖x‖² + ‖y‖² − 2 x·y`` and the
       ``m = k + 2`` smallest per row (``torch.topk``);
    2. refinement: each candidate distance is re-measured as ``‖x_i − x_j‖`` from the *input* values
       (float32 input: differences of float32 numbers, accurate to float32 rounding of the distance itself;
       otherwise float64), so that cancellation in step 1 cannot distort small distances;
    3. certification: with ``E_i = (4 γ_D + 16 u)(‖c_i‖² + max_j ‖c_j‖²)`` (``c`` centred rows, ``u = 2⁻²⁴``,
       ``γ_D = D u / (1 − D u)``) a bound on the float32 error of any squared distance from row ``i`` in step 1,
       no non-candidate can be nearer than the ``k``-th refined distance if that distance squared (inflated by
       its own rounding) is at most the ``m``-th candidate's step-1 value minus ``E_i``. The max runs over the
       bulk only: points with ``‖c_j‖² > 16 ×`` the 90th percentile are instead ruled out for row ``i`` when
       ``(min_far ‖c_j‖ − ‖c_i‖)²`` exceeds the ``k``-th distance squared. Rows that fail get their
       candidates again from float64 products (the same bound with ``u = 2⁻⁵³``: it certifies clouds with a few
       huge-norm points, such as the attention-sink token of LLM hidden states, where the float32 bound exceeds
       the neighbour distances of almost every row), then, for near ties, from ``m = 4k + 32`` float64
       candidates; the few that fail even then are measured against every row directly. When the first
       ``_PROBE_ROWS`` rows mostly fail in float32, the remaining rows start from float64 candidates.
    """
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = X.astype(np.float64)
    n, width = X.shape
    if not 1 <= k <= n - 1:
        raise InputError(f"k={k} neighbours need at least k + 1 points; the cloud has {n}")
    dev = _device(device)
    reference = torch.from_numpy(np.ascontiguousarray(X)).to(dev)
    centred = torch.from_numpy(X.astype(np.float64) - X.astype(np.float64).mean(axis=0, keepdims=True)).to(dev)
    points = centred.to(torch.float32)
    sq = (points * points).sum(dim=1)
    centred_sq = (centred * centred).sum(dim=1)
    u = 2.0**-24
    gamma = width * u / (1.0 - width * u)
    # A few points far outside the bulk (the attention-sink tokens of LLM hidden states: ~100x the median norm)
    # would make the float32 bound below exceed every neighbour distance. They are left out of it (``far``) and
    # ruled out as neighbours by the reverse triangle inequality ‖x_i − x_j‖ ≥ ‖c_j‖ − ‖c_i‖ instead.
    norms = torch.sqrt(centred_sq)
    far = centred_sq > 16.0 * torch.quantile(centred_sq, 0.9)
    if bool(far.any()):
        bulk_max = centred_sq[~far].max()
        far_norm_min = float(norms[far].min()) * (1.0 - 1e-9)
    else:
        bulk_max, far_norm_min = centred_sq.max(), math.inf
    error_bound = (4.0 * gamma + 16.0 * u) * (centred_sq + bulk_max)
    u64 = 2.0**-53
    gamma64 = width * u64 / (1.0 - width * u64)
    error_bound64 = (4.0 * gamma64 + 16.0 * u64) * (centred_sq + centred_sq.max())
    refine_inflation = 1.0 + (gamma if X.dtype == np.float32 else 0.0) + 4.0 * u

    def refine(
        rows: torch.Tensor, d2_rows: torch.Tensor, m: int, bound: torch.Tensor = error_bound
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted exact distances to the ``m`` best candidates of ``rows``, and whether ``k`` are certified."""
        approx, idx = torch.topk(d2_rows, m, dim=1, largest=False, sorted=True)
        exact = torch.empty((rows.numel(), m), dtype=torch.float64, device=dev)
        chunk = max(1, _GATHER_ELEMENTS // (m * width))  # bounds the [rows, m, width] gather
        for a in range(0, rows.numel(), chunk):
            b = min(rows.numel(), a + chunk)
            diff = reference.index_select(0, idx[a:b].flatten()).view(b - a, m, width)
            diff.sub_(reference[rows[a:b]][:, None, :])
            exact[a:b] = torch.linalg.vector_norm(diff, dim=2).to(torch.float64)
        exact, _ = torch.sort(exact, dim=1)
        if m == n - 1:  # every other row is a candidate
            return exact, torch.ones(rows.numel(), dtype=torch.bool, device=dev)
        cut = approx[:, -1].to(torch.float64) - bound[rows]
        kth = exact[:, k - 1] ** 2 * refine_inflation
        certified = kth <= cut
        if bound is error_bound and math.isfinite(far_norm_min):  # the far points, outside the float32 bound
            gap = far_norm_min - norms[rows] * (1.0 + 1e-9)
            certified &= ~far[rows] & (gap > 0) & (gap**2 >= kth)
        return exact, certified

    block = max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))
    out = np.empty((n, k), dtype=np.float64)
    # The first rows probe the float32 bound. When it certifies fewer than half of them (clouds of near-duplicates,
    # e.g. shallow LLM layers where one token in different contexts gives nearly the same vector), every later
    # block goes straight to float64 candidates instead of paying float32 and then float64 for most rows.
    probe = min(block, _PROBE_ROWS)
    use64 = False
    start = 0
    while start < n:
        stop = min(n, start + (probe if start == 0 else block))
        rows = torch.arange(start, stop, device=dev)
        if use64:
            failed = torch.arange(stop - start, device=dev)
            result = torch.empty((stop - start, k), dtype=torch.float64, device=dev)
        else:
            d2 = torch.addmm(sq[None, :], points[start:stop], points.T, alpha=-2.0).add_(sq[start:stop, None])
            d2[rows - start, rows] = math.inf  # a point is not its own neighbour
            exact, certified = refine(rows, d2, min(n - 1, k + 2))
            result = exact[:, :k].clone()
            failed = torch.nonzero(~certified).flatten()
            if start == 0 and stop < n and 2 * failed.numel() > stop - start:
                use64 = True
        if failed.numel():  # float64 candidates for the rows the float32 bound cannot certify
            r64 = rows[failed]
            d2_64 = torch.addmm(centred_sq[None, :], centred[r64], centred.T, alpha=-2.0).add_(centred_sq[r64, None])
            d2_64[torch.arange(r64.numel(), device=dev), r64] = math.inf
            exact, certified = refine(r64, d2_64, min(n - 1, k + 2), error_bound64)
            result[failed] = exact[:, :k]
            if not bool(certified.all()):  # near-ties: widen the candidate set
                wide = torch.nonzero(~certified).flatten()
                exact, certified_wide = refine(r64[wide], d2_64[wide], min(n - 1, 4 * k + 32), error_bound64)
                result[failed[wide]] = exact[:, :k]
                certified[wide] = certified_wide
            for i in failed[~certified].tolist():
                row = torch.linalg.vector_norm(reference - reference[start + i], dim=1).to(torch.float64)
                row[start + i] = math.inf
                result[i] = torch.topk(row, k, largest=False, sorted=True).values
        out[start:stop] = result.cpu().numpy()
        start = stop
    return out


# ----------------------------------------------------------------------------------------------------------------
# TwoNN


def twonn(
    X: np.ndarray,
    discard_fraction: float = 0.1,
    fit: str = "linear",
    device: str | torch.device | None = None,
) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the cloud ``X[n_points, width]``.

    ``fit="linear"``: slope through the origin of ``−log(1 − i/N)`` against ``log μ_(i)`` for the smallest
    ``(1 − discard_fraction) · N`` ratios. ``fit="mle"``: censored maximum likelihood (see the module doc).
    Exact duplicate rows are removed first. Raises ``ValueError`` on fewer than ``MIN_POINTS`` distinct points
    or when every kept ratio is 1 (ties everywhere, e.g. a regular lattice).
    """
    if fit not in ("linear", "mle"):
        raise InputError(f"fit must be 'linear' or 'mle', got {fit!r}")
    if not 0.0 <= discard_fraction < 1.0:
        raise InputError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    X = _prepare(X)
    return twonn_from_knn(knn_distances(X, 2, device=device), discard_fraction, fit)


def twonn_from_knn(r: np.ndarray, discard_fraction: float = 0.1, fit: str = "linear") -> float:
    """:func:`twonn` from precomputed neighbour distances ``r[n_points, ≥2]`` of *distinct* points (sorted rows, as
    :func:`knn_distances` returns), so that one neighbour search can serve several estimators."""
    if fit not in ("linear", "mle"):
        raise InputError(f"fit must be 'linear' or 'mle', got {fit!r}")
    if not 0.0 <= discard_fraction < 1.0:
        raise InputError(f"discard_fraction must be in [0, 1), got {discard_fraction}")
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2 or not np.all(r[:, 0] > 0.0):
        raise InputError("need distances to 2 neighbours of distinct points (first neighbour distance > 0)")
    log_mu = np.sort(np.log(r[:, 1] / r[:, 0]))
    n = log_mu.size
    n_keep = int(n * (1.0 - discard_fraction))
    if n_keep < 2:
        raise InputError(f"only {n_keep} ratios left after discarding {discard_fraction:.0%}; need at least 2")
    kept = log_mu[:n_keep]
    if fit == "linear":
        y = -np.log1p(-np.arange(1, n_keep + 1) / n)
        denominator = float(kept @ kept)
        if denominator <= 0.0:
            raise InputError("degenerate cloud: r2 == r1 for every kept point (ties everywhere); TwoNN undefined")
        return float(kept @ y) / denominator
    denominator = float(kept.sum() + (n - n_keep) * kept[-1])
    if denominator <= 0.0:
        raise InputError("degenerate cloud: r2 == r1 for every kept point (ties everywhere); TwoNN undefined")
    return (n_keep - 1) / denominator


# ----------------------------------------------------------------------------------------------------------------
# GRIDE


def _gride_from_log_mu(log_mu: np.ndarray, n1: int, n2: int, outlier_cut: bool = True) -> tuple[float, float]:
    """GRIDE maximum-likelihood ID and its standard error from ``ℓ_i = log(r_{n2} / r_{n1})``."""
    log_mu = log_mu[log_mu > 0.0]  # ties (r_n1 == r_n2) carry no information on d and make the score 0/0
    if outlier_cut and log_mu.size:
        mu = np.exp(log_mu)
        q50, q95 = np.percentile(mu, [50, 95])
        log_mu = log_mu[mu < q50 + 20.0 * (q95 - q50)] if q95 > q50 else log_mu
    n = log_mu.size
    if n < 2:
        raise InputError(f"GRIDE (n1={n1}, n2={n2}): fewer than 2 untied ratios; the cloud is degenerate")
    total = float(log_mu.sum())
    extra = n2 - n1 - 1

    def score(d: float) -> float:
        # Σ ℓ / (e^{dℓ} − 1), written with expm1 for accuracy at small dℓ
        return (n - 1) / d + extra * float(np.sum(log_mu / np.expm1(d * log_mu))) - n1 * total

    lo, hi = 1e-9, 1.0  # score(lo) > 0: (n − 1)/d dominates
    while score(hi) > 0.0:
        hi *= 2.0
        if hi > 1e7:
            raise InputError(f"GRIDE (n1={n1}, n2={n2}): likelihood has no finite maximum")
    d = brentq(score, lo, hi, xtol=1e-12, rtol=1e-12)
    half = 0.5 * d * log_mu
    info = (n - 1) / d**2 + extra * float(np.sum((log_mu / (2.0 * np.sinh(half))) ** 2))
    return float(d), float(1.0 / math.sqrt(info))


def gride_with_error(
    X: np.ndarray,
    k: int = 1,
    outlier_cut: bool = True,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """GRIDE ID with neighbours of order ``n1 = k`` and ``n2 = 2k``, and its standard error (Fisher information)."""
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k}")
    k = int(k)
    X = _prepare(X, min_points=max(MIN_POINTS, 2 * k + 1))
    r = knn_distances(X, 2 * k, device=device)
    return _gride_from_log_mu(np.log(r[:, 2 * k - 1] / r[:, k - 1]), k, 2 * k, outlier_cut)


def gride(X: np.ndarray, k: int = 1, outlier_cut: bool = True, device: str | torch.device | None = None) -> float:
    """GRIDE ID (Denti et al. 2022) with neighbours of order ``k`` and ``2k``; ``k = 1`` is the TwoNN MLE."""
    return gride_with_error(X, k, outlier_cut=outlier_cut, device=device)[0]


def gride_sweep(
    X: np.ndarray,
    ks: Sequence[int] | None = None,
    outlier_cut: bool = True,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """GRIDE ID against scale: one row per ``k`` with columns ``k, n2, id, id_se, radius``.

    ``ks`` defaults to ``1, 2, 4, …`` while ``2k ≤ min(64, n_distinct − 1)``. ``radius`` is the mean distance to
    the ``2k``-th neighbour, the scale the estimate probes (in the units of ``X``: pass a scale-normalised cloud
    to compare layers). One neighbour search serves all ``k``.
    """
    X = _prepare(X)
    n = X.shape[0]
    if ks is None:
        ks = []
        k = 1
        while 2 * k <= min(64, n - 1):
            ks.append(k)
            k *= 2
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive integers, got {ks}")
    if 2 * max(ks) > n - 1:
        raise InputError(f"k={max(ks)} needs 2k + 1 = {2 * max(ks) + 1} distinct points; the cloud has {n}")
    return gride_sweep_from_knn(knn_distances(X, 2 * max(ks), device=device), ks, outlier_cut)


def gride_sweep_from_knn(r: np.ndarray, ks: Sequence[int], outlier_cut: bool = True) -> pd.DataFrame:
    """:func:`gride_sweep` from precomputed neighbour distances ``r[n_points, ≥ 2·max(ks)]`` of distinct points."""
    r = np.asarray(r, dtype=np.float64)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive integers, got {ks}")
    if r.ndim != 2 or r.shape[1] < 2 * max(ks):
        raise InputError(f"k={max(ks)} needs distances to {2 * max(ks)} neighbours, got {r.shape}")
    rows = []
    for k in ks:
        d, se = _gride_from_log_mu(np.log(r[:, 2 * k - 1] / r[:, k - 1]), k, 2 * k, outlier_cut)
        rows.append({"k": k, "n2": 2 * k, "id": d, "id_se": se, "radius": float(r[:, 2 * k - 1].mean())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# correlation dimension


def _pairwise_distances(X: np.ndarray, device: str | torch.device | None = None) -> np.ndarray:
    """Condensed (upper-triangle) Euclidean distances of the rows of ``X``, float64."""
    dev = _device(device)
    Y = torch.from_numpy(np.asarray(X, dtype=np.float64)).to(dev)
    Y = Y - Y.mean(dim=0, keepdim=True)
    sq = (Y * Y).sum(dim=1)
    n = Y.shape[0]
    block = max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))
    parts = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (Y[start:stop] @ Y.T)
        upper = torch.arange(n, device=dev)[None, :] > torch.arange(start, stop, device=dev)[:, None]
        parts.append(torch.sqrt(torch.clamp(d2[upper], min=0.0)).cpu().numpy())
    return np.concatenate(parts) if parts else np.empty(0)


def correlation_dimension(
    X: np.ndarray,
    quantiles: tuple[float, float] = (0.001, 0.05),
    radii: tuple[float, float] | None = None,
    n_radii: int = 20,
    max_points: int = 2000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Grassberger–Procaccia correlation dimension: slope of ``log C(r)`` against ``log r``.

    ``C(r)`` is the fraction of distinct pairs closer than ``r`` among (at most ``max_points``, subsampled with
    ``seed``) deduplicated rows. The slope is fitted by least squares at ``n_radii`` log-spaced radii between
    ``r_lo`` and ``r_hi``: by default the ``quantiles`` of the pairwise distances (scale invariant, see the module
    doc); if ``radii`` is given, those absolute radii instead (scale dependent: use scale-normalised clouds).
    Raises ``ValueError`` when the range is empty or holds no pairs.
    """
    X = _prepare(X)
    X = subsample_rows(X, max_points, seed)
    if n_radii < 2:
        raise InputError(f"n_radii must be at least 2, got {n_radii}")
    d = np.sort(_pairwise_distances(X, device=device))
    if radii is None:
        q_lo, q_hi = quantiles
        if not 0.0 < q_lo < q_hi <= 1.0:
            raise InputError(f"quantiles must satisfy 0 < q_lo < q_hi <= 1, got {quantiles}")
        r_lo, r_hi = (float(v) for v in np.quantile(d, [q_lo, q_hi]))
    else:
        r_lo, r_hi = (float(v) for v in radii)
    if not 0.0 < r_lo < r_hi:
        raise InputError(f"empty radius range [{r_lo:.4g}, {r_hi:.4g}] for the correlation dimension")
    r = np.geomspace(r_lo, r_hi, n_radii)
    counts = np.searchsorted(d, r, side="left")  # pairs with distance < r
    if counts[0] == 0:
        raise InputError(f"no pair is closer than r_lo = {r_lo:.4g}; widen the range or use more points")
    log_r = np.log(r)
    log_c = np.log(counts / d.size)
    log_r = log_r - log_r.mean()
    return float(log_r @ (log_c - log_c.mean()) / (log_r @ log_r))


# ----------------------------------------------------------------------------------------------------------------
# spread over subsets and the per-state profile

Estimator = Callable[[np.ndarray], float]

ESTIMATORS: dict[str, Estimator] = {
    "twonn": twonn,
    "gride": partial(gride, k=4),
    "corr": correlation_dimension,
}
"""Default estimators of :func:`id_profile`, by column name: TwoNN (linear fit, 10 % discarded), GRIDE with
``k = 4`` (neighbours 4 and 8: less sensitive to short-scale noise than TwoNN), correlation dimension between the
0.1 % and 5 % quantiles of pairwise distances."""


def id_with_spread(
    X: np.ndarray,
    estimator: Estimator,
    n_subsets: int = 4,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Estimate on ``n_subsets`` disjoint random subsets of the distinct rows; return ``(mean, std, values)``.

    Rows are deduplicated, shuffled with ``seed`` and split into near-equal parts (``np.array_split``).
    ``std`` is the sample standard deviation (ddof = 1) of the per-subset values, 0.0 when ``n_subsets == 1``.
    Raises ``ValueError`` when a subset would have fewer than ``MIN_POINTS`` points.
    """
    if n_subsets < 1:
        raise InputError(f"n_subsets must be at least 1, got {n_subsets}")
    X = _prepare(X)
    n = X.shape[0]
    if n // n_subsets < MIN_POINTS:
        raise InputError(
            f"{n} distinct points cannot make {n_subsets} disjoint subsets of at least {MIN_POINTS} points"
        )
    order = np.random.default_rng(seed).permutation(n)
    values = np.array([estimator(X[np.sort(part)]) for part in np.array_split(order, n_subsets)], dtype=float)
    std = float(values.std(ddof=1)) if n_subsets > 1 else 0.0
    return float(values.mean()), std, values


def id_profile(
    clouds: Sequence[np.ndarray],
    estimators: Sequence[str] | Mapping[str, Estimator] = ("twonn", "gride", "corr"),
    n_subsets: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Intrinsic dimension of every state's cloud: the ID-against-depth profile.

    ``clouds[s]`` is the cloud of hidden state ``s`` (0 = embeddings, ``s`` = output of block ``s − 1``). Each is
    scale-normalised (``clouds.normalise_scale``: divided by its median pairwise distance) and deduplicated; every
    estimator runs on the whole distinct cloud (the headline, what dadapy and scikit-dimension return) and on
    ``n_subsets`` disjoint random subsets (:func:`id_with_spread`, same ``seed`` for every state: the spread). ``estimators`` are names from :data:`ESTIMATORS` or a mapping ``name → callable(X) -> float``.

    One row per state, columns ``state, n_points, n_distinct, scale`` and, per estimator ``name``:
    ``id_<name>`` (whole distinct cloud), ``id_<name>_subset_mean``, ``id_<name>_std`` (sample std over subsets),
    ``id_<name>_subsets`` (list of the per-subset values). ``progress(done, total)`` is called after each state.
    A state whose cloud is unusable (constant, too few distinct points) raises ``ValueError`` naming the state.
    """
    if isinstance(estimators, Mapping):
        chosen: dict[str, Estimator] = dict(estimators)
    else:
        unknown = [name for name in estimators if name not in ESTIMATORS]
        if unknown:
            raise InputError(f"unknown estimators {unknown}; choose from {sorted(ESTIMATORS)}")
        chosen = {name: ESTIMATORS[name] for name in estimators}
    if not chosen:
        raise InputError("no estimator chosen")
    rows = []
    total = len(clouds)
    for state, cloud in enumerate(clouds):
        cloud = np.asarray(cloud)
        try:
            normalised, scale = normalise_scale(cloud)
            if scale == 0.0:
                raise InputError("constant cloud (median pairwise distance 0)")
            distinct = _prepare(normalised)
            row: dict[str, object] = {
                "state": state,
                "n_points": int(cloud.shape[0]),
                "n_distinct": int(distinct.shape[0]),
                "scale": float(scale),
            }
            for name, estimator in chosen.items():
                mean, std, values = id_with_spread(distinct, estimator, n_subsets=n_subsets, seed=seed)
                row[f"id_{name}"] = float(estimator(distinct))
                row[f"id_{name}_subset_mean"] = mean
                row[f"id_{name}_std"] = std
                row[f"id_{name}_subsets"] = [float(v) for v in values]
        except ValueError as error:
            raise InputError(f"state {state}: {error}") from error
        rows.append(row)
        if progress is not None:
            progress(state + 1, total)
    return pd.DataFrame(rows)
