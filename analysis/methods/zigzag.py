"""Zigzag persistence of the last-token clouds across layers (Gardinazzi et al., "Persistent Topological Features in
Large Language Models", arXiv 2410.11042, ICML 2025; METHODS.md §5).

Pipeline
--------
1. Per layer ``l = 0..L`` (``n_layers = L + 1`` clouds, the same ``n`` windows in every layer): the symmetrised
   k-nearest-neighbour graph (edge ``{i, j}`` if ``j`` is among the ``k`` nearest of ``i`` *or* ``i`` among those of
   ``j``; Euclidean; :func:`knn_graph`) and its clique complex ``K_l`` up to dimension ``m = max_dim``
   (:func:`clique_complex`).
2. The zigzag ``K_0 ⊇ K_0∩K_1 ⊆ K_1 ⊇ K_1∩K_2 ⊆ … ⊆ K_L``: zigzag index ``2l`` is layer ``l`` and the odd index
   ``2l + 1`` is the intersection ``K_l ∩ K_{l+1}``; ``2 L + 1 = 2 n_layers - 1`` complexes in all.
3. Dionysus 2's FastZigzag (Dey & Hou, arXiv 2204.11080: ``fast_zigzag`` → cone, ``homology_persistence``,
   ``init_zigzag_diagrams``; Z/2 coefficients) gives bars ``[birth_index, death_index)`` in zigzag indices: the
   class exists in the complexes ``birth_index .. death_index - 1`` (the conversion of its closed/open interval
   types is in :func:`_fast_zigzag_raw_bars`). ``zigzag_homology_persistence``, 10-15x slower, gives the same
   bars and stays as the test oracle (``engine="zigzag"``).
4. Zigzag index ``i`` maps to layer ``i // 2 + i % 2`` (:func:`zigzag_index_to_layer`), as in the paper and the
   authors' code.

Conventions (read these before using the numbers)
-------------------------------------------------
* **death_layer is the first layer in which the bar is no longer alive.** A bar is alive in the layers
  ``birth_layer .. death_layer - 1`` (half-open ``[birth_layer, death_layer)``). This follows from the mapping: a
  class dying at index ``2l + 1`` was alive in layer ``l`` and not in layer ``l + 1`` (death_layer ``l + 1``); one
  dying at index ``2l`` was alive in the intersection before layer ``l`` but not in layer ``l`` (death_layer ``l``).
* **Bars alive at the end** of the zigzag (infinite in Dionysus) get ``death_index = 2 * n_layers - 1`` (one past
  the last complex) and ``death_layer = n_layers`` (one past the last layer): the same numbers the authors get by
  emptying the complex after the last layer.
* **Same-layer rule**: bars with ``birth_layer == death_layer`` are dropped. With the mapping above these are exactly
  the classes that live only in one intersection ``K_{l-1} ∩ K_l`` (born at ``2l - 1``, dead at ``2l``): they never
  exist in any layer, so dropping them changes no Betti number. A loop present in layer ``l`` only has
  ``birth_layer = l, death_layer = l + 1`` and is kept: it *is* part of ``β(l)``.
* **Truncation artefacts**: the complex is cut at dimension ``m``, so every ``(m + 2)``-clique of the graph leaves a
  hollow ``m``-sphere; ``H_m`` bars are artefacts and only dimensions ``p < m`` are meaningful. They are dropped
  unless ``keep_top_dim=True``, in which case they are kept and marked ``truncation_artefact = True``.
* **"Dies after max(l1, l2)"** in the inter-layer persistence means ``death_layer > max(l1, l2)``, i.e. the bar is
  still alive in layer ``max(l1, l2)``; "born at or before" means ``birth_layer <= min(l1, l2)``. So
  ``Z_p(l, l) = β_p(l) / β_p(l) = 1`` wherever ``β_p(l) > 0``.

The kNN graph of a cloud does not change when the cloud is scaled, so the clouds need no scale normalisation
(unlike the per-layer Rips diagrams of :mod:`analysis.methods.persistence`).

Layers here are whatever the clouds are: for the residual stream they are hidden states ``0..L`` (state 0 the
embeddings, state ``s`` the output of block ``s - 1``, state ``L`` with the final norm for Llama-style models);
:func:`states_to_blocks` turns selected states into the blocks that produced them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.errors import InputError

__all__ = [
    "MAX_CLIQUE_DIM",
    "ENGINES",
    "BAR_COLUMNS",
    "Progress",
    "SimplexCount",
    "knn_graph",
    "clique_complex",
    "zigzag_index_to_layer",
    "zigzag_times",
    "zigzag_bars",
    "zigzag_bars_of_complexes",
    "zigzag_representatives",
    "representatives_of_clouds",
    "CELL_COLUMNS",
    "estimate_simplex_count",
    "count_and_complexes",
    "estimate_zigzag_seconds",
    "ZIGZAG_SECONDS_PER_EVENT",
    "ZIGZAG_REFERENCE_EVENTS",
    "ZIGZAG_REFERENCE_SECONDS",
    "ZIGZAG_EVENTS_EXPONENT",
    "betti_per_layer",
    "birth_frequency",
    "interlayer_persistence",
    "averaged_persistence",
    "suggest_states",
    "states_to_blocks",
    "blocks_to_ranges",
]

#: Largest clique dimension ``m`` accepted (the paper uses 4; the default 3 keeps the view interactive).
MAX_CLIQUE_DIM = 4

#: ``progress(done, total, message)``: called while the zigzag is built and computed; ``total = 0`` means a stage
#: whose steps cannot be counted (FastZigzag's reduction): show the message, not a bar.
Progress = Callable[[int, int, str], None]

#: Persistence engines: ``"fast"`` = FastZigzag (default), ``"zigzag"`` = ``zigzag_homology_persistence`` (oracle).
ENGINES = ("fast", "zigzag")

#: Columns of the bar table returned by :func:`zigzag_bars`.
BAR_COLUMNS = ["dim", "birth_index", "death_index", "birth_layer", "death_layer", "truncation_artefact"]

# Rows of a boolean matrix processed at once when extending cliques (bounds the temporary memory to ~8 MB).
_CHUNK_CELLS = 1 << 23


# ----------------------------------------------------------------------------------------------------------------------
# Validation


def _validate(clouds: Sequence[np.ndarray], k: int, max_dim: int) -> list[np.ndarray]:
    if isinstance(clouds, np.ndarray) and clouds.ndim == 3:
        clouds = list(clouds)
    if len(clouds) == 0:
        raise InputError("zigzag persistence needs at least one layer cloud; got none")
    if int(k) != k or k < 1:
        raise InputError(f"k (number of nearest neighbours) must be a positive integer, got {k!r}")
    if int(max_dim) != max_dim or not 1 <= max_dim <= MAX_CLIQUE_DIM:
        raise InputError(
            f"max_dim (clique dimension m) must be an integer in 1..{MAX_CLIQUE_DIM}, got {max_dim!r}; "
            "higher dimensions explode the number of simplices"
        )
    out = []
    for layer, X in enumerate(clouds):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise InputError(f"cloud of layer {layer} must be a 2-D array [n_points, width], got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise InputError(f"cloud of layer {layer} contains NaN or infinite values")
        out.append(X)
    sizes = sorted({X.shape[0] for X in out})
    if len(sizes) > 1:
        per_layer = ", ".join(f"{i}: {X.shape[0]}" for i, X in enumerate(out))
        raise InputError(
            "every layer cloud must have the same number of points (one per window, the same windows in every "
            f"layer); got sizes {per_layer}"
        )
    n = sizes[0]
    if n < k + 1:
        raise InputError(f"a k-nearest-neighbour graph with k={k} needs at least k+1 = {k + 1} points; got {n}")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Graphs and clique complexes


def knn_graph(X: np.ndarray, k: int) -> np.ndarray:
    """Edges of the symmetrised Euclidean k-nearest-neighbour graph of the rows of ``X``.

    ``{i, j}`` is an edge if ``j`` is one of the ``k`` nearest rows of ``i`` or ``i`` one of those of ``j`` (no
    self-loops). Returns an int64 array ``[n_edges, 2]`` with ``i < j`` in every row, rows sorted and unique.
    Ties at the k-th distance are broken by ``numpy.argpartition`` (deterministic for a given input).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"a cloud must be a 2-D array [n_points, width], got shape {X.shape}")
    n = X.shape[0]
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if n < k + 1:
        raise InputError(f"a k-nearest-neighbour graph with k={k} needs at least k+1 = {k + 1} points; got {n}")
    sq = np.einsum("ij,ij->i", X, X)
    rows_per_chunk = max(1, _CHUNK_CELLS // (8 * max(n, 1)))
    heads, tails = [], []
    for start in range(0, n, rows_per_chunk):
        rows = np.arange(start, min(n, start + rows_per_chunk))
        D = sq[rows, None] + sq[None, :] - 2.0 * (X[rows] @ X.T)
        D[np.arange(rows.size), rows] = np.inf  # never your own neighbour
        nn = np.argpartition(D, k - 1, axis=1)[:, :k]
        heads.append(np.repeat(rows, k))
        tails.append(nn.ravel())
    i = np.concatenate(heads)
    j = np.concatenate(tails)
    edges = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1).astype(np.int64)
    return np.unique(edges, axis=0)


