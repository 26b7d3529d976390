"""analysis.profiles.topology without a model: the minimum-lifetime filter against the same-layer rule, the descriptors and
suggestions of a zigzag result, settings refused with clear messages, and the cached per-layer persistence on a
stub workspace."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import cache
from analysis.capture.workspace import Calibration
from analysis.methods.zigzag import (
    clique_complex,
    zigzag_bars,
    zigzag_bars_of_complexes,
)
from analysis.profiles import topology as topo


def polygon(n: int = 8) -> np.ndarray:
    theta = 2 * np.pi * np.arange(n) / n
    return np.c_[np.cos(theta), np.sin(theta)]


def doubling_line(n: int = 8) -> np.ndarray:
    return np.c_[2.0 ** np.arange(n) - 1.0, np.zeros(n)]


def square_with_diagonal(a: int, b: int) -> list[np.ndarray]:
    edges = np.array(sorted({(0, 1), (1, 2), (2, 3), (0, 3), (min(a, b), max(a, b))}))
    return clique_complex(edges, 4, 2)


def as_result(bars, k: int = 2, m: int = 2, n_windows: int = 8) -> topo.ZigzagResult:
    n_layers = bars.attrs["n_layers"]
    info = {
        key: bars.attrs[key]
        for key in ("n_layers", "n_simplices", "n_events", "n_same_layer_dropped", "n_top_dim_bars")
    }
    return topo.ZigzagResult(
        bars,
        np.zeros((n_layers, m + 1), np.int64),
        topo.ZigzagSettings(n_windows=n_windows, window_len=32, k=k, max_dim=m),
        info,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Same-layer rule and minimum lifetime


def test_same_layer_rule_drops_a_loop_living_only_in_an_intersection():
    """K0 and K1 are contractible, K0 ∩ K1 is a hollow square: its loop is born and dies in layer 1 (index 1 -> 2)
    and never exists in a layer. The zigzag drops it whatever the minimum lifetime."""
    bars = zigzag_bars_of_complexes([square_with_diagonal(0, 2), square_with_diagonal(1, 3)], max_dim=2)
    assert bars.attrs["n_same_layer_dropped"] == 1
    result = as_result(bars, n_windows=4)
    for min_life in (1, 2):
        view = topo.describe_zigzag(result, p=1, min_lifetime=min_life)
        assert (view.bars["dim"] == 1).sum() == 0
        assert view.betti[1].tolist() == [0, 0]


def test_middle_layer_loop_is_a_one_layer_bar_kept_by_the_rule_and_dropped_by_min_lifetime_two():
    """The issue's "loop present only in the middle layer of three": with the index -> layer map i//2 + i%2 it is
    born in layer 1 (index 2) and dies in layer 2 (index 3), so birth_layer != death_layer and the same-layer rule
    keeps it (it is β1 of layer 1). It is a one-layer bar: the minimum-lifetime filter drops it at 2."""
    bars = zigzag_bars([doubling_line(), polygon(), doubling_line()], k=2, max_dim=2)
    loop = bars[bars["dim"] == 1]
    assert loop[["birth_layer", "death_layer"]].values.tolist() == [[1, 2]]
    result = as_result(bars)

    kept = topo.describe_zigzag(result, p=1, min_lifetime=1)
    assert kept.betti[1].tolist() == [0, 1, 0]
    assert kept.Z[1, 1] == 1.0 and kept.Z[1].tolist() == [0.0, 1.0, 0.0]

    dropped = topo.describe_zigzag(result, p=1, min_lifetime=2)
    assert (dropped.bars["dim"] == 1).sum() == 0
    assert dropped.betti[1].tolist() == [0, 0, 0]
    assert dropped.bars[["dim", "birth_layer", "death_layer"]].values.tolist() == [[0, 0, 3]]  # H0 spans all three


def test_filter_bars_lifetime_and_truncation_artefacts():
    X = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    bars = zigzag_bars([X, X, X], k=3, max_dim=2, keep_top_dim=True)  # a hollow tetrahedron: H2 artefact
    assert bars["truncation_artefact"].sum() == 1
    assert topo.filter_bars(bars)["dim"].tolist() == [0]
    assert topo.filter_bars(bars, include_top_dim=True)["dim"].tolist() == [0, 2]
    assert len(topo.filter_bars(bars, min_lifetime=3)) == 1 and len(topo.filter_bars(bars, min_lifetime=4)) == 0
    with pytest.raises(topo.TopologyError, match="minimum lifetime"):
        topo.filter_bars(bars, min_lifetime=0)


# ----------------------------------------------------------------------------------------------------------------------
# Descriptors, suggestion, tables


def test_identical_layers_persist_everywhere_and_the_suggestion_is_every_inner_state():
    bars = zigzag_bars([polygon(8)] * 5, k=2, max_dim=2)
    view = topo.describe_zigzag(as_result(bars), p=1, fractions=(0.9, 0.8))
    assert view.betti.tolist() == [[1] * 5, [1] * 5]
    np.testing.assert_array_equal(view.Z, np.ones((5, 5)))
    np.testing.assert_array_equal(view.zbar, np.ones(5))
    # never state 0 (embeddings) nor the last state; state s is block s - 1
    assert view.suggestions[0.9] == {"states": [1, 2, 3], "blocks": [0, 1, 2], "ranges": [(0, 3)]}
    assert topo.describe_zigzag(as_result(bars), min_lifetime=5).betti.tolist() == [[1] * 5, [1] * 5]


def test_dimension_p_must_be_below_m():
    result = as_result(zigzag_bars([polygon(8)] * 3, k=2, max_dim=2))
    with pytest.raises(topo.TopologyError, match="artefacts"):
        topo.describe_zigzag(result, p=2)
    assert topo.describe_zigzag(result, p=2, include_top_dim=True).p == 2


def test_layers_frame_and_suggestion_json():
    bars = zigzag_bars([doubling_line(), polygon(), polygon(), polygon(), doubling_line()], k=2, max_dim=2)
    result = as_result(bars)
    view = topo.describe_zigzag(result, p=1, alpha=0.0, fractions=(0.9, 0.8))
    frame = topo.zigzag_layers_frame(result, view)
    assert list(frame.columns[:5]) == ["state", "block", "betti_0", "betti_1", "births_1"]
    assert {"z1_mean", "simplices_0", "simplices_2", "suggested_0.9", "suggested_0.8"} <= set(frame.columns)
    assert frame["betti_1"].tolist() == [0, 1, 1, 1, 0]
    assert frame["block"].isna().tolist() == [True] + [False] * 4
    sug = topo.zigzag_suggestion(result, view)
    json.dumps(sug)  # JSON-serialisable as it is
    assert sug["remove_blocks"] == sug["thresholds"]["0.9"]["blocks"] == [0, 1, 2]
    assert sug["settings"]["k"] == 2 and sug["settings"]["p"] == 1 and sug["settings"]["alpha"] == 0.0


@pytest.mark.parametrize(
    "settings, message",
    [
        (topo.ZigzagSettings(n_windows=4, k=4), "at least k \\+ 1 = 5 windows"),
        (topo.ZigzagSettings(max_dim=5), "between 1 and 4"),
        (topo.ZigzagSettings(max_dim=0), "between 1 and 4"),
        (topo.ZigzagSettings(k=0), "at least 1"),
        (topo.ZigzagSettings(window_len=1), "at least 2 tokens"),
    ],
)
def test_bad_zigzag_settings_are_refused_with_a_clear_message(settings, message):
    with pytest.raises(topo.TopologyError, match=message):
        settings.validate()


def test_estimate_warning_names_the_cost_and_the_way_out():
    est = topo.ZigzagEstimate(np.full((31, 4), 10_000), True, 500_000, 2_000_000, 180.0, topo.ZigzagSettings(k=10))
    assert est.too_large
    text = est.warning()
    assert "1,240,000 simplices" in text and "180 s" in text and "Lower k or m" in text
    small = topo.ZigzagEstimate(np.full((31, 4), 100), True, 1000, 3000, 0.3, topo.ZigzagSettings())
    assert not small.too_large
    assert topo.ZigzagEstimate(np.full((31, 4), 100), False, None, None, 1.0, topo.ZigzagSettings()).too_large


# ----------------------------------------------------------------------------------------------------------------------
# Per-layer persistence on a stub workspace (cache, summaries, distances)


class StubCapture:
    def __init__(self, clouds):
        self.clouds = clouds

    def all_token_cloud(self, state, n_max=None, seed=0, exclude_first=0):
        return self.clouds[state]


class StubWorkspace:
    """Three states: a noisy circle of radius 1, the same circle scaled by 10 (same shape), a blob."""

    def __init__(self, tag: str):
        rng = np.random.default_rng(0)
        theta = rng.uniform(0, 2 * np.pi, 200)
        circle = np.c_[np.cos(theta), np.sin(theta)] + 0.03 * rng.normal(size=(200, 2))
        self.clouds = [circle, 10 * circle, rng.normal(size=(200, 2))]
        self.lm = SimpleNamespace(fingerprint=f"stub-{tag}")
        self.text = SimpleNamespace(sha256="stub-text")
        self.calibration = Calibration()
        self.n_states = 3
        self.captures = 0

    def key(self):
        return {"model": self.lm.fingerprint, "text": self.text.sha256, **self.calibration.to_dict()}

    def is_captured(self):
        return True

    def capture(self, progress=None):
        self.captures += 1
        return StubCapture(self.clouds)


def test_layer_persistence_is_cached_per_state_and_scale_free():
    ws = StubWorkspace("a")
    s = topo.PersistenceSettings(n_points=80)
    assert not topo.persistence_is_cached(ws, s)
    calls = []
    first = topo.layer_persistence(ws, s, progress=lambda d, t, m: calls.append((d, t)))
    assert first.computed == 3 and calls[-1] == (3, 3)
    assert topo.persistence_is_cached(ws, s)
    again = topo.layer_persistence(ws, s)
    assert again.computed == 0
    for a, b in zip(first.diagrams, again.diagrams):
        for da, db in zip(a, b):
            np.testing.assert_array_equal(da, db)
    # the circle scaled by 10 has the same normalised diagrams (scale-free), and its scale is 10x
    np.testing.assert_allclose(first.diagrams[0][1], first.diagrams[1][1], rtol=1e-5, atol=1e-6)
    assert first.scales[1] == pytest.approx(10 * first.scales[0], rel=1e-5)

    summary = topo.persistence_summary(first, noise=0.3)
    assert list(summary.columns[:5]) == [
        "state",
        "total_persistence_h0",
        "entropy_h0",
        "total_persistence_h1",
        "entropy_h1",
    ]
    assert summary["h1_above_noise"].tolist()[:2] == [1, 1]  # one long loop in each circle
    assert summary["h1_above_noise"].iloc[2] == 0  # none in the blob
    curves = topo.betti_curves(first.diagrams[0])
    assert curves["betti_0"].iloc[0] == 80 and curves["betti_1"].max() >= 1


def test_distance_matrix_is_symmetric_cached_and_zero_between_same_shapes():
    ws = StubWorkspace("b")
    s = topo.PersistenceSettings(n_points=60)
    assert not topo.distance_matrix_is_cached(ws, s, "bottleneck", 1)
    M = topo.distance_matrix(ws, s, "bottleneck", 1)
    assert topo.distance_matrix_is_cached(ws, s, "bottleneck", 1)
    np.testing.assert_allclose(M, M.T)
    assert np.all(np.diag(M) == 0) and M[0, 1] == pytest.approx(0, abs=1e-5) and M[0, 2] > 0.2
    W = topo.distance_matrix(ws, s, "wasserstein", 1)
    assert W[0, 2] >= M[0, 2] - 1e-9  # 1-Wasserstein >= bottleneck
    with pytest.raises(topo.TopologyError, match="not computed"):
        topo.distance_matrix(ws, s, "bottleneck", 2)


def test_persistence_settings_refused_and_keys_differ_by_cloud():
    with pytest.raises(topo.TopologyError, match="between 3 and"):
        topo.check_persistence_settings(topo.PersistenceSettings(n_points=5000))
    with pytest.raises(topo.TopologyError, match="cloud"):
        topo.check_persistence_settings(topo.PersistenceSettings(cloud="middle"))
    ws = StubWorkspace("c")
    all_key = topo.persistence_params(ws, topo.PersistenceSettings())
    last_key = topo.persistence_params(ws, topo.PersistenceSettings(cloud="last"))
    assert cache.entry("persistence", all_key).key != cache.entry("persistence", last_key).key
    assert last_key["windows"] == 500 and "n_windows" not in last_key  # the sidebar's windows do not matter
    assert topo.estimate_persistence_seconds(
        topo.PersistenceSettings(n_points=600), 31
    ) > topo.estimate_persistence_seconds(topo.PersistenceSettings(), 31)


def test_persistence_estimate_times_the_preparation_on_a_cloud_of_that_size() -> None:
    from analysis.capture import estimate

    estimate._PROBES.pop(("persistence preparation", 400, 50, 16, "euclidean"), None)
    small = topo.persistence_seconds_now(topo.PersistenceSettings(n_points=50), 3, 400, 16)
    assert small > 0 and ("persistence preparation", 400, 50, 16, "euclidean") in estimate._PROBES
    # the probe is reused (a page asks on every rerun), and a larger cloud takes longer to prepare
    assert topo.persistence_seconds_now(topo.PersistenceSettings(n_points=50), 3, 400, 16) == small
    assert topo.preparation_seconds(4000, 300, 64) > topo.preparation_seconds(400, 50, 16)
