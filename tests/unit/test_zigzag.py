"""Known answers for analysis.methods.zigzag: identical layers give bars through every layer, a loop of the middle layer
lives exactly there, a loop living only in an intersection is dropped, per-layer Betti numbers agree with GUDHI on
each complex, and the descriptors agree with brute force and with the authors' formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.methods.zigzag import (
    MAX_CLIQUE_DIM,
    averaged_persistence,
    betti_per_layer,
    birth_frequency,
    blocks_to_ranges,
    clique_complex,
    estimate_simplex_count,
    estimate_zigzag_seconds,
    interlayer_persistence,
    knn_graph,
    representatives_of_clouds,
    states_to_blocks,
    suggest_states,
    zigzag_bars,
    zigzag_bars_of_complexes,
    zigzag_index_to_layer,
    zigzag_representatives,
    zigzag_times,
)


def polygon(n: int = 8) -> np.ndarray:
    """Regular n-gon: with k = 2 its kNN graph is the n-cycle, a hollow loop."""
    theta = 2 * np.pi * np.arange(n) / n
    return np.c_[np.cos(theta), np.sin(theta)]


def doubling_line(n: int = 8) -> np.ndarray:
    """Points 0, 1, 3, 7, ... on a line: with k = 2 point i links to i-1 and i-2, a contractible strip of triangles."""
    return np.c_[2.0 ** np.arange(n) - 1.0, np.zeros(n)]


def square_with_diagonal(a: int, b: int) -> list[np.ndarray]:
    """The 4-cycle 0-1-2-3 filled by the diagonal {a, b}: two triangles, contractible."""
    edges = np.array(sorted({(0, 1), (1, 2), (2, 3), (0, 3), (min(a, b), max(a, b))}))
    return clique_complex(edges, 4, 2)


def layer_betti(X: np.ndarray, k: int, m: int) -> list[int]:
    """Betti numbers 0..m of the kNN clique complex of one cloud, computed by GUDHI (Z/2)."""
    import gudhi

    st = gudhi.SimplexTree()
    for block in clique_complex(knn_graph(X, k), X.shape[0], m):
        for simplex in block.tolist():
            st.insert(simplex)
    st.compute_persistence(homology_coeff_field=2, persistence_dim_max=True)
    return (st.betti_numbers() + [0] * (m + 1))[: m + 1]


def random_layers(n: int, n_layers: int, width: int, drift: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width))
    out = [X]
    for _ in range(n_layers - 1):
        X = X + drift * rng.normal(size=X.shape)
        out.append(X)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Graph and complex


def test_knn_graph_is_symmetrised_and_sorted():
    assert knn_graph(polygon(8), 2).tolist() == [[0, 1], [0, 7], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7]]
    # on the doubling line i's two nearest are i-1 and i-2; point 0's are 1 and 2 (already there): 13 edges
    edges = knn_graph(doubling_line(8), 2)
    expected = sorted({(i - 1, i) for i in range(1, 8)} | {(i - 2, i) for i in range(2, 8)})
    assert [tuple(e) for e in edges.tolist()] == expected


def test_knn_graph_matches_a_brute_force_union_of_neighbour_lists():
    X = np.random.default_rng(0).normal(size=(60, 5))
    k = 4
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(D, np.inf)
    brute = {tuple(sorted((i, int(j)))) for i in range(60) for j in np.argsort(D[i])[:k]}
    assert {tuple(e) for e in knn_graph(X, k).tolist()} == brute


def test_clique_complex_matches_gudhi_expansion():
    import gudhi

    edges = knn_graph(np.random.default_rng(1).normal(size=(80, 3)), 6)
    ours = clique_complex(edges, 80, 3)
    st = gudhi.SimplexTree()
    for v in range(80):
        st.insert([v])
    for e in edges.tolist():
        st.insert(e)
    st.expansion(3)
    theirs: dict[int, set[tuple[int, ...]]] = {d: set() for d in range(4)}
    for simplex, _ in st.get_simplices():
        theirs[len(simplex) - 1].add(tuple(simplex))
    for d in range(4):
        rows = [tuple(r) for r in ours[d].tolist()]
        assert rows == sorted(rows) and len(set(rows)) == len(rows)
        assert set(rows) == theirs[d], f"dimension {d}"
    assert ours[3].shape[0] > 0  # the test exercises tetrahedra


# ----------------------------------------------------------------------------------------------------------------------
# Zigzag: index conventions and known answers


def test_index_to_layer_mapping():
    # 3 layers: indices 0..4 are K0, K0∩K1, K1, K1∩K2, K2; 5 is one past the end
    assert [zigzag_index_to_layer(i) for i in range(6)] == [0, 1, 1, 2, 2, 3]
    assert zigzag_index_to_layer(np.arange(4)).tolist() == [0, 1, 1, 2]


def test_zigzag_times_runs():
    presence = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=bool)
    simplex, time = zigzag_times(presence)
    per = {s: time[simplex == s].tolist() for s in range(4)}
    assert per[0] == [0]  # in every layer: enters at 0 and never leaves
    assert per[1] == [2, 3]  # only in layer 1 (index 2): leaves when entering the intersection 3
    assert per[2] == [0, 1, 4]  # layers 0 and 2: leaves at the intersection 1, comes back at layer 2 (index 4)
    assert per[3] == [4]


def test_identical_layers_give_bars_spanning_every_layer():
    bars = zigzag_bars([polygon(8)] * 4, k=2, max_dim=2)
    assert bars[["dim", "birth_layer", "death_layer"]].values.tolist() == [[0, 0, 4], [1, 0, 4]]
    # alive at the end: one past the last complex (2 * 4 - 1 = 7), one past the last layer (4)
    assert bars["death_index"].tolist() == [7, 7]
    assert bars.attrs["n_layers"] == 4 and bars.attrs["n_same_layer_dropped"] == 0


def test_loop_of_the_middle_layer_lives_exactly_there():
    """A 4-cycle-or-larger hole in the kNN graph of the middle layer only (an octagon between two contractible
    strips). It is born at zigzag index 2 (layer 1) and dies entering the intersection K1∩K2 (index 3), so
    death_layer = 2: alive in layer 1 only. It is *not* a same-layer bar (birth_layer 1 != death_layer 2) and is kept,
    because it is part of β1(1); the same-layer rule only drops classes that live inside an intersection (next test).
    """
    # the construction does what the docstring says: the line's complex is contractible, the octagon's a loop
    assert layer_betti(doubling_line(), k=2, m=2)[:2] == [1, 0]
    assert layer_betti(polygon(), k=2, m=2)[:2] == [1, 1]

    bars = zigzag_bars([doubling_line(), polygon(), doubling_line()], k=2, max_dim=2)
    loops = bars[bars["dim"] == 1]
    assert loops[["birth_index", "death_index", "birth_layer", "death_layer"]].values.tolist() == [[2, 3, 1, 2]]
    assert betti_per_layer(bars, 3, 1).tolist() == [0, 1, 0]
    assert bars[bars["dim"] == 0][["birth_layer", "death_layer"]].values.tolist() == [[0, 3]]


def test_loop_living_only_in_an_intersection_is_dropped_by_the_same_layer_rule():
    """K0 = square filled by diagonal 0-2, K1 = square filled by 1-3: both contractible, but K0 ∩ K1 is the hollow
    4-cycle. The loop is born at index 1 (layer 1 by i//2 + i%2) and dies at index 2 (layer 1): dropped."""
    K0, K1 = square_with_diagonal(0, 2), square_with_diagonal(1, 3)
    bars = zigzag_bars_of_complexes([K0, K1], max_dim=2)
    assert bars[["dim", "birth_layer", "death_layer"]].values.tolist() == [[0, 0, 2]]
    assert bars.attrs["n_same_layer_dropped"] == 1
    assert betti_per_layer(bars, 2, 1).tolist() == [0, 0]


def test_top_dimension_bars_are_truncation_artefacts():
    """k = 3 on 4 points gives K4; cut at m = 2 it is a hollow tetrahedron: an H2 bar made by the truncation."""
    X = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    dropped = zigzag_bars([X, X], k=3, max_dim=2)
    assert dropped["dim"].tolist() == [0] and dropped.attrs["n_top_dim_bars"] == 1
    kept = zigzag_bars([X, X], k=3, max_dim=2, keep_top_dim=True)
    assert kept[["dim", "truncation_artefact"]].values.tolist() == [[0, False], [2, True]]
    # with m = 3 the tetrahedron is filled and the artefact disappears
    assert zigzag_bars([X, X], k=3, max_dim=3, keep_top_dim=True)["dim"].tolist() == [0]


def test_betti_per_layer_equals_the_homology_of_each_layer_complex():
    """Zigzag bars restricted to a layer must give that layer's Betti numbers (GUDHI on K_l), all dimensions."""
    clouds = random_layers(n=40, n_layers=5, width=3, drift=0.4, seed=2)
    k, m = 3, 3
    bars = zigzag_bars(clouds, k=k, max_dim=m, keep_top_dim=True)
    ours = betti_per_layer(bars, 5, range(m + 1))
    for layer, X in enumerate(clouds):
        assert ours[:, layer].tolist() == layer_betti(X, k, m), f"layer {layer}"
    assert ours[1].sum() > 0  # the clouds do have loops


# ----------------------------------------------------------------------------------------------------------------------
# Descriptors


HAND_BARS = pd.DataFrame(
    {
        "dim": [1, 1, 1, 1, 0],
        "birth_layer": [0, 1, 1, 3, 0],
        "death_layer": [2, 4, 2, 5, 5],  # 5 = n_layers: alive at the end
    }
)


def brute_force_z(bars: pd.DataFrame, p: int, n_layers: int) -> np.ndarray:
    sel = bars[bars["dim"] == p]
    Z = np.zeros((n_layers, n_layers))
    for l1, l2 in itertools.product(range(n_layers), repeat=2):
        beta = sum(1 for b, d in zip(sel.birth_layer, sel.death_layer) if b <= l1 < d)
        alive = sum(1 for b, d in zip(sel.birth_layer, sel.death_layer) if b <= min(l1, l2) and d > max(l1, l2))
        Z[l1, l2] = alive / beta if beta else 0.0
    return Z


def test_betti_and_birth_frequency_by_hand():
    assert betti_per_layer(HAND_BARS, 5, (0, 1)).tolist() == [[1, 1, 1, 1, 1], [1, 3, 1, 2, 1]]
    assert birth_frequency(HAND_BARS, 5, 1).tolist() == [0.25, 0.5, 0.0, 0.25, 0.0]
    assert birth_frequency(HAND_BARS, 5, 2).tolist() == [0.0] * 5


def test_interlayer_persistence_by_hand_and_brute_force():
    Z = interlayer_persistence(HAND_BARS, 1, 5)
    np.testing.assert_allclose(Z, brute_force_z(HAND_BARS, 1, 5))
    # layer 1 has 3 loops; 2 of them ([0,2) and [1,2)) die entering layer 2, one ([1,4)) lives through layer 3
    assert Z[1].tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1 / 3, 0.0])
    assert Z[1, 3] == pytest.approx(1 / 3) and Z[3, 1] == pytest.approx(1 / 2)  # count symmetric, rows normalised


