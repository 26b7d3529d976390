"""PCA / UMAP projections and the colourings of cloud rows."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.methods.clouds import all_token_cloud, last_token_cloud
from analysis.methods.projection import (
    cloud_token_coordinates,
    pca_2d3d,
    row_token_ids,
    token_frequency,
    umap_embed,
)


def _anisotropic_cloud(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points ``a·e1 + b·e2 + c·e3 + offset`` in R^30, std(a, b, c) = (5, 1, 0.3); ``(X, coefficients, frame)``."""
    rng = np.random.default_rng(seed)
    frame, _ = np.linalg.qr(rng.standard_normal((30, 3)))
    coefficients = rng.standard_normal((n, 3)) * np.array([5.0, 1.0, 0.3])
    coefficients -= coefficients.mean(axis=0)
    return coefficients @ frame.T + 3.0, coefficients, frame


def test_pca_recovers_the_plane_coordinates() -> None:
    X, coefficients, _ = _anisotropic_cloud()
    coords, ratio = pca_2d3d(X, 2)
    assert coords.shape == (400, 2) and coords.dtype == np.float32
    assert ratio[0] > 0.9 and ratio.sum() == pytest.approx(26 / 26.09, abs=0.01)
    # each axis is the corresponding coefficient up to a sign (and a tiny rotation: the sample is finite)
    for axis in range(2):
        corr = np.corrcoef(coords[:, axis], coefficients[:, axis])[0, 1]
        assert abs(corr) > 0.99


def test_pca_is_deterministic_and_sign_fixed() -> None:
    X, _, _ = _anisotropic_cloud()
    a, ratio = pca_2d3d(X, 3)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(a, pca_2d3d(X.copy(), 3)[0])
    flipped, _ = pca_2d3d(-X, 3)  # negating the data flips the components, the sign rule flips them back
    np.testing.assert_allclose(flipped, -a, atol=1e-4)


def test_pca_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pca_2d3d(np.zeros(10), 2)
    with pytest.raises(ValueError, match="width"):
        pca_2d3d(np.zeros((10, 2)), 3)
    with pytest.raises(ValueError, match="NaN"):
        pca_2d3d(np.full((10, 4), np.nan), 2)


def test_umap_is_deterministic_with_a_seed_and_separates_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 20)) * 20.0
    X = np.vstack([c + rng.standard_normal((60, 20)) for c in centres])
    a = umap_embed(X, n_components=2, n_neighbors=10, min_dist=0.1, seed=3)
    b = umap_embed(X, n_components=2, n_neighbors=10, min_dist=0.1, seed=3)
    assert a.shape == (120, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    gap = np.linalg.norm(a[:60].mean(axis=0) - a[60:].mean(axis=0))
    spread = max(a[:60].std(axis=0).max(), a[60:].std(axis=0).max())
    assert gap > 3 * spread
    with pytest.raises(ValueError, match="n_neighbors"):
        umap_embed(X[:8], n_neighbors=10)


def _labelled_states(n_states: int = 2, n_windows: int = 5, window_len: int = 7) -> np.ndarray:
    """States whose vector at (window w, position t) is ``[w, t, state]``."""
    s, w, t = np.meshgrid(np.arange(n_states), np.arange(n_windows), np.arange(window_len), indexing="ij")
    return np.stack([w, t, s], axis=-1).astype(np.float32)


@pytest.mark.parametrize(("n_max", "exclude_first"), [(None, 0), (12, 0), (12, 2), (None, 1)])
def test_cloud_token_coordinates_match_all_token_cloud(n_max: int | None, exclude_first: int) -> None:
    states = _labelled_states()
    cloud = all_token_cloud(states, 1, n_max=n_max, seed=4, exclude_first=exclude_first)
    window, position = cloud_token_coordinates(5, 7, n_max=n_max, seed=4, exclude_first=exclude_first)
    assert window.dtype == np.int64 and len(window) == len(cloud)
    np.testing.assert_array_equal(window, cloud[:, 0])
    np.testing.assert_array_equal(position, cloud[:, 1])
    last = last_token_cloud(states, 0)
    np.testing.assert_array_equal(last[:, 1], 6)


def test_row_token_ids_and_frequency() -> None:
    token_ids = np.array([[5, 6, 5, 9], [9, 9, 5, 1]])
    window, position = cloud_token_coordinates(2, 4)
    rows = row_token_ids(token_ids, window, position)
    np.testing.assert_array_equal(rows, token_ids.ravel())
    np.testing.assert_array_equal(token_frequency(rows), [3, 1, 3, 3, 3, 3, 3, 1])
    corpus = np.array([5, 5, 7, 9])
    np.testing.assert_array_equal(token_frequency([5, 9, 1], corpus), [2, 1, 0])
    np.testing.assert_allclose(token_frequency([5, 9], corpus, log=True), [np.log10(2), 0.0])
    with pytest.raises(ValueError, match="log frequency"):
        token_frequency([1], corpus, log=True)
    np.testing.assert_array_equal(token_frequency([3], np.array([], dtype=int)), [0])
