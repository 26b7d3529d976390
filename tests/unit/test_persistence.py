"""Known answers for analysis.methods.persistence: a circle has one long loop, hand-made diagrams have hand-computed
summaries, and distances agree with a second library."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.methods.persistence import (
    betti_curve,
    count_bars_above,
    diagram_distance,
    diagram_distance_matrix,
    estimate_rips_seconds,
    finite_bars,
    layer_diagrams,
    lifetimes,
    pairwise_distances,
    persistent_entropy,
    rips_diagrams,
    total_persistence,
)


def noisy_circle(n: int = 60, noise: float = 0.02, seed: int = 0, radius: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.3 * 2 * np.pi / n, n)
    X = radius * np.c_[np.cos(theta), np.sin(theta)]
    return X + noise * rng.normal(size=X.shape)


def sorted_rows(d: np.ndarray) -> np.ndarray:
    return d[np.lexsort((d[:, 1], d[:, 0]))]


# ----------------------------------------------------------------------------------------------------------------------
# Rips diagrams


def test_circle_has_exactly_one_long_h1_bar():
    dgms = rips_diagrams(noisy_circle(), max_dim=1)
    assert len(dgms) == 2
    h0, h1 = dgms
    life = lifetimes(h1)
    assert np.count_nonzero(life > 0.5) == 1
    if life.size > 1:
        assert np.sort(life)[-2] < 0.1
    # born at about the sampling gap (2 pi / 60 ~ 0.1), dies where triangles fill the disc (side sqrt(3) ~ 1.73)
    long = h1[np.argmax(life)]
    assert long[0] < 0.2 and 1.5 < long[1] < 1.8
    # H0: one bar per point (no duplicates), exactly one essential bar
    assert h0.shape[0] == 60
    assert np.count_nonzero(np.isinf(h0[:, 1])) == 1
    assert np.all(h0[:, 0] == 0.0)


def test_circle_agrees_with_dionysus_and_with_the_gudhi_simplex_tree():
    import dionysus
    import gudhi

    X = noisy_circle(n=40, seed=3)
    ours = rips_diagrams(X, max_dim=1)

    f = dionysus.fill_rips(X, 2, 10.0)
    m = dionysus.homology_persistence(f)
    dio = dionysus.init_diagrams(m, f)
    dio_h1 = np.array([[p.birth, p.death] for p in dio[1]]).reshape(-1, 2)
    dio_h0 = np.array([[p.birth, p.death] for p in dio[0]]).reshape(-1, 2)
    dio_h1 = dio_h1[dio_h1[:, 1] > dio_h1[:, 0]]
    dio_h0 = dio_h0[dio_h0[:, 1] > dio_h0[:, 0]]
    np.testing.assert_allclose(sorted_rows(ours[1]), sorted_rows(dio_h1), rtol=1e-5)
    np.testing.assert_allclose(np.sort(ours[0][:, 1]), np.sort(dio_h0[:, 1]), rtol=1e-5)

    st = gudhi.RipsComplex(points=X).create_simplex_tree(max_dimension=2)
    st.compute_persistence()
    gst_h1 = np.asarray(st.persistence_intervals_in_dimension(1)).reshape(-1, 2)
    np.testing.assert_allclose(sorted_rows(ours[1]), sorted_rows(gst_h1), rtol=1e-9)


def test_cosine_metric_sees_the_circle_and_matches_its_distance_matrix():
    X = noisy_circle(n=50, noise=0.0, seed=1)
    h1 = rips_diagrams(X, max_dim=1, metric="cosine")[1]
    assert np.count_nonzero(lifetimes(h1) > 0.3) == 1
    D = pairwise_distances(X, "cosine")
    assert np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    i, j = 0, 10
    u, v = X[i] / np.linalg.norm(X[i]), X[j] / np.linalg.norm(X[j])
    assert D[i, j] == pytest.approx(1 - u @ v)


def test_max_edge_truncates_the_filtration():
    X = noisy_circle(n=40, seed=2)
    h1 = rips_diagrams(X, max_dim=1, max_edge=1.0)[1]
    # the loop is born below 1.0 and cannot die before the truncation: its death becomes inf
    assert np.count_nonzero(np.isinf(h1[:, 1])) == 1


def test_tiny_clouds():
    assert [d.shape for d in rips_diagrams(np.zeros((0, 3)))] == [(0, 2), (0, 2)]
    one = rips_diagrams(np.ones((1, 3)), max_dim=2)
    assert one[0].tolist() == [[0.0, math.inf]] and one[1].shape == (0, 2) and one[2].shape == (0, 2)


def test_layer_diagrams_is_scale_free_and_reports_the_scale():
    X = noisy_circle(n=200, seed=4)
    small = layer_diagrams(X, n_points=50, seed=0)
    big = layer_diagrams(7.0 * X, n_points=50, seed=0)
    assert big.scale == pytest.approx(7.0 * small.scale)
    for a, b in zip(small.diagrams, big.diagrams):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.count_nonzero(lifetimes(small.diagrams[1]) > 0.3) == 1
    assert small.diagrams[0].shape[0] == 50  # subsampled to 50 points: 50 H0 bars
    dgms, scale = small  # unpacks as (diagrams, scale)
    assert scale > 0


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(X=np.zeros((3, 2, 2))), "2-D"),
        (dict(X=np.array([[0.0, np.nan], [1.0, 1.0]])), "NaN"),
        (dict(X=np.zeros((3, 2)), metric="manhattan"), "metric"),
        (dict(X=np.zeros((3, 2)), max_dim=-1), "max_dim"),
        (dict(X=np.zeros((3, 2)), max_edge=0.0), "max_edge"),
    ],
)
def test_rips_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        rips_diagrams(**bad)


# ----------------------------------------------------------------------------------------------------------------------
# Summaries of a hand-made diagram

HAND = np.array([[0.0, 1.0], [0.5, 2.5], [1.0, 4.0], [2.0, np.inf]])  # lifetimes 1, 2, 3, inf


def test_total_persistence_by_hand():
    assert total_persistence(HAND) == pytest.approx(1 + 2 + 3)
    assert total_persistence(HAND, p=2) == pytest.approx(1 + 4 + 9)
    assert total_persistence(np.zeros((0, 2))) == 0.0
    assert finite_bars(HAND).shape == (3, 2)


def test_persistent_entropy_by_hand():
    p = np.array([1, 2, 3]) / 6
    assert persistent_entropy(HAND) == pytest.approx(-np.sum(p * np.log(p)))
    assert persistent_entropy([[0, 1], [5, 6], [2, 3], [4, 5]]) == pytest.approx(math.log(4))
    assert persistent_entropy([[0, 2]]) == 0.0
    assert persistent_entropy(np.zeros((0, 2))) == 0.0


def test_count_bars_above_and_betti_curve_by_hand():
    assert count_bars_above(HAND, 1.5) == 3  # lifetimes 2, 3 and the essential bar
    assert count_bars_above(HAND, 3.0) == 1  # strictly greater: only the essential bar
    grid = [0.0, 0.5, 1.0, 2.0, 2.5, 3.9, 4.0, 100.0]
    # half-open bars [b, d): at 1.0 the first bar is dead and the third is born
    assert betti_curve(HAND, grid).tolist() == [1, 2, 2, 3, 2, 2, 1, 1]


# ----------------------------------------------------------------------------------------------------------------------
# Distances


def test_distance_of_a_diagram_to_itself_is_zero_and_the_matrix_is_symmetric():
    dgms = [rips_diagrams(noisy_circle(n=40, seed=s), max_dim=1)[1] for s in range(4)]
    for kind in ("wasserstein", "bottleneck"):
        M = diagram_distance_matrix(dgms, kind=kind)
        assert M.shape == (4, 4)
        np.testing.assert_array_equal(M, M.T)
        assert np.all(np.diag(M) == 0)
        assert diagram_distance(dgms[0], dgms[0], kind=kind) == pytest.approx(0.0, abs=1e-12)
        assert np.all(M[~np.eye(4, dtype=bool)] > 0)


def test_distances_agree_with_persim():
    import persim

    rng = np.random.default_rng(5)
    a = rips_diagrams(rng.normal(size=(50, 4)), max_dim=1)[1]
    b = rips_diagrams(rng.normal(size=(50, 4)), max_dim=1)[1]
    # persim.wasserstein is W1 with the L2 ground metric, computed exactly by the Hungarian algorithm
    assert diagram_distance(a, b, internal_p=2) == pytest.approx(persim.wasserstein(a, b), rel=1e-3)
    assert diagram_distance(a, b, kind="bottleneck") == pytest.approx(persim.bottleneck(a, b), rel=1e-9)
    # the default L∞ ground metric is smaller, by at most sqrt(2)
    w_inf = diagram_distance(a, b)
    assert w_inf <= persim.wasserstein(a, b) <= math.sqrt(2) * w_inf + 1e-9


def test_distance_by_hand_and_infinite_bars_dropped():
    a = np.array([[0.0, 2.0], [0.0, np.inf]])
    b = np.zeros((0, 2))
    # a single bar of lifetime 2 against an empty diagram: matched to the diagonal at L∞ cost 2/2 = 1
    assert diagram_distance(a, b) == pytest.approx(1.0, rel=1e-3)
    assert diagram_distance(a, b, kind="bottleneck") == pytest.approx(1.0)
    assert diagram_distance(b, b) == 0.0
    with pytest.raises(ValueError, match="unknown diagram distance"):
        diagram_distance(a, b, kind="sliced")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Cost estimate


def test_estimate_rips_seconds_grows_with_size_and_dimension():
    assert estimate_rips_seconds(300, 1) < estimate_rips_seconds(600, 1) < estimate_rips_seconds(600, 2)
    assert 0.001 < estimate_rips_seconds(300, 1) < 1.0
    with pytest.raises(ValueError, match="max_dim"):
        estimate_rips_seconds(100, 7)