def test_interlayer_persistence_is_one_on_the_diagonal_where_there_are_features():
    bars = zigzag_bars(random_layers(n=60, n_layers=6, width=3, drift=0.3, seed=4), k=3, max_dim=2)
    for p in (0, 1):
        Z = interlayer_persistence(bars, p, 6)
        beta = betti_per_layer(bars, 6, p)
        assert np.all(np.diag(Z)[beta > 0] == 1.0)
        assert np.all(np.diag(Z)[beta == 0] == 0.0)
        np.testing.assert_allclose(Z, brute_force_z(bars, p, 6))
        assert np.all((Z >= 0) & (Z <= 1))


def test_averaged_persistence_alpha_conventions():
    Z = interlayer_persistence(HAND_BARS, 1, 5)
    # alpha = 0: plain mean over all layers, own layer included
    np.testing.assert_allclose(averaged_persistence(Z), Z.mean(axis=1))
    # alpha = 1: the own layer gets weight 0; matches the authors' notebook formula sum(Z*w)/sum(w), w = |l-i|
    w = np.abs(np.subtract.outer(np.arange(5), np.arange(5))).astype(float)
    np.testing.assert_allclose(averaged_persistence(Z, 1.0), (Z * w).sum(1) / w.sum(1))
    # alpha = -1: own layer excluded (the authors give it weight 1e-10)
    w_neg = np.where(w > 0, np.where(w > 0, w, 1.0) ** -1.0, 1e-10)
    np.testing.assert_allclose(averaged_persistence(Z, -1.0), (Z * w_neg).sum(1) / w_neg.sum(1), rtol=1e-8)
    # the authors' pruning-script variant (each column normalised by its own Betti number) is the transpose
    count = Z * betti_per_layer(HAND_BARS, 5, 1)[:, None]
    beta = betti_per_layer(HAND_BARS, 5, 1)
    np.testing.assert_allclose(averaged_persistence(Z.T), (count / beta[None, :]).mean(axis=1))


