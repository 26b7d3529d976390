"""Known answers for the intrinsic-dimension estimators and the per-state profile."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from analysis.methods.clouds import median_pairwise_distance
from analysis.methods.intrinsic_dimension import (
    MIN_POINTS,
    correlation_dimension,
    gride,
    gride_sweep,
    gride_with_error,
    id_profile,
    id_with_spread,
    knn_distances,
    twonn,
)

AMBIENT = 500


def _embed(Z: np.ndarray, seed: int = 1, ambient: int = AMBIENT) -> np.ndarray:
    """Rows of ``Z`` mapped isometrically into ``R^ambient`` by a random orthonormal frame, plus an offset."""
    rng = np.random.default_rng(seed)
    frame, _ = np.linalg.qr(rng.standard_normal((ambient, Z.shape[1])))
    return Z @ frame.T + rng.standard_normal(ambient)


def gaussian_subspace(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``n`` Gaussian points on a ``k``-dimensional linear subspace of R^500."""
    return _embed(np.random.default_rng(seed).standard_normal((n, k)), seed=seed + 100)


def sphere(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``n`` uniform points on the ``k``-sphere (a ``k``-manifold in R^{k+1}) embedded in R^500."""
    Z = np.random.default_rng(seed).standard_normal((n, k + 1))
    return _embed(Z / np.linalg.norm(Z, axis=1, keepdims=True), seed=seed + 100)


SHAPES = {"subspace": gaussian_subspace, "sphere": sphere}


# ---------------------------------------------------------------------------------------------------------------
# exact neighbours


def _reference_knn(X: np.ndarray, k: int) -> np.ndarray:
    D = cdist(np.asarray(X, dtype=np.float64), np.asarray(X, dtype=np.float64))
    np.fill_diagonal(D, np.inf)
    return np.sort(D, axis=1)[:, :k]


def test_knn_distances_match_brute_force_float32() -> None:
    X = np.random.default_rng(0).standard_normal((600, 48)).astype(np.float32)
    np.testing.assert_allclose(knn_distances(X, 5), _reference_knn(X, 5), rtol=1e-5)


def test_knn_distances_exact_for_near_duplicates_far_from_origin() -> None:
    rng = np.random.default_rng(1)
    base = 1000.0 * rng.standard_normal((30, 16)) + 5000.0
    X = np.repeat(base, 8, axis=0) + 1e-9 * rng.standard_normal((240, 16))  # clusters of 8 at 1e-9 spacing
    np.testing.assert_allclose(knn_distances(X, 8), _reference_knn(X, 8), rtol=1e-6)


def test_knn_distances_exact_on_a_lattice_with_ties() -> None:
    grid = np.stack(np.meshgrid(np.arange(15), np.arange(15)), axis=-1).reshape(-1, 2).astype(float)
    X = np.hstack([grid, np.zeros((grid.shape[0], 10))]) + 100.0
    np.testing.assert_allclose(knn_distances(X, 6), _reference_knn(X, 6), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# TwoNN and GRIDE: known dimensions


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_twonn_recovers_dimension(shape: str, k: int) -> None:
    X = SHAPES[shape](1000, k)
    assert twonn(X) == pytest.approx(k, rel=0.10)
    assert twonn(X, fit="mle") == pytest.approx(k, rel=0.10)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_gride_recovers_dimension(shape: str, k: int) -> None:
    X = SHAPES[shape](1000, k)
    assert gride(X, 1) == pytest.approx(k, rel=0.10)
    assert gride(X, 4) == pytest.approx(k, rel=0.10)


@pytest.mark.parametrize("k", [2, 5])
def test_twonn_agrees_with_scikit_dimension(k: int) -> None:
    skdim = pytest.importorskip("skdim")
    X = sphere(1200, k, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = skdim.id.TwoNN().fit(X).dimension_
        theirs_mle = skdim.id.TwoNN(method="mle").fit(X).dimension_
    assert twonn(X) == pytest.approx(theirs, rel=0.05)
    assert twonn(X, fit="mle") == pytest.approx(theirs_mle, rel=0.05)


@pytest.mark.parametrize("n1", [1, 4])
def test_gride_agrees_with_scikit_dimension(n1: int) -> None:
    skdim = pytest.importorskip("skdim")
    X = gaussian_subspace(1200, 4, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = skdim.id.GRIDE(n1=n1).fit(X)
    d, se = gride_with_error(X, n1)
    assert d == pytest.approx(estimator.dimension_, rel=1e-6)
    # scikit-dimension uses N / d² in the Fisher information, we use (N − 1) / d², consistent with the (N − 1) log d
    # likelihood both maximise: the errors agree to O(1/N)
    assert se == pytest.approx(estimator.error_, rel=2e-3)


def test_gride_k1_without_cut_is_the_unbiased_twonn_mle() -> None:
    X = sphere(800, 3, seed=7)
    assert gride(X, 1, outlier_cut=False) == pytest.approx(twonn(X, discard_fraction=0.0, fit="mle"), rel=1e-9)


def test_gride_maximises_the_likelihood() -> None:
    """The returned d beats its neighbours on the documented log-likelihood."""
    X = gaussian_subspace(800, 3, seed=2)
    k = 4
    r = knn_distances(X, 2 * k)
    log_mu = np.log(r[:, 2 * k - 1] / r[:, k - 1])
    n = log_mu.size

    def loglik(d: float) -> float:
        return (n - 1) * np.log(d) + (k - 1) * np.sum(np.log(-np.expm1(-d * log_mu))) - k * d * log_mu.sum()

    d_hat = gride(X, k, outlier_cut=False)
    for step in (1e-3, 1e-2, 0.1):
        assert loglik(d_hat) > loglik(d_hat + step)
        assert loglik(d_hat) > loglik(d_hat - step)


def test_estimators_are_scale_and_translation_invariant() -> None:
    X = sphere(600, 3, seed=4)
    Y = 37.0 * X - 5.0
    assert twonn(Y) == pytest.approx(twonn(X), rel=1e-6)
    assert gride(Y, 2) == pytest.approx(gride(X, 2), rel=1e-6)
    assert correlation_dimension(Y) == pytest.approx(correlation_dimension(X), rel=1e-6)


def test_duplicates_are_removed_before_estimating() -> None:
    X = sphere(600, 2, seed=8)
    X[:, 0] = 0.0
    negative_zero = X[:1].copy()
    negative_zero[0, 0] = -0.0  # the same point, other bytes
    doubled = np.vstack([X, X[:200], negative_zero])
    assert twonn(doubled) == pytest.approx(twonn(X), rel=1e-9)
    assert gride(doubled, 2) == pytest.approx(gride(X, 2), rel=1e-9)


def test_gride_sweep_table() -> None:
    X = gaussian_subspace(1000, 3, seed=6)
    table = gride_sweep(X, ks=(1, 2, 4, 8))
    assert list(table.columns) == ["k", "n2", "id", "id_se", "radius"]
    assert table["k"].tolist() == [1, 2, 4, 8]
    assert table["n2"].tolist() == [2, 4, 8, 16]
    assert np.all(np.diff(table["radius"]) > 0)
    np.testing.assert_allclose(table["id"], 3.0, rtol=0.10)
    assert table.loc[table["k"] == 4, "id"].item() == pytest.approx(gride(X, 4), rel=1e-12)
    default = gride_sweep(X)
    assert default["k"].tolist() == [1, 2, 4, 8, 16, 32]


# ---------------------------------------------------------------------------------------------------------------
# correlation dimension


@pytest.mark.parametrize("sampler", ["uniform", "gaussian"])
def test_correlation_dimension_of_a_plane(sampler: str) -> None:
    rng = np.random.default_rng(11)
    Z = rng.uniform(size=(1500, 2)) if sampler == "uniform" else rng.standard_normal((1500, 2))
    assert correlation_dimension(_embed(Z)) == pytest.approx(2.0, rel=0.10)


def test_correlation_dimension_absolute_radii_depend_on_scale() -> None:
    X = sphere(800, 2, seed=12)
    X = X / median_pairwise_distance(X)
    assert correlation_dimension(X, radii=(0.05, 0.3)) == pytest.approx(2.0, rel=0.10)
    with pytest.raises(ValueError, match="no pair"):
        correlation_dimension(100.0 * X, radii=(0.05, 0.3))
    with pytest.raises(ValueError, match="quantiles"):
        correlation_dimension(X, quantiles=(0.5, 0.1))


# ---------------------------------------------------------------------------------------------------------------
# spread over subsets and the profile


def test_id_with_spread_uses_disjoint_subsets_covering_the_cloud() -> None:
    X = gaussian_subspace(400, 3, seed=9)
    seen: list[np.ndarray] = []

    def record(subset: np.ndarray) -> float:
        seen.append(subset)
        return float(len(subset))

    mean, std, values = id_with_spread(X, record, n_subsets=4, seed=1)
    assert values.tolist() == [100.0] * 4 and mean == 100.0 and std == 0.0
    rows = {tuple(np.round(r, 12)) for part in seen for r in part}
    assert len(rows) == 400  # disjoint and covering
    again = id_with_spread(X, twonn, n_subsets=4, seed=1)
    np.testing.assert_array_equal(again[2], id_with_spread(X, twonn, n_subsets=4, seed=1)[2])
    assert again[1] == pytest.approx(np.std(again[2], ddof=1))


def test_id_profile_table_and_progress() -> None:
    clouds = [
        gaussian_subspace(600, 2, seed=20) * 0.01,
        sphere(600, 5, seed=21) * 300.0,
        gaussian_subspace(600, 3, seed=22),
    ]
    calls: list[tuple[int, int]] = []
    profile = id_profile(clouds, n_subsets=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert profile["state"].tolist() == [0, 1, 2]
    for name in ("twonn", "gride", "corr"):
        for suffix in ("", "_subset_mean", "_std", "_subsets"):
            assert f"id_{name}{suffix}" in profile.columns
        assert profile[f"id_{name}"].notna().all()
    np.testing.assert_allclose(profile["id_twonn"], [2, 5, 3], rtol=0.15)
    np.testing.assert_allclose(profile["id_gride"], [2, 5, 3], rtol=0.15)
    assert all(len(v) == 2 for v in profile["id_twonn_subsets"])
    assert profile["scale"].iloc[1] == pytest.approx(median_pairwise_distance(clouds[1]), rel=1e-5)
    assert profile["n_distinct"].tolist() == [600, 600, 600]


def test_id_profile_custom_estimators() -> None:
    profile = id_profile([sphere(300, 2, seed=30)], estimators={"mle": lambda X: twonn(X, fit="mle")}, n_subsets=1)
    assert list(profile.columns) == [
        "state",
        "n_points",
        "n_distinct",
        "scale",
        "id_mle",
        "id_mle_subset_mean",
        "id_mle_std",
        "id_mle_subsets",
    ]
    # one subset of everything: the headline (whole cloud) and the subset mean coincide
    assert profile["id_mle"].item() == pytest.approx(profile["id_mle_subset_mean"].item(), rel=1e-12)
    assert profile["id_mle_std"].item() == 0.0
    with pytest.raises(ValueError, match="unknown estimators"):
        id_profile([sphere(300, 2)], estimators=("twonn", "nope"))


# ---------------------------------------------------------------------------------------------------------------
# bad input: a clear ValueError, never NaN


@pytest.mark.parametrize("estimator", [twonn, lambda X: gride(X, 1), correlation_dimension])
def test_bad_clouds_raise(estimator) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="distinct points"):
        estimator(rng.standard_normal((MIN_POINTS - 1, 10)))
    with pytest.raises(ValueError, match="constant"):
        estimator(np.ones((200, 10)))
    with pytest.raises(ValueError, match="distinct points"):
        estimator(np.repeat(rng.standard_normal((5, 10)), 40, axis=0))  # 200 rows, 5 distinct
    bad = rng.standard_normal((100, 10))
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator(bad)
    with pytest.raises(ValueError, match="2-D"):
        estimator(rng.standard_normal(100))


def test_twonn_on_equally_spaced_points_raises_instead_of_dividing_by_zero() -> None:
    line = np.outer(np.arange(100.0), np.ones(3))  # r1 == r2 for every inner point
    with pytest.raises(ValueError, match="ties"):
        twonn(line)
    with pytest.raises(ValueError, match="ties"):
        twonn(line, fit="mle")


def test_gride_needs_enough_neighbours() -> None:
    with pytest.raises(ValueError, match="distinct points"):
        gride(sphere(30, 2), k=16)
    with pytest.raises(ValueError, match="positive integer"):
        gride(sphere(100, 2), k=0)


def test_id_profile_names_the_bad_state() -> None:
    clouds = [sphere(200, 2, seed=1), np.zeros((200, 8)), sphere(200, 2, seed=2)]
    with pytest.raises(ValueError, match="state 1: constant"):
        id_profile(clouds, estimators=("twonn",), n_subsets=2)
    with pytest.raises(ValueError, match="subsets"):
        id_with_spread(sphere(60, 2), twonn, n_subsets=4)