def _knn_graphs(clouds: Sequence[np.ndarray], k: int, progress: Progress | None = None) -> list[np.ndarray]:
    """:func:`knn_graph` of every cloud on one BLAS thread: on the shared 2-core machine under load the 31 graphs of
    the default setting took 4.2-4.6 s with the default threads and 1.6 s with one (identical edges)."""
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for layer, X in enumerate(clouds):
            if progress is not None:
                progress(layer, len(clouds), "kNN clique complexes")
            out.append(knn_graph(X, k))
    return out


def clique_complex(edges: np.ndarray, n_vertices: int, max_dim: int) -> list[np.ndarray]:
    """All cliques of the graph up to dimension ``max_dim`` (a clique of ``d + 1`` vertices is a ``d``-simplex).

    Returns ``[vertices, edges, triangles, …]``: for each ``d = 0..max_dim`` an int64 array ``[n_d, d + 1]`` of
    vertex lists, increasing within a row, rows in lexicographic order. Vectorised: the ``(d + 1)``-cliques are the
    ``d``-cliques extended by every common neighbour larger than their last vertex.
    """
    if max_dim < 0:
        raise InputError(f"max_dim must be >= 0, got {max_dim}")
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n = int(n_vertices)
    out: list[np.ndarray] = [np.arange(n, dtype=np.int64)[:, None]]
    if max_dim == 0:
        return out
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise InputError(f"edge endpoints must lie in 0..{n - 1}")
    lo, hi = np.minimum(edges[:, 0], edges[:, 1]), np.maximum(edges[:, 0], edges[:, 1])
    keep = lo != hi
    current = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0).reshape(-1, 2)
    out.append(current)
    if max_dim == 1:
        return out
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[current[:, 0], current[:, 1]] = True
    adjacency[current[:, 1], current[:, 0]] = True
    upper = np.triu(adjacency, 1)  # upper[v, w]: edge and w > v
    for d in range(2, max_dim + 1):
        current = _extend_cliques(current, adjacency, upper)
        out.append(current)
    return out