def test_suggest_states_threshold_and_exclusions():
    zbar = np.array([0.95, 0.2, 0.91, 1.0, 0.5, 0.99])  # states 0..5; 5 is the final-norm entry
    assert suggest_states(zbar, 0.9).tolist() == [2, 3]
    assert suggest_states(zbar, 0.5).tolist() == [2, 3, 4]
    assert suggest_states(np.zeros(6)).tolist() == []
    with pytest.raises(ValueError, match="fraction"):
        suggest_states(zbar, 0.0)


def test_states_to_blocks_and_ranges():
    assert states_to_blocks([1, 2, 3, 10]).tolist() == [0, 1, 2, 9]
    with pytest.raises(ValueError, match="state 0"):
        states_to_blocks([0, 1])
    assert blocks_to_ranges([3, 4, 5, 9]) == [(3, 6), (9, 10)]
    assert blocks_to_ranges([]) == []


# ----------------------------------------------------------------------------------------------------------------------
# Cost estimate, progress and bad input


def test_estimate_simplex_count_matches_what_the_zigzag_builds():
    clouds = random_layers(n=50, n_layers=4, width=3, drift=0.3, seed=6)
    count = estimate_simplex_count(clouds, k=4, max_dim=3)
    assert count.exact and count.per_layer.shape == (4, 4)
    expected = [[b.shape[0] for b in clique_complex(knn_graph(X, 4), 50, 3)] for X in clouds]
    assert count.per_layer.tolist() == expected
    bars = zigzag_bars(clouds, k=4, max_dim=3)
    assert count.n_distinct == bars.attrs["n_simplices"] and count.n_events == bars.attrs["n_events"]
    assert count.total == sum(map(sum, expected)) and estimate_zigzag_seconds(count) > 0
    capped = estimate_simplex_count(clouds, k=4, max_dim=3, max_exact=10)
    assert not capped.exact and capped.n_events is None
    assert capped.per_layer[:, :2].tolist() == count.per_layer[:, :2].tolist()  # vertices and edges stay exact


def test_progress_is_reported():
    calls: list[tuple[int, int, str]] = []
    zigzag_bars(
        random_layers(n=30, n_layers=3, width=3, drift=0.3, seed=7),
        k=3,
        max_dim=2,
        progress=lambda done, total, message: calls.append((done, total, message)),
    )
    messages = [m for _, _, m in calls]
    assert "kNN clique complexes" in messages
    # FastZigzag reports no steps: stages with total 0 (shown as text, never as a made-up bar)
    stages = [c for c in calls if c[2].startswith("FastZigzag")]
    assert [c[2].split(":")[1].split()[0] for c in stages] == ["building", "reducing", "reading"]
    assert all(done == 0 and total == 0 for done, total, _ in stages)
    old: list[tuple[int, int, str]] = []
    zigzag_bars(
        random_layers(n=30, n_layers=3, width=3, drift=0.3, seed=7),
        k=3,
        max_dim=2,
        engine="zigzag",
        progress=lambda done, total, message: old.append((done, total, message)),
    )
    last = [c for c in old if c[2] == "zigzag persistence"][-1]
    assert last[0] == last[1] > 0


@pytest.mark.parametrize(
    "clouds, k, max_dim, message",
    [
        ([np.zeros((4, 2))], 4, 2, "at least k\\+1 = 5 points"),
        ([np.random.default_rng(0).normal(size=(10, 2)), np.zeros((9, 2))], 3, 2, "same number of points"),
        ([np.zeros((10, 2))], 3, MAX_CLIQUE_DIM + 1, "max_dim"),
        ([np.zeros((10, 2))], 3, 0, "max_dim"),
        ([np.zeros((10, 2))], 0, 2, "positive integer"),
        ([], 3, 2, "at least one"),
        ([np.zeros((10, 2, 2))], 3, 2, "2-D"),
        ([np.full((10, 2), np.nan)], 3, 2, "NaN"),
    ],
)
def test_bad_input_raises_a_clear_value_error(clouds, k, max_dim, message):
    with pytest.raises(ValueError, match=message):
        zigzag_bars(clouds, k=k, max_dim=max_dim)
    with pytest.raises(ValueError, match=message):
        estimate_simplex_count(clouds, k=k, max_dim=max_dim)