def _extend_cliques(cliques: np.ndarray, adjacency: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``(s + 1)``-cliques from the sorted ``s``-cliques: append every common neighbour above the last vertex."""
    c, s = cliques.shape
    n = adjacency.shape[0]
    if c == 0:
        return np.zeros((0, s + 1), dtype=np.int64)
    step = max(1, _CHUNK_CELLS // max(n, 1))
    parts = []
    for start in range(0, c, step):
        block = cliques[start : start + step]
        common = upper[block[:, -1]].copy()
        for col in range(s - 1):
            common &= adjacency[block[:, col]]
        r, w = np.nonzero(common)
        parts.append(np.concatenate([block[r], w[:, None]], axis=1))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, s + 1), dtype=np.int64)


def _cliques_within_budget(
    edges: np.ndarray, n_vertices: int, max_dim: int, max_exact: int
) -> tuple[list[int], list[np.ndarray] | None]:
    """Clique counts per dimension 0..max_dim and the cliques themselves while no dimension has more than
    ``max_exact`` of them; past that, counts are extrapolated geometrically and no cliques are returned."""
    cliques = [np.arange(n_vertices, dtype=np.int64)[:, None], edges]
    counts = [int(n_vertices), int(edges.shape[0])]
    if max_dim >= 2:
        adjacency = np.zeros((n_vertices, n_vertices), dtype=bool)
        adjacency[edges[:, 0], edges[:, 1]] = True
        adjacency[edges[:, 1], edges[:, 0]] = True
        upper = np.triu(adjacency, 1)
    exact = True
    for _ in range(2, max_dim + 1):
        if exact and counts[-1] <= max_exact:
            cliques.append(_extend_cliques(cliques[-1], adjacency, upper))
            counts.append(int(cliques[-1].shape[0]))
        else:
            exact = False
            growth = counts[-1] / counts[-2] if counts[-2] else 0.0
            counts.append(int(round(counts[-1] * growth)))
    return counts, (cliques if exact else None)


# ----------------------------------------------------------------------------------------------------------------------
# The zigzag


def zigzag_index_to_layer(index: np.ndarray | int) -> np.ndarray | int:
    """Layer of zigzag index ``i``: ``i // 2 + i % 2`` (an intersection ``2l + 1`` counts as layer ``l + 1``)."""
    return index // 2 + index % 2


def _union_and_presence(complexes: Sequence[Sequence[np.ndarray]], max_dim: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct simplices of all layers (by dimension, then lexicographic) and their presence in each layer.

    Returns one array of vertex lists per non-empty dimension and a boolean ``[n_simplices, n_layers]`` matrix whose
    rows follow the concatenation of those arrays (faces before cofaces).
    """
    n_layers = len(complexes)
    simplices: list[np.ndarray] = []
    presence_parts: list[np.ndarray] = []
    for d in range(max_dim + 1):
        per_layer = [
            np.asarray(c[d], dtype=np.int64).reshape(-1, d + 1) if d < len(c) else np.zeros((0, d + 1), np.int64)
            for c in complexes
        ]
        sizes = [a.shape[0] for a in per_layer]
        stacked = np.concatenate(per_layer, axis=0) if sum(sizes) else np.zeros((0, d + 1), np.int64)
        if stacked.shape[0] == 0:
            continue
        unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
        layer_of_row = np.repeat(np.arange(n_layers), sizes)
        presence = np.zeros((unique.shape[0], n_layers), dtype=bool)
        presence[inverse.ravel(), layer_of_row] = True
        simplices.append(unique)
        presence_parts.append(presence)
    presence_all = np.concatenate(presence_parts, axis=0) if presence_parts else np.zeros((0, n_layers), bool)
    return simplices, presence_all


def zigzag_times(presence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry/exit events of every simplex in the zigzag, from its presence in the layers ``[n_simplices, n_layers]``.

    A simplex is in zigzag complex ``2l`` iff it is in layer ``l``, and in ``2l + 1`` iff it is in layers ``l`` and
    ``l + 1``. Returns ``(simplex, time)`` int arrays sorted by simplex then time: for each simplex its maximal runs
    of zigzag indices ``[a, b]`` give an entry at time ``a`` and an exit at time ``b + 1`` (no exit when the run lasts
    to the end). Even positions of a simplex's times are entries, odd ones exits, as Dionysus expects.
    """
    presence = np.asarray(presence, dtype=bool)
    n_simplices, n_layers = presence.shape
    n_index = 2 * n_layers - 1
    in_zigzag = np.zeros((n_simplices, n_index + 2), dtype=np.int8)  # padded with an empty column on both sides
    in_zigzag[:, 1 : n_index + 1 : 2] = presence
    in_zigzag[:, 2:n_index:2] = presence[:, :-1] & presence[:, 1:]
    change = np.diff(in_zigzag, axis=1)  # column c: between zigzag index c-1 and c
    simplex, time = np.nonzero(change)
    keep = time < n_index  # an exit after the last complex is no exit
    return simplex[keep], time[keep]


def zigzag_bars_of_complexes(
    complexes: Sequence[Sequence[np.ndarray]],
    max_dim: int,
    progress: Progress | None = None,
    keep_top_dim: bool = False,
    engine: str = "fast",
) -> pd.DataFrame:
    """Zigzag barcode of a sequence of simplicial complexes, one per layer.

    ``complexes[l][d]`` is an int array ``[n_d, d + 1]`` of the ``d``-simplices of layer ``l`` for ``d = 0..max_dim``
    (each complex closed under faces, e.g. from :func:`clique_complex`). Returns the bars as in :func:`zigzag_bars`.
    ``engine``: ``"fast"`` (FastZigzag, the default) or ``"zigzag"`` (Dionysus' ``zigzag_homology_persistence``,
    10-15x slower, kept as the test oracle: both give the same bars).
    """
    import dionysus

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")
    n_layers = len(complexes)
    if n_layers == 0:
        raise InputError("zigzag persistence needs at least one layer; got none")
    t0 = time.perf_counter()
    simplices, presence = _union_and_presence(complexes, max_dim)
    simplex_of_event, time_of_event = zigzag_times(presence)
    n_events = int(simplex_of_event.size)
    # Python lists for Dionysus: faces before cofaces (by dimension), each simplex's times in order
    vertex_lists = [row for block in simplices for row in block.tolist()]
    bounds = np.searchsorted(simplex_of_event, np.arange(1, presence.shape[0]))
    times = [t.tolist() for t in np.split(time_of_event, bounds)]
    filtration = dionysus.Filtration(vertex_lists)
    build_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    end_index = 2 * n_layers - 1
    if engine == "fast":
        raw = _fast_zigzag_raw_bars(filtration, times, end_index, progress)
    else:
        raw = _old_zigzag_raw_bars(filtration, times, end_index, n_events, progress)
    zigzag_seconds = time.perf_counter() - t1

    bars = pd.DataFrame(
        {
            "dim": raw[:, 0],
            "birth_index": raw[:, 1],
            "death_index": raw[:, 2],
            "birth_layer": zigzag_index_to_layer(raw[:, 1]),
            "death_layer": zigzag_index_to_layer(raw[:, 2]),
        }
    )
    bars["truncation_artefact"] = bars["dim"] >= max_dim
    bars = bars[BAR_COLUMNS]
    same_layer = bars["birth_layer"] == bars["death_layer"]
    top = bars["truncation_artefact"]
    n_same_layer = int(same_layer.sum())
    n_top = int((top & ~same_layer).sum())
    bars = bars[~same_layer & (keep_top_dim | ~top)]
    bars = bars.sort_values(["dim", "birth_index", "death_index"], kind="stable").reset_index(drop=True)
    bars.attrs.update(
        n_layers=n_layers,
        max_dim=int(max_dim),
        n_simplices=int(presence.shape[0]),
        n_events=n_events,
        n_same_layer_dropped=n_same_layer,
        n_top_dim_bars=n_top,
        top_dim_kept=bool(keep_top_dim),
        build_seconds=build_seconds,
        zigzag_seconds=zigzag_seconds,
        engine=engine,
    )
    return bars


def _fast_zigzag_raw_bars(filtration, times, end_index: int, progress: Progress | None) -> np.ndarray:
    """``[n_bars, 3]`` (dim, birth_index, death_index) from FastZigzag (Dey & Hou, arXiv 2204.11080).

    ``fast_zigzag`` builds the cone whose extended persistence equals the zigzag, ``homology_persistence`` reduces
    it (Dionysus reports no steps: the progress shows stages) and ``init_zigzag_diagrams`` splits the bars by
    interval type. Its endpoints are the event times of the zigzag (the times we passed), the type says whether
    each end is closed (``c``) or open (``o``) on the real line. With our times, entries happen at even times
    (into a layer complex ``2l``) and exits at odd times (into an intersection ``2l + 1``), so the type is fixed by
    the parities: born by an entry at ``2l`` = ``c`` (closed) birth, by an exit at ``2l + 1`` = ``o`` birth; killed
    by an exit at ``2l + 1`` = ``c`` (the class is still there when the simplex leaves), by an entry at ``2l`` =
    ``o``. In complex indices every type is then alive in complexes ``birth .. death - 1`` (e.g. ``cc [0, 1]``
    exists in ``K_0`` only, ``oo (1, 2)`` in ``K_0 ∩ K_1`` only): ``[birth_index, death_index)`` is ``(birth,
    death)`` unchanged for all four types. :func:`_check_interval_type` asserts the parities, so a change in
    Dionysus' convention fails loudly instead of shifting bars by one.
    """
    import dionysus

    if progress is not None:
        progress(0, 0, "FastZigzag: building the cone")
    cone = dionysus.fast_zigzag(filtration, times)
    if progress is not None:
        progress(0, 0, f"FastZigzag: reducing the cone of {len(cone):,} cells (Dionysus reports no steps)")
    reduced = dionysus.homology_persistence(cone)
    if progress is not None:
        progress(0, 0, "FastZigzag: reading the bars")
    diagrams = dionysus.init_zigzag_diagrams(reduced, cone)
    return _raw_from_typed(diagrams, end_index)


def _raw_from_typed(diagrams, end_index: int) -> np.ndarray:
    rows = []
    for dim, by_type in enumerate(diagrams):
        for kind, dgm in by_type.items():
            for point in dgm:
                birth = int(round(point.birth))
                death = end_index if math.isinf(point.death) else int(round(point.death))
                _check_interval_type(kind, birth, None if math.isinf(point.death) else death)
                rows.append((dim, birth, death))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _check_interval_type(kind: str, birth: int, death: int | None) -> None:
    """FastZigzag's closed/open ends must match the parities of our event times (see :func:`_fast_zigzag_raw_bars`)."""
    if (kind[0] == "c") != (birth % 2 == 0) or (death is not None and (kind[1] == "c") != (death % 2 == 1)):
        raise RuntimeError(
            f"FastZigzag interval {kind} ({birth}, {death}) does not match the zigzag's event times: "
            "Dionysus' endpoint convention changed; the bars cannot be converted safely"
        )


def _old_zigzag_raw_bars(filtration, times, end_index: int, n_events: int, progress: Progress | None) -> np.ndarray:
    """The same bars from Dionysus' ``zigzag_homology_persistence`` (the oracle; reports every step)."""
    import dionysus

    if progress is None:
        _, diagrams, _ = dionysus.zigzag_homology_persistence(filtration, times)
    else:
        every = max(1, n_events // 100)
        progress(0, n_events, "zigzag persistence")
        state = {"done": 0}

        def on_step(i: int, t: float, d: bool, zz: object, cells: object) -> None:
            state["done"] += 1
            if state["done"] % every == 0:
                progress(state["done"], n_events, "zigzag persistence")

        _, diagrams, _ = dionysus.zigzag_homology_persistence(filtration, times, callback=on_step)
        progress(n_events, n_events, "zigzag persistence")
    rows = []
    for dim, dgm in enumerate(diagrams):
        for point in dgm:
            death = end_index if math.isinf(point.death) else int(round(point.death))
            rows.append((dim, int(round(point.birth)), death))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def zigzag_bars(
    clouds: Sequence[np.ndarray],
    k: int = 4,
    max_dim: int = 3,
    progress: Progress | None = None,
    keep_top_dim: bool = False,
    engine: str = "fast",
) -> pd.DataFrame:
    """Zigzag persistence bars of the kNN clique complexes of a sequence of layer clouds.

    ``clouds``: one ``[n, width]`` array per layer (``n_layers`` of them), the same ``n`` windows in the same order
    in every layer. ``k``: neighbours of the kNN graph (paper default 4). ``max_dim``: clique dimension ``m``
    (1..4; the paper uses 4). ``progress(done, total, message)`` is called per layer while the complexes are
    built, then once per stage of FastZigzag with ``total = 0`` (it reports no steps); with ``engine="zigzag"``
    (the old engine, the test oracle) about 100 times during the zigzag.

    Returns a DataFrame, one row per bar, sorted by ``dim, birth_index, death_index``, with columns

    * ``dim``: homology dimension ``p`` (``0..m-1``; ``m`` only with ``keep_top_dim``);
    * ``birth_index``, ``death_index``: zigzag indices, alive in complexes ``birth_index .. death_index - 1``;
      ``death_index = 2 * n_layers - 1`` for a bar alive at the end;
    * ``birth_layer``, ``death_layer``: ``i // 2 + i % 2`` of those; alive in layers
      ``birth_layer .. death_layer - 1``; ``death_layer = n_layers`` for a bar alive at the end;
    * ``truncation_artefact``: ``dim == max_dim`` (see the module notes).

    Bars with ``birth_layer == death_layer`` (alive only inside one intersection) are dropped. ``DataFrame.attrs``
    records ``n_layers, max_dim, n_simplices, n_events, n_same_layer_dropped, n_top_dim_bars, top_dim_kept,
    build_seconds, zigzag_seconds``. Raises ``ValueError`` for clouds of different sizes, fewer than ``k + 1``
    points, ``max_dim`` outside 1..4, or non-finite values. See :func:`estimate_simplex_count` for a cost check.
    """
    clouds = _validate(clouds, k, max_dim)
    n_layers = len(clouds)
    n = clouds[0].shape[0]
    complexes = [clique_complex(edges, n, max_dim) for edges in _knn_graphs(clouds, k, progress)]
    if progress is not None:
        progress(n_layers, n_layers, "kNN clique complexes")
    bars = zigzag_bars_of_complexes(complexes, max_dim, progress=progress, keep_top_dim=keep_top_dim, engine=engine)
    bars.attrs.update(k=int(k), n_points=int(n))
    return bars


# ----------------------------------------------------------------------------------------------------------------------
# Cost


@dataclass(frozen=True)
class SimplexCount:
    """Size of a zigzag before it is computed.

    ``per_layer[l, d]``: number of ``d``-simplices of ``K_l``. ``exact``: False when some layer had more than
    ``max_exact`` cliques of one dimension, so higher dimensions were extrapolated (then the zigzag is far too big to
    run interactively anyway). ``n_distinct``: distinct simplices over all layers, and ``n_events``: entries plus
    exits the zigzag performs (what Dionysus' time is proportional to); both ``None`` when not ``exact``.
    """

    per_layer: np.ndarray
    exact: bool
    n_distinct: int | None
    n_events: int | None

    @property
    def per_dim(self) -> np.ndarray:
        return self.per_layer.sum(axis=0)

    @property
    def total(self) -> int:
        """Simplices summed over layers (a simplex present in 10 layers counts 10 times)."""
        return int(self.per_layer.sum())


def estimate_simplex_count(
    clouds: Sequence[np.ndarray],
    k: int = 4,
    max_dim: int = 3,
    max_exact: int = 200_000,
) -> SimplexCount:
    """Count the simplices of every layer's kNN clique complex, and the zigzag's events, before running it.

    Builds the kNN graphs and their cliques dimension by dimension (vectorised, well under a second for 500 points
    and 31 layers), but no Dionysus filtration, so a UI can warn before a ``k``/``max_dim`` choice explodes: a layer
    with more than ``max_exact`` cliques of one dimension stops the exact count (higher dimensions extrapolated
    geometrically). Same validation as :func:`zigzag_bars`. Feed the result to :func:`estimate_zigzag_seconds`.
    """
    return count_and_complexes(clouds, k, max_dim, max_exact)[0]


def count_and_complexes(
    clouds: Sequence[np.ndarray],
    k: int = 4,
    max_dim: int = 3,
    max_exact: int = 200_000,
) -> tuple[SimplexCount, list[list[np.ndarray]] | None]:
    """:func:`estimate_simplex_count` and the complexes it built (``None`` when not exact), so that a caller who
    checks the cost first does not build the graphs and cliques twice (:func:`zigzag_bars_of_complexes`)."""
    clouds = _validate(clouds, k, max_dim)
    n = clouds[0].shape[0]
    rows: list[list[int]] = []
    complexes: list[list[np.ndarray]] = []
    exact = True
    graphs = _knn_graphs(clouds, k)
    for edges in graphs:
        counts, cliques = _cliques_within_budget(edges, n, max_dim, max_exact)
        rows.append(counts)
        if cliques is None:
            exact = False
            complexes = []
        elif exact:
            complexes.append(cliques)
    n_distinct = n_events = None
    if exact:
        _, presence = _union_and_presence(complexes, max_dim)
        simplex_of_event, _ = zigzag_times(presence)
        n_distinct, n_events = int(presence.shape[0]), int(simplex_of_event.size)
    count = SimplexCount(np.array(rows, dtype=np.int64), exact, n_distinct, n_events)
    return count, (complexes if exact else None)


#: Wall time of :func:`zigzag_bars` with FastZigzag (kNN graphs + cliques + Dionysus) against the zigzag's events
#: (entries and exits of simplices), on the development machine's scale (the one the Rips cost model is fitted on;
#: :func:`analysis.profiles.topology.zigzag_estimate` multiplies it by this machine's measured speed,
#: ``analysis.capture.estimate.machine_speed``). Fitted on last-token clouds of the bundled model (31 states, k = 4, m = 3,
#: ``bench/topology.py`` on 2 idle cores, where the Rips probe ran 0.82x the model): N = 250, 500, 1000, 2000 points
#: and the default 500 x 32 (m = 3 and 4) gave 30k, 55k, 112k, 221k, 63k, 65k events and 0.25, 0.89, 2.33, 7.91, 0.71,
#: 1.01 s, i.e. ``seconds ~ events ** 1.70`` (every point within 30 % of the fit); the reference is the default
#: setting, 63,128 events, 0.91 s measured = 1.1 s on the model's scale. The old engine (``engine="zigzag"``) took
#: 9.3 s on the default in the same run.
ZIGZAG_REFERENCE_EVENTS = 63_128
ZIGZAG_REFERENCE_SECONDS = 1.1
ZIGZAG_EVENTS_EXPONENT = 1.70
#: Kept for callers of the earlier linear estimate: the reference's seconds per event.
ZIGZAG_SECONDS_PER_EVENT = ZIGZAG_REFERENCE_SECONDS / ZIGZAG_REFERENCE_EVENTS


def estimate_zigzag_seconds(count: SimplexCount) -> float:
    """Rough wall time of :func:`zigzag_bars` from :func:`estimate_simplex_count` on the development machine's scale
    (expect a factor of 2 either way; :func:`analysis.profiles.topology.zigzag_estimate` scales it to this machine now).

    ``ZIGZAG_REFERENCE_SECONDS * (events / ZIGZAG_REFERENCE_EVENTS) ** ZIGZAG_EVENTS_EXPONENT``: a power law fitted on
    real clouds from 30k to 220k events with FastZigzag (see the constants). Uses the exact number of zigzag events when known, else
    the simplices summed over layers (events are between 0.3 and 2 times that, depending on how much consecutive
    layers share).
    """
    events = count.n_events if count.n_events is not None else count.total
    return float(ZIGZAG_REFERENCE_SECONDS * (events / ZIGZAG_REFERENCE_EVENTS) ** ZIGZAG_EVENTS_EXPONENT)


# ----------------------------------------------------------------------------------------------------------------------
# Descriptors


def _bars_of_dim(bars: pd.DataFrame, dim: int) -> tuple[np.ndarray, np.ndarray]:
    sel = bars[bars["dim"] == dim]
    return sel["birth_layer"].to_numpy(np.int64), sel["death_layer"].to_numpy(np.int64)


def betti_per_layer(bars: pd.DataFrame, n_layers: int, dims: Sequence[int] | int = (0, 1, 2)) -> np.ndarray:
    """Betti numbers per layer: ``β_p(l) = #{p-bars with birth_layer <= l < death_layer}``.

    Returns int64 ``[len(dims), n_layers]`` (or ``[n_layers]`` for a single int ``dims``). These equal the Betti
    numbers of each layer's complex ``K_l`` (the dropped same-layer bars are never alive in a layer).
    """
    single = isinstance(dims, (int, np.integer))
    dim_list = [int(dims)] if single else [int(d) for d in dims]
    out = np.zeros((len(dim_list), n_layers), dtype=np.int64)
    for row, p in enumerate(dim_list):
        birth, death = _bars_of_dim(bars, p)
        diff = np.zeros(n_layers + 1, dtype=np.int64)
        np.add.at(diff, np.clip(birth, 0, n_layers), 1)
        np.add.at(diff, np.clip(death, 0, n_layers), -1)
        out[row] = np.cumsum(diff)[:n_layers]
    return out[0] if single else out


def birth_frequency(bars: pd.DataFrame, n_layers: int, dim: int = 1) -> np.ndarray:
    """Births' relative frequency: share of all ``dim``-bars born in each layer (sums to 1; zeros if no bars)."""
    birth, _ = _bars_of_dim(bars, dim)
    counts = np.bincount(birth, minlength=n_layers)[:n_layers].astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def interlayer_persistence(bars: pd.DataFrame, p: int, n_layers: int) -> np.ndarray:
    """Inter-layer persistence ``Z_p`` ``[n_layers, n_layers]``.

    ``Z_p(l1, l2) = #{p-bars : birth_layer <= min(l1, l2) and death_layer > max(l1, l2)} / β_p(l1)`` (0 where
    ``β_p(l1) = 0``): the share of the ``p``-features of layer ``l1`` that are alive throughout ``l1 .. l2``.
    ``death_layer > max`` means still alive in layer ``max(l1, l2)`` (``death_layer`` is the first layer without
    the bar). The count is symmetric, the normalisation by ``β_p(l1)`` (the row) is not. ``Z_p(l, l) = 1`` where
    ``β_p(l) > 0``.
    """
    birth, death = _bars_of_dim(bars, p)
    # each bar adds 1 on the square [birth, death - 1]^2: a 2-D difference array and two cumulative sums
    grid = np.zeros((n_layers + 1, n_layers + 1), dtype=np.int64)
    b = np.clip(birth, 0, n_layers)
    d = np.clip(death, 0, n_layers)
    np.add.at(grid, (b, b), 1)
    np.add.at(grid, (b, d), -1)
    np.add.at(grid, (d, b), -1)
    np.add.at(grid, (d, d), 1)
    count = grid.cumsum(axis=0).cumsum(axis=1)[:n_layers, :n_layers].astype(np.float64)
    betti = np.diag(count).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        Z = np.where(betti[:, None] > 0, count / np.where(betti > 0, betti, 1.0)[:, None], 0.0)
    return Z


def averaged_persistence(Z: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """Weighted row average ``Z̄(l) = Σ_i w(l, i) Z(l, i) / Σ_i w(l, i)`` with ``w(l, i) = |l - i| ** alpha``.

    The own layer ``i = l`` is included for ``alpha = 0`` (``0 ** 0 = 1``: the plain mean over all layers, the
    paper's *persistence similarity*, as in the authors' notebook) and excluded for any other ``alpha`` (weight 0;
    the authors' code uses 0 for ``alpha > 0`` and 1e-10 for ``alpha < 0``). ``alpha > 0`` favours features that
    last far from ``l``.

    The authors' pruning script (``p_column_knn``) averages ``count(l, i) / β(i)`` instead, i.e. each column
    normalised by its own layer: that is ``averaged_persistence(Z.T, alpha)`` here (the count is symmetric), apart
    from layers with ``β(i) = 0`` which we count as 0 where their script divides by zero.
    """
    Z = np.asarray(Z, dtype=np.float64)
    n = Z.shape[0]
    if Z.ndim != 2 or Z.shape[1] != n:
        raise InputError(f"Z must be a square matrix, got shape {Z.shape}")
    gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype(np.float64)
    if alpha == 0:
        w = np.ones((n, n))
    else:
        w = np.zeros((n, n))
        off = gap > 0
        w[off] = gap[off] ** alpha
    denom = w.sum(axis=1)
    return np.where(denom > 0, (w * Z).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)


def suggest_states(zbar: np.ndarray, fraction: float = 0.9) -> np.ndarray:
    """States ``s`` with ``zbar[s] >= fraction * max(zbar)``, never state 0 (embeddings) nor the last state.

    The maximum is taken over every state, the last one included, as in the authors' pruning script; the last
    state is excluded from the answer because for Llama-style models it is the final-norm output, not a block's.
    Returns sorted state indices (empty if ``max(zbar) <= 0``). Map them to blocks with :func:`states_to_blocks`.
    """
    z = np.asarray(zbar, dtype=np.float64)
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    if z.size < 3 or not np.nanmax(z) > 0:
        return np.zeros(0, dtype=np.int64)
    top = np.nanmax(z)
    candidates = np.arange(1, z.size - 1)
    return candidates[z[candidates] >= fraction * top].astype(np.int64)


def states_to_blocks(states: Sequence[int] | np.ndarray) -> np.ndarray:
    """Blocks that produced the given hidden states: state ``s`` (``s >= 1``) is the output of block ``s - 1``."""
    s = np.asarray(states, dtype=np.int64).ravel()
    if np.any(s < 1):
        raise InputError("state 0 is the embedding output: no block produces it")
    return s - 1


def blocks_to_ranges(blocks: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """Group block indices into contiguous half-open ranges ``[start, end)``.

    ``[3, 4, 5, 9] -> [(3, 6), (9, 10)]``.
    """
    b = np.unique(np.asarray(blocks, dtype=np.int64))
    if b.size == 0:
        return []
    breaks = np.nonzero(np.diff(b) > 1)[0]
    starts = np.r_[b[0], b[breaks + 1]]
    ends = np.r_[b[breaks], b[-1]] + 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


# ----------------------------------------------------------------------------------------------------------------------
# What a bar is made of: cycle representatives per layer

#: Columns of :func:`zigzag_representatives`' cell table: one row per simplex of a bar's representative in one
#: layer (``role`` ``"cycle"``), and for ``H_0`` bars one row per vertex of the connected components the
#: representative's vertices lie in (``role`` ``"component"``). ``v1 = -1`` for vertices.
CELL_COLUMNS = ["bar", "layer", "role", "simplex_dim", "v0", "v1"]


def zigzag_representatives(
    complexes: Sequence[Sequence[np.ndarray]],
    max_dim: int,
    top: dict[int, int] | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Representatives of the longest-lived bars, in every layer each one is alive in.

    Runs FastZigzag with the reduction's ``V`` matrix (``homology_persistence(cone, method="matrix_v")``) and lifts
    each chosen bar to Dionysus' *apex representative* (``dionysus.apex``: a chain over the bar's whole interval
    whose restriction to any time inside it is a cycle of the complex at that time, representing the bar's class).
    The representative in layer ``l`` is the apex representative at time ``2l + 0.5``: with entries at even and
    exits at odd times, the complex between ``2l`` and ``2l + 1`` is exactly ``K_l``. A bar is alive in layer ``l``
    iff ``birth_index <= 2l < death_index``.

    ``top``: how many bars per dimension, longest first (lifetime in layers, then in zigzag indices, then earliest
    birth); default ``{0: 10, 1: 20}``; dimensions ``>= max_dim`` (truncation artefacts) are refused. For ``H_1`` a
    representative is a set of edges with every vertex of even degree (a Z/2 cycle of ``K_l``, not a boundary
    there); for ``H_0`` a set of vertices (two, in different components, for a component that later merges; one for the
    essential component) and the smallest connected component of ``K_l`` they touch — the cluster the bar is —
    is added as ``role == "component"``.

    Every per-layer chain is checked (:func:`_is_cycle_of`: its edges are in ``K_l`` and form a Z/2 cycle). A chain
    that fails is left out and its ``(bar, layer)`` listed in ``cells.attrs["unverified"]``: on the bundled model
    that happens for a few layers of some open-closed bars (born by a removal, dying by a removal), whose lift in
    Dionysus follows triangle entries only and keeps an edge after it has left the layer.

    Returns ``(bars, cells)``: ``bars`` has ``bar, dim, birth_index, death_index, birth_layer, death_layer,
    lifetime, layers_shown`` (``bar`` numbers the chosen bars 0, 1, … in the order above, per dimension then rank;
    ``layers_shown``: layers with a verified representative); ``cells`` has :data:`CELL_COLUMNS`.
    """
    import dionysus

    top = {0: 10, 1: 20} if top is None else {int(d): int(c) for d, c in top.items()}
    if any(d >= max_dim or d < 0 for d in top):
        raise InputError(
            f"representatives exist for the meaningful dimensions 0..{max_dim - 1} only (H_{max_dim} "
            "bars are truncation artefacts)"
        )
    n_layers = len(complexes)
    end_index = 2 * n_layers - 1
    simplices, presence = _union_and_presence(complexes, max_dim)
    simplex_of_event, time_of_event = zigzag_times(presence)
    vertex_lists = [row for block in simplices for row in block.tolist()]
    bounds = np.searchsorted(simplex_of_event, np.arange(1, presence.shape[0]))
    times = [t.tolist() for t in np.split(time_of_event, bounds)]
    if progress is not None:
        progress(0, 0, "FastZigzag with representatives: building the cone")
    cone = dionysus.fast_zigzag(dionysus.Filtration(vertex_lists), times)
    if progress is not None:
        progress(0, 0, f"FastZigzag with representatives: reducing the cone of {len(cone):,} cells (no step count)")
    reduced, v = dionysus.homology_persistence(cone, method="matrix_v")
    diagrams = dionysus.init_zigzag_diagrams(reduced, cone)

    candidates = []  # (dim, birth, death, point)
    for dim, by_type in enumerate(diagrams):
        if dim not in top:
            continue
        for kind, dgm in by_type.items():
            for point in dgm:
                birth = int(round(point.birth))
                death = end_index if math.isinf(point.death) else int(round(point.death))
                _check_interval_type(kind, birth, None if math.isinf(point.death) else death)
                b_layer, d_layer = int(zigzag_index_to_layer(birth)), int(zigzag_index_to_layer(death))
                if d_layer > b_layer:  # copy: Dionysus' diagram points are views that do not outlive the loop
                    candidates.append(
                        (
                            dim,
                            birth,
                            death,
                            b_layer,
                            d_layer,
                            _Point(float(point.birth), float(point.death), int(point.data)),
                        )
                    )
    chosen = []
    for dim in sorted(top):
        mine = [c for c in candidates if c[0] == dim]
        mine.sort(key=lambda c: (-(c[4] - c[3]), -(c[2] - c[1]), c[1], c[2]))
        chosen.extend(mine[: top[dim]])

    edges_of_layer = [
        np.asarray(c[1], dtype=np.int64).reshape(-1, 2) if len(c) > 1 else np.zeros((0, 2), np.int64) for c in complexes
    ]
    n_vertices = int(max((np.asarray(c[0]).size for c in complexes), default=0))
    edge_sets = [set(map(tuple, e.tolist())) for e in edges_of_layer]
    components = {}
    bar_rows, cells, unverified = [], [], []
    for bar_id, (dim, birth, death, b_layer, d_layer, point) in enumerate(chosen):
        if progress is not None:
            progress(bar_id, len(chosen), f"representative of H{dim} bar {bar_id + 1} of {len(chosen)}")
        layers = list(range(b_layer, min(d_layer, n_layers)))
        chains = _apex_cells(point, reduced, v, cone, [2 * layer + 0.5 for layer in layers])
        verified = 0
        for layer, chain in zip(layers, chains):
            simplices_mod2: dict[tuple[int, ...], int] = {}
            for idx in chain:  # a simplex that left and came back is two cells of the cone: add them mod 2
                key = tuple(sorted(int(x) for x in cone[idx]))
                simplices_mod2[key] = simplices_mod2.get(key, 0) ^ 1
            chain_simplices = sorted(k for k, c in simplices_mod2.items() if c)
            if not _is_cycle_of(chain_simplices, dim, edge_sets, layer):
                unverified.append((bar_id, layer))
                continue
            verified += 1
            verts = set()
            for s in chain_simplices:
                cells.append((bar_id, layer, "cycle", len(s) - 1, s[0], s[1] if len(s) > 1 else -1))
                verts.update(s)
            if dim == 0 and verts:
                if layer not in components:
                    components[layer] = _components(edges_of_layer[layer], n_vertices)
                labels = components[layer]
                touched = np.unique(labels[sorted(verts)])
                sizes = np.bincount(labels)[touched]
                members = np.flatnonzero(labels == touched[int(np.argmin(sizes))])
                cells.extend((bar_id, layer, "component", 0, int(u), -1) for u in members)
        bar_rows.append((bar_id, dim, birth, death, b_layer, d_layer, d_layer - b_layer, verified))
    if progress is not None:
        progress(len(chosen), len(chosen), "representatives done")
    bars = pd.DataFrame(
        bar_rows,
        columns=["bar", "dim", "birth_index", "death_index", "birth_layer", "death_layer", "lifetime", "layers_shown"],
    )
    frame = pd.DataFrame(cells, columns=CELL_COLUMNS)
    frame.attrs["unverified"] = unverified
    return bars, frame


def _is_cycle_of(simplices: list[tuple[int, ...]], dim: int, edge_sets: list[set], layer: int) -> bool:
    """A Z/2 ``dim``-cycle of the layer's complex: for ``H_1`` edges of ``K_l`` with every vertex of even degree, for
    ``H_0`` a non-empty set of vertices."""
    if not simplices or any(len(s) != dim + 1 for s in simplices):
        return False
    if dim == 0:
        return True
    if dim == 1:
        degree: dict[int, int] = {}
        for a, b in simplices:
            if (a, b) not in edge_sets[layer]:
                return False
            degree[a] = degree.get(a, 0) ^ 1
            degree[b] = degree.get(b, 0) ^ 1
        return not any(degree.values())
    return True


_CONE_VERTEX = -1  # the apex w of Dionysus' cone


def _apex_cells(point, reduced, v, cone, query_times: Sequence[float]) -> list[list[int]]:
    """The cells (cone indices of base simplices) of a bar's apex representative at each of ``query_times``.

    Follows ``dionysus.apex`` / ``lift_cycle`` (Dionysus 2.2.3, ``bindings/python/dionysus/zigzag.py``): the chain
    ``z`` chosen by the interval type is lifted along the bar, each face's coefficient changing at the times of
    the cofaces of ``z`` that contain it. Over Z/2 the coefficient of a face at time ``t`` is its starting value
    (the extra chain of a closed-closed bar, else 0) plus the number of those coface times between the lift's start
    and ``t``, mod 2. Computed here directly instead of through Dionysus' interval trees because, for the lifts that
    run downwards in time (closed-open and open-open bars), ``lift_cycle`` attaches each coefficient to the
    interval on the wrong side of its change time (we saw representatives with every coefficient 0 on this
    model). Query times must not be event times (use half-integers).
    """
    w = _CONE_VERTEX
    i = int(point.data)
    j = reduced.pair(i)
    i_cone, j_cone = w in cone[i], w in cone[j]
    birth, death = float(point.birth), float(point.death)

    def base(chain) -> list[int]:
        return [int(x.index) for x in chain if int(x.element) % 2 and w not in cone[int(x.index)]]

    start_chain: list[int] = []
    if not i_cone and not j_cone:  # closed-open
        z, start, finish = [int(x.index) for x in v[j] if int(x.element) % 2], death, birth
    elif i_cone and j_cone:  # open-closed
        z, start, finish = base(reduced[j]), birth, death
    elif cone[i].data > cone[j].data:  # open-open
        z, start, finish = [int(x.index) for x in reduced[j] if int(x.element) % 2], death, birth
    else:  # closed-closed
        z, start, finish = base(v[j]), birth, death
        start_chain = base(reduced[j])
    lo, hi = min(start, finish), max(start, finish)
    coface_times: dict[int, list[float]] = {}
    for y in z:
        cell = cone[y]
        if not lo <= cell.data <= hi:
            continue
        for face in cell.boundary():
            f = cone.index(face, y)
            if f != 0:  # the cone vertex w is not part of the boundary in H(cK, w)
                coface_times.setdefault(int(f), []).append(float(cell.data))
    initial = set(start_chain)
    out = []
    for t in query_times:
        alive = set()
        for f in set(coface_times) | initial:
            flips = sum(
                1 for tau in coface_times.get(f, ()) if (start <= tau < t if start < finish else t < tau <= start)
            )
            if (f in initial) ^ (flips % 2 == 1) and w not in cone[f]:
                alive.add(f)
        out.append(sorted(alive))
    return out


@dataclass(frozen=True)
class _Point:
    """What ``dionysus.apex`` reads of a diagram point."""

    birth: float
    death: float
    data: int


def _components(edges: np.ndarray, n_vertices: int) -> np.ndarray:
    """Connected-component label of every vertex of a graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    return connected_components(graph, directed=False)[1]


def representatives_of_clouds(
    clouds: Sequence[np.ndarray],
    k: int = 4,
    max_dim: int = 3,
    top: dict[int, int] | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`zigzag_representatives` of the kNN clique complexes of layer clouds (as :func:`zigzag_bars`)."""
    clouds = _validate(clouds, k, max_dim)
    n = clouds[0].shape[0]
    complexes = [clique_complex(edges, n, max_dim) for edges in _knn_graphs(clouds, k, progress)]
    return zigzag_representatives(complexes, max_dim, top=top, progress=progress)