# ----------------------------------------------------------------------------------------------------------------------
# FastZigzag against the old engine, and the representatives


def _multiset(bars: pd.DataFrame) -> list[tuple[int, ...]]:
    return sorted(map(tuple, bars[["dim", "birth_index", "death_index"]].to_numpy().tolist()))


@pytest.mark.parametrize("seed", range(24))
def test_fast_zigzag_gives_the_old_engines_bars_on_random_filtrations(seed):
    """The oracle: Dionysus' zigzag_homology_persistence. Random clouds drifting over 1-6 layers, k 2-5, m 1-3, with
    the H_m artefacts kept so that every dimension is compared."""
    rng = np.random.default_rng(seed)
    clouds = random_layers(
        n=int(rng.integers(8, 40)),
        n_layers=int(rng.integers(1, 7)),
        width=int(rng.integers(2, 5)),
        drift=float(rng.uniform(0.05, 1.0)),
        seed=seed,
    )
    k, m = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    fast = zigzag_bars(clouds, k=k, max_dim=m, keep_top_dim=True)
    old = zigzag_bars(clouds, k=k, max_dim=m, keep_top_dim=True, engine="zigzag")
    assert _multiset(fast) == _multiset(old)
    assert fast.attrs["n_same_layer_dropped"] == old.attrs["n_same_layer_dropped"]
    assert fast.attrs["engine"] == "fast" and old.attrs["engine"] == "zigzag"


def test_fast_zigzag_interval_types_map_to_the_same_half_open_bars():
    """The four FastZigzag types on known answers: the octagon of the middle layer is closed-closed [2, 3] (born by
    entries at 2, killed by the exit at 3) = [2, 3), alive in layer 1 only; the loop of an intersection only is
    open-open (1, 2) = [1, 2), dropped by the same-layer rule; identical layers: closed-open to the end."""
    import dionysus

    from analysis.methods.zigzag import _union_and_presence

    bars = zigzag_bars([doubling_line(), polygon(), doubling_line()], k=2, max_dim=2)
    assert bars[bars["dim"] == 1][["birth_index", "death_index"]].values.tolist() == [[2, 3]]
    K0, K1 = square_with_diagonal(0, 2), square_with_diagonal(1, 3)
    simplices, presence = _union_and_presence([K0, K1], 2)
    s, t = zigzag_times(presence)
    times = [x.tolist() for x in np.split(t, np.searchsorted(s, np.arange(1, presence.shape[0])))]
    cone = dionysus.fast_zigzag([r for b in simplices for r in b.tolist()], times)
    typed = dionysus.init_zigzag_diagrams(dionysus.homology_persistence(cone), cone)
    assert [(p.birth, p.death) for p in typed[1]["oo"]] == [(1.0, 2.0)]
    assert zigzag_bars_of_complexes([K0, K1], max_dim=2).attrs["n_same_layer_dropped"] == 1
    with pytest.raises(ValueError, match="engine"):
        zigzag_bars_of_complexes([K0, K1], max_dim=2, engine="nope")


def test_representative_of_the_middle_layer_loop_is_the_octagon():
    bars, cells = representatives_of_clouds([doubling_line(), polygon(), polygon(), doubling_line()], k=2, max_dim=2)
    loop = bars[bars["dim"] == 1]
    assert loop[["birth_layer", "death_layer", "lifetime", "layers_shown"]].values.tolist() == [[1, 3, 2, 2]]
    bar = int(loop["bar"].iloc[0])
    for layer in (1, 2):
        edges = cells[(cells["bar"] == bar) & (cells["layer"] == layer)][["v0", "v1"]].values.tolist()
        assert sorted(edges) == sorted([[i, (i + 1) % 8] if i < 7 else [0, 7] for i in range(8)])
    # the essential component: one vertex and its component, all 8 windows, in every layer
    comp = cells[(cells["bar"] == 0) & (cells["role"] == "component")]
    assert comp.groupby("layer").size().tolist() == [8, 8, 8, 8]


def _is_boundary_mod2(cycle: list[tuple[int, int]], triangles: np.ndarray) -> bool:
    """Is the edge set the boundary of some set of triangles (Gaussian elimination over Z/2, bitsets)?"""
    index: dict[tuple[int, int], int] = {}
    columns = []
    for a, b, c in triangles.tolist():
        bits = 0
        for e in ((a, b), (a, c), (b, c)):
            bits |= 1 << index.setdefault(e, len(index))
        columns.append(bits)
    target = 0
    for e in cycle:
        if e not in index:
            return False
        target |= 1 << index[e]
    pivots: dict[int, int] = {}
    for col in columns:
        while col:
            top = col.bit_length() - 1
            if top not in pivots:
                pivots[top] = col
                break
            col ^= pivots[top]
    while target:
        top = target.bit_length() - 1
        if top not in pivots:
            return False
        target ^= pivots[top]
    return True


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_representatives_are_non_trivial_cycles_of_each_layer(seed):
    clouds = random_layers(n=40, n_layers=5, width=3, drift=0.25, seed=seed)
    complexes = [clique_complex(knn_graph(X, 3), 40, 2) for X in clouds]
    bars, cells = zigzag_representatives(complexes, max_dim=2, top={0: 5, 1: 10})
    fast = zigzag_bars_of_complexes(complexes, max_dim=2)
    assert len(bars[bars["dim"] == 1]) == min(10, int((fast["dim"] == 1).sum()))
    checked = 0
    for (bar, layer), g in cells[cells["role"] == "cycle"].groupby(["bar", "layer"]):
        row = bars.set_index("bar").loc[bar]
        assert row["birth_layer"] <= layer < row["death_layer"]
        if row["dim"] == 1:
            edges = [tuple(e) for e in g[["v0", "v1"]].values.tolist()]
            layer_edges = set(map(tuple, complexes[layer][1].tolist()))
            assert set(edges) <= layer_edges
            degree = np.bincount(np.array(edges).ravel(), minlength=40)
            assert np.all(degree % 2 == 0)
            assert not _is_boundary_mod2(edges, complexes[layer][2])  # a real loop, not a filled one
            checked += 1
    assert checked > 0
    assert int(bars["layers_shown"].sum()) == cells[cells["role"] == "cycle"].groupby(["bar", "layer"]).ngroups


def test_representatives_refuse_the_truncated_dimension():
    with pytest.raises(ValueError, match="truncation"):
        representatives_of_clouds([polygon()], k=2, max_dim=2, top={2: 1})
