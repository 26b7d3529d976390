"""Topology of the hidden states, on a workspace: cached per-layer persistence and zigzag persistence across layers.

This module wires the pure mathematics of :mod:`analysis.methods.persistence` and :mod:`analysis.methods.zigzag` to a model, a text
and the on-disk cache (METHODS.md §5). The dashboard pages and ``python -m analysis topology`` both call it, so a
result computed by one is read by the other.

Per-layer persistence
---------------------
For every hidden state ``h_0 … h_L``: the state's cloud, scale-normalised (divided by its median pairwise distance),
greedy farthest-point subsampled to ``n_points`` (default 300), then Vietoris–Rips persistence (GUDHI) for
``H_0 … H_max_dim``. Two clouds (:class:`PersistenceSettings` ``cloud``):

* ``"all"``: the all-token cloud of the workspace's calibration windows (the sidebar's ``N × T``, its
  ``exclude_first`` and ``n_max``);
* ``"last"``: the last-token cloud of ``last_windows`` windows of ``last_window_len`` tokens of the workspace's text
  (default 500 × 32: the same capture as the zigzag, so one model run serves both views).

Each state's diagrams are one cache entry (kind ``persistence``), so an interrupted run resumes where it stopped;
diagram-distance matrices (Wasserstein, bottleneck; kind ``persistence-distance``) are cached too. Summaries
(total persistence, entropy, bars above a noise threshold, Betti curves) are computed from the cached diagrams.

Zigzag persistence
------------------
The last-token cloud of every hidden state (``capture_hidden_states(..., positions="last")``, default 500 windows
of 32 tokens), kNN graphs (``k``), clique complexes up to dimension ``m``, Dionysus' zigzag. The bars are cached
(kind ``zigzag``) keyed by (model fingerprint, text hash, windows, window length, k, m); they are stored *with*
the ``H_m`` truncation artefacts (flagged) so that every view can choose. Everything the views show (Betti numbers,
births, ``Z_p``, ``Z̄_p``, the pruning suggestion) is cheap and recomputed from the bars: no cache needed.

The cost check (:func:`zigzag_estimate`, cached, kind ``zigzag-estimate``) counts the simplices of every layer's
complex before Dionysus runs; :func:`compute_zigzag` refuses a setting whose estimate exceeds
:data:`ZIGZAG_WARN_SECONDS` unless the caller passes ``allow_large=True`` (the page asks, the command line prints
the warning and goes on).

Minimum lifetime in layers
--------------------------
:func:`filter_bars` keeps bars alive in at least ``min_lifetime`` layers (``death_layer - birth_layer``; default 1
keeps every bar the zigzag reports). Note what the same-layer rule of the paper drops: with the index-to-layer map
``i // 2 + i % 2``, a bar with ``birth_layer == death_layer`` is a class that lives only inside one intersection
``K_{l-1} ∩ K_l`` and in no layer at all (dropped always; it changes no Betti number). A loop present only in the
middle layer of three is born at zigzag index 2 (layer 1) and dies at index 3 (layer 2): a *one-layer* bar, kept by
the same-layer rule (it is part of ``β_1`` of that layer) and dropped only by ``min_lifetime >= 2``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd

from analysis import cache
from analysis.capture.estimate import calibrated_seconds, kept_probe, machine_speed, median_seconds
from analysis.capture.hidden_states import Capture, capture_hidden_states, is_captured
from analysis.errors import InputError
from analysis.methods import persistence as ph
from analysis.methods import zigzag as zz
from analysis.model.loading import LoadedModel
from analysis.texts import Text, calibration_windows

Progress = Callable[[int, int, str], None]

__all__ = [
    "TopologyError",
    "ZigzagTooLarge",
    "ZigzagSettings",
    "ZigzagEstimate",
    "ZigzagResult",
    "ZigzagView",
    "PersistenceSettings",
    "PersistenceResult",
    "PAPER_SETTINGS",
    "ZIGZAG_WARN_SECONDS",
    "check_zigzag_settings",
    "last_token_capture",
    "zigzag_params",
    "zigzag_estimate",
    "zigzag_is_cached",
    "zigzag_estimate_is_cached",
    "compute_zigzag",
    "filter_bars",
    "REPRESENTATIVE_TOP",
    "ZigzagRepresentatives",
    "zigzag_representatives",
    "representatives_are_cached",
    "window_texts",
    "layer_projection",
    "describe_zigzag",
    "zigzag_layers_frame",
    "zigzag_suggestion",
    "persistence_params",
    "check_persistence_settings",
    "layer_persistence",
    "persistence_is_cached",
    "persistence_summary",
    "betti_curves",
    "distance_matrix",
    "distance_matrix_is_cached",
    "estimate_persistence_seconds",
    "persistence_seconds_now",
    "cloud_size",
]

#: What Gardinazzi et al. (arXiv 2410.11042) used, for captions and the command line's help.
PAPER_SETTINGS = {
    "k": "scanned 1-15 (figures mostly k = 4..10)",
    "m": 4,
    "alpha": 0.0,
    "rule": "remove the layers with Z̄_1(l) >= 0.9 · max (also 0.8)",
    "cloud": "last token of 500 prompts x 16 subsets; normalised input of each block's MLP and the final norm",
}

#: Estimated zigzag seconds above which :func:`compute_zigzag` asks for ``allow_large=True`` (the page shows a
#: warning and a "run anyway" box). With FastZigzag on 2 idle cores the default setting (500 windows x 31 states,
#: k = 4, m = 3) takes 0.7 s, m = 4 1.0 s, 1000 windows 2.3 s and 2000 windows 7.9 s; the time grows like
#: events ** 1.70 (:mod:`analysis.methods.zigzag`) and the estimate follows the machine's measured speed, so a run is asked
#: about only when it is large for this machine now.
ZIGZAG_WARN_SECONDS = 60.0

#: Tokens per forward pass while capturing last-token clouds: on a loaded 2-core machine batches of 8 windows of
#: 32 tokens were 5-7x slower than batches of 2048 tokens (thread synchronisation over many small operations).
CAPTURE_TOKENS_PER_BATCH = 2048


class TopologyError(InputError):
    """A topology setting a user chose cannot be computed; the message says why and what to change."""


class ZigzagTooLarge(TopologyError):
    """The estimated zigzag is too big to run without asking; ``estimate`` says how big."""

    def __init__(self, estimate: "ZigzagEstimate"):
        super().__init__(estimate.warning())
        self.estimate = estimate


# ----------------------------------------------------------------------------------------------------------------------
# Zigzag settings, capture and cost


@dataclass(frozen=True)
class ZigzagSettings:
    """What the zigzag bars depend on besides the model and the text."""

    n_windows: int = 500
    window_len: int = 32
    k: int = 4
    max_dim: int = 3  # m: clique dimension

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "ZigzagSettings":
        """Raise :class:`TopologyError` for a setting that cannot run (before anything is captured)."""
        for name in ("n_windows", "window_len", "k", "max_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise TopologyError(f"{name} must be an integer, got {v!r}")
        if self.k < 1:
            raise TopologyError(f"k (nearest neighbours) must be at least 1, got {self.k}")
        if not 1 <= self.max_dim <= zz.MAX_CLIQUE_DIM:
            raise TopologyError(
                f"the clique dimension m must be between 1 and {zz.MAX_CLIQUE_DIM} (the paper uses 4); got "
                f"{self.max_dim}. Above 4 the number of simplices explodes."
            )
        if self.n_windows < self.k + 1:
            raise TopologyError(
                f"a k-nearest-neighbour graph with k = {self.k} needs at least k + 1 = {self.k + 1} windows (one "
                f"point per window); got {self.n_windows}. Use more windows or a smaller k."
            )
        if self.window_len < 2:
            raise TopologyError(f"windows need at least 2 tokens, got {self.window_len}")
        return self


def check_zigzag_settings(settings: ZigzagSettings, lm: LoadedModel | None = None, text: Text | None = None) -> None:
    """Validate ``settings`` and, given a model and a text, that the text has enough tokens for the windows.

    Raises :class:`TopologyError` (bad k, m or window count) or :class:`TextError` (text too short: the message says
    how many tokens it has and how many windows fit).
    """
    settings.validate()
    if lm is not None and text is not None:
        calibration_windows(lm.tokenizer, text, settings.n_windows, settings.window_len)


def last_token_capture(
    lm: LoadedModel, text: Text, n_windows: int, window_len: int, progress: Progress | None = None
) -> Capture:
    """The last position of every hidden state for the first ``n_windows`` windows of ``window_len`` tokens (cached;
    ``[n_states, n_windows, 1, width]``, 500 x 32 on the default model: 36 MB)."""
    batch = max(8, CAPTURE_TOKENS_PER_BATCH // max(1, window_len))
    return capture_hidden_states(lm, text, n_windows, window_len, positions="last", batch_size=batch, progress=progress)


def last_token_is_captured(lm: LoadedModel, text: Text, n_windows: int, window_len: int) -> bool:
    return is_captured(lm, text, n_windows, window_len, positions="last")


def _last_token_clouds(cap: Capture) -> list[np.ndarray]:
    return [cap.last_token_cloud(s) for s in cap.state_ids]


def zigzag_params(lm: LoadedModel, text: Text, settings: ZigzagSettings) -> dict:
    """The cache key of a zigzag: model fingerprint, text hash, windows, window length, k, m."""
    return {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(settings.n_windows),
        "window_len": int(settings.window_len),
        "k": int(settings.k),
        "m": int(settings.max_dim),
        "v": 1,
    }


@dataclass
class ZigzagEstimate:
    """Simplex counts of every layer's complex and the zigzag's events, counted before Dionysus runs."""

    per_layer: np.ndarray  # [n_layers, m + 1] simplices of each dimension in each layer
    exact: bool
    n_distinct: int | None
    n_events: int | None
    seconds: float  # estimated Dionysus time
    settings: ZigzagSettings

    @property
    def total(self) -> int:
        return int(self.per_layer.sum())

    @property
    def too_large(self) -> bool:
        return (not self.exact) or self.seconds > ZIGZAG_WARN_SECONDS

    def describe(self) -> str:
        s = self.settings
        events = (
            f"{self.n_events:,} zigzag events, {self.n_distinct:,} distinct simplices"
            if self.exact
            else "more than 200,000 cliques of one dimension in some layer (counts extrapolated)"
        )
        return (
            f"{s.n_windows} points x {self.per_layer.shape[0]} states, k = {s.k}, m = {s.max_dim}: "
            f"{self.total:,} simplices summed over the layers, {events}; estimated {self.seconds:,.0f} s in "
            "graphs, cliques and FastZigzag (expect a factor of 2-3 either way on a busy machine)"
        )

    def warning(self) -> str:
        s = self.settings
        return (
            f"This zigzag is large: {self.describe()}. Lower k or m (the paper's m = 4 is the most expensive), "
            f"use fewer windows, or run it anyway (it is cached afterwards). Current warning limit: "
            f"{ZIGZAG_WARN_SECONDS:.0f} s, k = {s.k}, m = {s.max_dim}."
        )


def zigzag_estimate(
    lm: LoadedModel, text: Text, settings: ZigzagSettings, progress: Progress | None = None
) -> ZigzagEstimate:
    """Count the simplices of the setting's complexes (captures the clouds first if needed); cached."""
    settings.validate()
    if not zigzag_estimate_is_cached(lm, text, settings):
        check_zigzag_settings(settings, lm, text)

    def compute():
        cap = last_token_capture(lm, text, settings.n_windows, settings.window_len, progress=progress)
        if progress:
            progress(0, 1, "counting simplices")
        count = zz.estimate_simplex_count(_last_token_clouds(cap), settings.k, settings.max_dim)
        return (
            {"per_layer": count.per_layer},
            {"exact": count.exact, "n_distinct": count.n_distinct, "n_events": count.n_events},
        )

    arrays, data, _ = cache.cached("zigzag-estimate", zigzag_params(lm, text, settings), compute)
    count = zz.SimplexCount(np.asarray(arrays["per_layer"]), bool(data["exact"]), data["n_distinct"], data["n_events"])

    return ZigzagEstimate(
        count.per_layer,
        count.exact,
        count.n_distinct,
        count.n_events,
        zz.estimate_zigzag_seconds(count) * machine_speed("rips")["factor"],
        settings,
    )


def _estimate_and_complexes(
    lm: LoadedModel, text: Text, settings: ZigzagSettings, progress: Progress | None = None
) -> tuple[ZigzagEstimate, list | None]:
    """:func:`zigzag_estimate` (written to its cache) and the complexes built for it (None when not exact)."""
    holder: dict = {}

    def compute():
        cap = last_token_capture(lm, text, settings.n_windows, settings.window_len, progress=progress)
        t0 = time.perf_counter()
        count, complexes = zz.count_and_complexes(_last_token_clouds(cap), settings.k, settings.max_dim)
        holder["complexes"], holder["seconds"] = complexes, time.perf_counter() - t0
        return (
            {"per_layer": count.per_layer},
            {"exact": count.exact, "n_distinct": count.n_distinct, "n_events": count.n_events},
        )

    cache.cached("zigzag-estimate", zigzag_params(lm, text, settings), compute)
    return zigzag_estimate(lm, text, settings), holder.get("complexes")


def zigzag_is_cached(lm: LoadedModel, text: Text, settings: ZigzagSettings) -> bool:
    return cache.entry("zigzag", zigzag_params(lm, text, settings)).exists()


def zigzag_estimate_is_cached(lm: LoadedModel, text: Text, settings: ZigzagSettings) -> bool:
    return cache.entry("zigzag-estimate", zigzag_params(lm, text, settings)).exists()


# ----------------------------------------------------------------------------------------------------------------------
# The zigzag bars

_BAR_INT_COLUMNS = ["dim", "birth_index", "death_index", "birth_layer", "death_layer"]


@dataclass
class ZigzagResult:
    """The zigzag bars of one setting (same-layer bars already dropped; ``H_m`` artefacts kept and flagged)."""

    bars: pd.DataFrame  # zigzag.BAR_COLUMNS
    simplices: np.ndarray  # [n_layers, m + 1] simplices of each dimension per layer
    settings: ZigzagSettings
    info: dict  # n_layers, n_simplices, n_events, n_same_layer_dropped, n_top_dim_bars, seconds, ...
    outcome: cache.CacheOutcome | None = None

    @property
    def n_layers(self) -> int:
        return int(self.info["n_layers"])

    @property
    def max_dim(self) -> int:
        return int(self.settings.max_dim)


def compute_zigzag(
    lm: LoadedModel,
    text: Text,
    settings: ZigzagSettings | None = None,
    progress: Progress | None = None,
    allow_large: bool = False,
    refresh: bool = False,
) -> ZigzagResult:
    """The zigzag bars of the last-token clouds of ``text`` on ``lm`` (cached; a rerun reads the cache).

    Before a first computation the simplices are counted (:func:`zigzag_estimate`; the complexes built for the count
    feed the zigzag, so the graphs and cliques are built once); a setting estimated above
    :data:`ZIGZAG_WARN_SECONDS` raises :class:`ZigzagTooLarge` unless ``allow_large``. Raises
    :class:`TopologyError` / :class:`TextError` for settings that cannot run (see :func:`check_zigzag_settings`).
    """
    settings = (settings or ZigzagSettings()).validate()
    params = zigzag_params(lm, text, settings)
    e = cache.entry("zigzag", params)
    built: dict = {}
    if not (e.exists() and not refresh):
        check_zigzag_settings(settings, lm, text)
        if zigzag_estimate_is_cached(lm, text, settings):
            estimate = zigzag_estimate(lm, text, settings, progress=progress)
        else:  # count and build once: the complexes of the count feed the zigzag below
            t_build = time.perf_counter()
            estimate, built["complexes"] = _estimate_and_complexes(lm, text, settings, progress)
            built["seconds"] = time.perf_counter() - t_build
        if estimate.too_large and not allow_large:
            raise ZigzagTooLarge(estimate)

    def compute():
        t0 = time.perf_counter()
        cap = last_token_capture(lm, text, settings.n_windows, settings.window_len, progress=progress)
        estimate = zigzag_estimate(lm, text, settings)
        complexes = built.get("complexes")
        if complexes is not None:
            bars = zz.zigzag_bars_of_complexes(complexes, settings.max_dim, progress=progress, keep_top_dim=True)
            bars.attrs.update(k=int(settings.k), n_points=int(settings.n_windows))
        else:
            bars = zz.zigzag_bars(
                _last_token_clouds(cap), k=settings.k, max_dim=settings.max_dim, progress=progress, keep_top_dim=True
            )
        seconds = time.perf_counter() - t0 + built.get("seconds", 0.0)
        info = {
            key: bars.attrs[key]
            for key in (
                "n_layers",
                "max_dim",
                "n_simplices",
                "n_events",
                "n_same_layer_dropped",
                "n_top_dim_bars",
                "build_seconds",
                "zigzag_seconds",
                "k",
                "n_points",
                "engine",
            )
        }
        info.update(
            seconds=seconds,
            estimated_seconds=estimate.seconds,
            model_name=lm.name,
            text_name=text.label,
            last_state_is_normed=bool(cap.meta.get("last_state_is_normed", False)),
        )
        table = bars[_BAR_INT_COLUMNS].to_numpy(np.int64)
        flags = bars["truncation_artefact"].to_numpy(bool)
        return {"bars": table, "artefact": flags, "simplices": estimate.per_layer}, info

    arrays, info, outcome = cache.cached("zigzag", params, compute, refresh=refresh)
    raw = np.asarray(arrays["bars"], dtype=np.int64).reshape(-1, len(_BAR_INT_COLUMNS))
    bars = pd.DataFrame(raw, columns=_BAR_INT_COLUMNS)
    bars["truncation_artefact"] = np.asarray(arrays["artefact"], dtype=bool)
    return ZigzagResult(bars[zz.BAR_COLUMNS], np.asarray(arrays["simplices"]), settings, info, outcome)


def filter_bars(
    bars: pd.DataFrame, min_lifetime: int = 1, include_top_dim: bool = False, max_dim: int | None = None
) -> pd.DataFrame:
    """Bars alive in at least ``min_lifetime`` layers, without the ``H_m`` truncation artefacts unless asked.

    The lifetime in layers is ``death_layer - birth_layer`` (a bar is alive in layers ``birth_layer .. death_layer
    - 1``). ``min_lifetime = 1`` keeps every bar of the zigzag (same-layer bars, lifetime 0, are dropped by the
    zigzag itself); ``2`` drops e.g. a loop that exists in one layer only. ``max_dim`` (if given) marks the
    artefact dimension when the frame has no ``truncation_artefact`` column.
    """
    if int(min_lifetime) != min_lifetime or min_lifetime < 1:
        raise TopologyError(f"the minimum lifetime is a number of layers >= 1, got {min_lifetime!r}")
    keep = (bars["death_layer"] - bars["birth_layer"]) >= int(min_lifetime)
    if not include_top_dim:
        if "truncation_artefact" in bars:
            keep &= ~bars["truncation_artefact"].astype(bool)
        elif max_dim is not None:
            keep &= bars["dim"] < max_dim
    return bars[keep].reset_index(drop=True)


@dataclass
class ZigzagView:
    """Everything the zigzag page and the command line show, for one choice of ``p``, ``α`` and filters."""

    bars: pd.DataFrame  # the bars after :func:`filter_bars`
    n_layers: int
    dims: list[int]  # meaningful homology dimensions 0..m-1
    betti: np.ndarray  # [len(dims), n_layers]
    p: int
    alpha: float
    min_lifetime: int
    births: np.ndarray  # births' relative frequency of dimension p, per layer
    Z: np.ndarray  # Z_p [n_layers, n_layers]
    zbar: np.ndarray  # averaged Z̄_p(l)
    suggestions: dict[float, dict] = field(default_factory=dict)  # fraction -> {"states", "blocks", "ranges"}


def describe_zigzag(
    result: ZigzagResult,
    p: int = 1,
    alpha: float = 0.0,
    min_lifetime: int = 1,
    fractions: Sequence[float] = (0.9, 0.8),
    include_top_dim: bool = False,
) -> ZigzagView:
    """Betti numbers, births, ``Z_p``, ``Z̄_p`` and the suggestions at ``fractions`` of the maximum (cheap).

    ``p`` must be below ``m`` (``H_m`` bars are truncation artefacts) unless ``include_top_dim``. Suggestions: the
    states with ``Z̄_p >= fraction · max`` (never state 0 nor the last state), as blocks (state ``s`` is the output
    of block ``s - 1``) and as ``[start, end)`` ranges.
    """
    m = result.max_dim
    top = m if include_top_dim else m - 1
    if int(p) != p or not 0 <= p <= top:
        raise TopologyError(
            f"the homology dimension p must be between 0 and m - 1 = {m - 1} (H_{m} bars are artefacts of cutting "
            f"the clique complex at dimension m = {m}); got {p}"
        )
    if not np.isfinite(alpha):
        raise TopologyError(f"alpha must be a finite number, got {alpha}")
    n = result.n_layers
    bars = filter_bars(result.bars, min_lifetime, include_top_dim)
    dims = list(range(top + 1))
    betti = zz.betti_per_layer(bars, n, dims)
    Z = zz.interlayer_persistence(bars, int(p), n)
    zbar = zz.averaged_persistence(Z, float(alpha))
    view = ZigzagView(
        bars=bars,
        n_layers=n,
        dims=dims,
        betti=betti,
        p=int(p),
        alpha=float(alpha),
        min_lifetime=int(min_lifetime),
        births=zz.birth_frequency(bars, n, int(p)),
        Z=Z,
        zbar=zbar,
    )
    for f in fractions:
        states = zz.suggest_states(zbar, float(f))
        blocks = zz.states_to_blocks(states) if states.size else np.zeros(0, np.int64)
        view.suggestions[float(f)] = {
            "states": states.tolist(),
            "blocks": blocks.tolist(),
            "ranges": zz.blocks_to_ranges(blocks),
        }
    return view


def zigzag_layers_frame(result: ZigzagResult, view: ZigzagView) -> pd.DataFrame:
    """One row per hidden state: Betti numbers, births, ``Z̄``, simplex counts, suggestion flags."""
    n = result.n_layers
    frame = pd.DataFrame({"state": np.arange(n), "block": [pd.NA] + list(range(n - 1))})
    frame["block"] = frame["block"].astype("Int64")
    for row, d in enumerate(view.dims):
        frame[f"betti_{d}"] = view.betti[row]
    if "betti_1" not in frame:  # m = 1: H1 is the truncated dimension, no meaningful loops
        frame["betti_1"] = 0
    frame[f"births_{view.p}"] = view.births
    frame[f"z{view.p}_mean"] = view.zbar
    if view.p != 1:
        if 1 in view.dims:
            frame["z1_mean"] = zz.averaged_persistence(zz.interlayer_persistence(view.bars, 1, n), view.alpha)
        else:
            frame["z1_mean"] = 0.0
    for d in range(result.simplices.shape[1]):
        frame[f"simplices_{d}"] = result.simplices[:, d]
    for f, s in view.suggestions.items():
        frame[f"suggested_{f:g}"] = frame["state"].isin(s["states"])
    return frame


def zigzag_suggestion(
    result: ZigzagResult, view: ZigzagView, lm: LoadedModel | None = None, text: Text | None = None
) -> dict:
    """The suggestion as JSON: blocks to remove at each fraction (the first one is ``remove_blocks``), settings."""
    fractions = list(view.suggestions)
    first = view.suggestions[fractions[0]] if fractions else {"blocks": []}
    out = {
        "method": "zigzag persistence (Gardinazzi et al., arXiv 2410.11042), inter-layer persistence Z̄_p",
        "rule": f"remove the blocks whose output state has Z̄_{view.p}(l) >= fraction · max over all states; never "
        "state 0 (embeddings) nor the last state; state s is the output of block s - 1",
        "remove_blocks": first["blocks"],
        "thresholds": {
            f"{f:g}": {
                "fraction": f,
                "states": s["states"],
                "blocks": s["blocks"],
                "ranges": [list(r) for r in s["ranges"]],
            }
            for f, s in view.suggestions.items()
        },
        "settings": {
            **result.settings.to_dict(),
            "p": view.p,
            "alpha": view.alpha,
            "min_lifetime_layers": view.min_lifetime,
            "cloud": "residual stream, last token of each window",
            "metric": "Euclidean kNN graph, symmetrised",
        },
        "zbar": [float(v) for v in view.zbar],
        "max_zbar": float(np.max(view.zbar)) if view.zbar.size else 0.0,
        "zigzag": {
            k: result.info.get(k)
            for k in (
                "n_layers",
                "n_simplices",
                "n_events",
                "n_same_layer_dropped",
                "n_top_dim_bars",
                "zigzag_seconds",
                "seconds",
                "estimated_seconds",
            )
        },
        "n_bars": int(len(view.bars)),
    }
    if lm is not None:
        out["model"] = {"name": lm.name, "fingerprint": lm.fingerprint, "source": lm.spec.source}
    if text is not None:
        out["text"] = text.describe()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# What a bar is made of: its windows, layer by layer

#: Bars whose representatives are computed, per homology dimension (the longest first).
REPRESENTATIVE_TOP = {0: 10, 1: 20}


def window_texts(lm: LoadedModel, text: Text, n_windows: int, window_len: int) -> list[str]:
    """The text of every window of a last-token capture; the point of a window is its last token, shown as
    ``…text⟦last token⟧``."""
    windows = calibration_windows(lm.tokenizer, text, n_windows, window_len)
    out = []
    for row in windows.tolist():
        body = lm.tokenizer.decode(row[:-1])
        out.append(f"{body}⟦{lm.tokenizer.decode(row[-1:])}⟧".replace("\n", " ⏎ "))
    return out


@dataclass
class ZigzagRepresentatives:
    """Cycle representatives of the longest zigzag bars (see :func:`analysis.methods.zigzag.zigzag_representatives`)."""

    bars: pd.DataFrame  # bar, dim, birth_index, death_index, birth_layer, death_layer, lifetime, layers_shown
    cells: pd.DataFrame  # zigzag.CELL_COLUMNS
    unverified: list[tuple[int, int]]
    texts: list[str]  # one per window (point)
    settings: ZigzagSettings
    seconds: float

    def bar(self, bar: int) -> pd.Series:
        return self.bars.set_index("bar").loc[int(bar)]

    def layers(self, bar: int) -> list[int]:
        """Layers in which the bar has a (verified) representative."""
        c = self.cells[(self.cells["bar"] == int(bar)) & (self.cells["role"] == "cycle")]
        return sorted(int(x) for x in c["layer"].unique())

    def edges(self, bar: int, layer: int) -> np.ndarray:
        c = self.cells
        sel = c[(c["bar"] == int(bar)) & (c["layer"] == int(layer)) & (c["role"] == "cycle") & (c["simplex_dim"] == 1)]
        return sel[["v0", "v1"]].to_numpy(np.int64).reshape(-1, 2)

    def windows(self, bar: int, layer: int) -> pd.DataFrame:
        """The windows of the bar at ``layer``: one row per window with ``window, role, degree, layers, n_layers,
        text``. ``role``: ``cycle`` (a vertex of the loop / a vertex of the H0 representative) or ``component`` (in
        the cluster of an H0 bar). ``layers``: the bar's layers in which this window is part of it (same role)."""
        c = self.cells[self.cells["bar"] == int(bar)]
        here = c[c["layer"] == int(layer)]
        rows = []
        dim = int(self.bar(bar)["dim"])
        roles = ["cycle"] if dim == 1 else ["cycle", "component"]
        seen: set[int] = set()
        for role in roles:
            part = here[here["role"] == role]
            verts = np.concatenate([part["v0"].to_numpy(), part.loc[part["v1"] >= 0, "v1"].to_numpy()])
            degree = pd.Series(verts).value_counts()
            of_role = c[c["role"] == role]
            for w in sorted(int(v) for v in degree.index):
                if w in seen:
                    continue
                seen.add(w)
                in_layers = sorted(
                    int(x) for x in of_role[(of_role["v0"] == w) | (of_role["v1"] == w)]["layer"].unique()
                )
                rows.append(
                    {
                        "window": w,
                        "role": "representative" if role == "cycle" else "cluster",
                        "degree": int(degree[w]) if dim == 1 else 0,
                        "layers": _ranges_text(in_layers),
                        "n_layers": len(in_layers),
                        "text": self.texts[w] if w < len(self.texts) else "",
                    }
                )
        return pd.DataFrame(rows, columns=["window", "role", "degree", "layers", "n_layers", "text"])

    def frame(self) -> pd.DataFrame:
        """Everything, for the CSV: one row per simplex of a representative (or cluster vertex) per layer, with the
        bar's interval and the windows' texts."""
        f = self.cells.merge(self.bars[["bar", "dim", "birth_layer", "death_layer", "lifetime"]], on="bar")
        texts = np.asarray(self.texts + [""], dtype=object)
        f["text_v0"] = texts[f["v0"].to_numpy()]
        f["text_v1"] = texts[np.where(f["v1"].to_numpy() >= 0, f["v1"].to_numpy(), len(self.texts))]
        return f[
            [
                "bar",
                "dim",
                "birth_layer",
                "death_layer",
                "lifetime",
                "layer",
                "role",
                "simplex_dim",
                "v0",
                "v1",
                "text_v0",
                "text_v1",
            ]
        ].rename(columns={"v0": "window_v0", "v1": "window_v1"})

    def describe(self, bar: int) -> str:
        b = self.bar(bar)
        alive = f"h{int(b['birth_layer'])}–h{int(b['death_layer']) - 1}"
        return f"H{int(b['dim'])} bar {int(bar)}: alive in {alive} ({int(b['lifetime'])} layers)"


def layer_projection(
    lm: LoadedModel, text: Text, settings: ZigzagSettings, layer: int, method: str = "pca"
) -> np.ndarray:
    """2-D coordinates of one layer's last-token cloud (the zigzag's points), PCA or UMAP
    (:mod:`analysis.methods.projection`, seed 0); cached, kind ``zigzag-projection``."""
    from analysis.methods.projection import pca_2d3d, umap_embed

    if method not in ("pca", "umap"):
        raise TopologyError(f"projection must be 'pca' or 'umap', got {method!r}")

    def compute():
        cap = last_token_capture(lm, text, settings.n_windows, settings.window_len)
        X = np.asarray(cap.last_token_cloud(cap.state_ids[int(layer)]), dtype=np.float32)
        if method == "pca":
            coords, ratio = pca_2d3d(X, 2)
            return {"coords": coords}, {"explained": [float(r) for r in ratio]}
        return {"coords": umap_embed(X, 2, n_neighbors=min(15, X.shape[0] - 1))}, {}

    params = {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(settings.n_windows),
        "window_len": int(settings.window_len),
        "layer": int(layer),
        "method": method,
        "v": 1,
    }
    arrays, _, _ = cache.cached("zigzag-projection", params, compute)
    return np.asarray(arrays["coords"], dtype=np.float32)


def _ranges_text(layers: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"h3–h5, h9"``."""
    if not layers:
        return ""
    parts, start, prev = [], layers[0], layers[0]
    for x in list(layers[1:]) + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"h{start}" if start == prev else f"h{start}–h{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(parts)


def representatives_params(lm: LoadedModel, text: Text, settings: ZigzagSettings) -> dict:
    return {**zigzag_params(lm, text, settings), "top": {str(d): c for d, c in REPRESENTATIVE_TOP.items()}, "rep_v": 1}


def representatives_are_cached(lm: LoadedModel, text: Text, settings: ZigzagSettings) -> bool:
    return cache.entry("zigzag-representatives", representatives_params(lm, text, settings)).exists()


def zigzag_representatives(
    lm: LoadedModel, text: Text, settings: ZigzagSettings | None = None, progress: Progress | None = None
) -> ZigzagRepresentatives:
    """Representatives of the :data:`REPRESENTATIVE_TOP` longest bars of each meaningful dimension, in every layer
    they are alive in (cached, kind ``zigzag-representatives``). Runs FastZigzag again with the reduction's ``V``
    matrix (about 2-3x the plain run on the default setting). A plain function: ``progress`` gets stages (total 0)
    and one step per bar, so a background job can show it as it is."""
    settings = (settings or ZigzagSettings()).validate()
    top = {d: c for d, c in REPRESENTATIVE_TOP.items() if d < settings.max_dim}

    def compute():
        check_zigzag_settings(settings, lm, text)
        cap = last_token_capture(lm, text, settings.n_windows, settings.window_len, progress=progress)
        t0 = time.perf_counter()
        bars, cells = zz.representatives_of_clouds(
            _last_token_clouds(cap), settings.k, settings.max_dim, top=top, progress=progress
        )
        roles = cells["role"].map({"cycle": 0, "component": 1}).to_numpy(np.int64)
        table = np.c_[
            cells[["bar", "layer"]].to_numpy(np.int64), roles, cells[["simplex_dim", "v0", "v1"]].to_numpy(np.int64)
        ].reshape(-1, 6)
        return (
            {"bars": bars.to_numpy(np.int64).reshape(-1, len(bars.columns)), "cells": table},
            {
                "bar_columns": list(bars.columns),
                "unverified": [list(x) for x in cells.attrs["unverified"]],
                "seconds": time.perf_counter() - t0,
            },
        )

    arrays, data, _ = cache.cached("zigzag-representatives", representatives_params(lm, text, settings), compute)
    bars = pd.DataFrame(
        np.asarray(arrays["bars"], dtype=np.int64).reshape(-1, len(data["bar_columns"])), columns=data["bar_columns"]
    )
    raw = np.asarray(arrays["cells"], dtype=np.int64).reshape(-1, 6)
    cells = pd.DataFrame(raw, columns=zz.CELL_COLUMNS)
    cells["role"] = np.where(raw[:, 2] == 0, "cycle", "component")
    texts = window_texts(lm, text, settings.n_windows, settings.window_len)
    return ZigzagRepresentatives(
        bars, cells, [tuple(x) for x in data["unverified"]], texts, settings, float(data["seconds"])
    )


# ----------------------------------------------------------------------------------------------------------------------
# Per-layer persistence

CloudKind = Literal["all", "last"]


@dataclass(frozen=True)
class PersistenceSettings:
    """Which cloud, which distance, how many points, which dimensions."""

    cloud: CloudKind = "all"
    metric: ph.Metric = "euclidean"
    n_points: int = 300
    max_dim: int = 1
    seed: int = 0
    last_windows: int = 500  # the last-token cloud: windows of the workspace's text (same capture as the zigzag)
    last_window_len: int = 32
    #: all-token cloud only: also leave out the first ``drop_first`` positions of every window (the attention
    #: sink, whose norm can be ~100x the others' and squash every other bar); the page defaults to 1
    drop_first: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


#: Largest subsample accepted per homology dimension (the estimate for more is minutes per state).
MAX_POINTS = {1: 3000, 2: 1000}


def check_persistence_settings(s: PersistenceSettings) -> PersistenceSettings:
    if s.cloud not in ("all", "last"):
        raise TopologyError(f"cloud must be 'all' (all-token) or 'last' (last-token), got {s.cloud!r}")
    if s.metric not in ("euclidean", "cosine"):
        raise TopologyError(f"metric must be 'euclidean' or 'cosine', got {s.metric!r}")
    if s.max_dim not in MAX_POINTS:
        raise TopologyError(f"homology up to dimension 1 (H0, H1) or 2 (H0, H1, H2); got {s.max_dim}")
    if not 3 <= s.n_points <= MAX_POINTS[s.max_dim]:
        raise TopologyError(
            f"the subsample must have between 3 and {MAX_POINTS[s.max_dim]} points for "
            f"max_dim = {s.max_dim}; got {s.n_points}"
        )
    if s.drop_first < 0:
        raise TopologyError(f"drop_first must be 0 or more, got {s.drop_first}")
    if s.cloud == "last" and (s.last_windows < 3 or s.last_window_len < 2):
        raise TopologyError("the last-token cloud needs at least 3 windows of at least 2 tokens")
    return s


def persistence_params(ws, s: PersistenceSettings) -> dict:
    """Cache key of one setting's diagrams: the cloud's source (workspace calibration or last-token windows)."""
    common = {"metric": s.metric, "n_points": int(s.n_points), "max_dim": int(s.max_dim), "seed": int(s.seed), "v": 1}
    if s.cloud == "all":
        extra = {"drop_first": int(s.drop_first)} if s.drop_first else {}  # 0 keeps the earlier cache keys
        return {**ws.key(), "cloud": "all", **common, **extra}
    return {
        "model": ws.lm.fingerprint,
        "text": ws.text.sha256,
        "cloud": "last",
        "windows": int(s.last_windows),
        "window_len": int(s.last_window_len),
        **common,
    }


#: Seconds per state spent outside Rips (median distance, farthest-point subsample, cache write) when the cloud size
#: is not known; with it, ``PREPARE_SECONDS_BASE + PREPARE_SECONDS_PER_FLOP * n_cloud * n_points * width`` (the
#: subsample is ``n_points`` passes over the cloud). Measured on the shared 2-core machine under load: 0.7 s per
#: state for the all-token cloud of 32 x 128 tokens (4096 x 576, 300 points), 0.2 s for 500 last tokens.
PREPARE_SECONDS_PER_STATE = 0.2
PREPARE_SECONDS_BASE = 0.15
PREPARE_SECONDS_PER_FLOP = 8e-10


def estimate_persistence_seconds(
    s: PersistenceSettings, n_states: int, n_cloud: int | None = None, width: int | None = None
) -> float:
    """Rough time for every state on the development machine's scale: :func:`analysis.methods.persistence.
    estimate_rips_seconds` plus the preparation. Give the cloud's size (``n_cloud`` points of ``width``) for a better
    preparation estimate; :func:`persistence_seconds_now` times the preparation on this machine instead.
    """
    if n_cloud is None or width is None:
        prepare = PREPARE_SECONDS_PER_STATE
    else:
        prepare = PREPARE_SECONDS_BASE + PREPARE_SECONDS_PER_FLOP * n_cloud * min(n_cloud, s.n_points) * width
    points = min(int(s.n_points), int(n_cloud)) if n_cloud is not None else int(s.n_points)
    return n_states * (ph.estimate_rips_seconds(points, int(s.max_dim)) + prepare)


def preparation_seconds(n_cloud: int, n_points: int, width: int, metric: str = "euclidean") -> float:
    """Seconds of one state's work outside Rips (scale normalisation, farthest-point subsample), timed on this
    machine now on a random cloud of that size, with one BLAS thread as :func:`layer_persistence` runs it (the median
    of up to three within a second; kept for a while by :func:`analysis.capture.estimate.kept_probe`). The constants
    of :func:`estimate_persistence_seconds` were fitted under load and read an idle machine 2x slow."""
    from threadpoolctl import threadpool_limits

    def measure() -> float:
        X = np.random.default_rng(0).standard_normal((int(n_cloud), int(width))).astype(np.float32)

        def prepare() -> None:
            Xn, _ = ph.normalise_scale(X, seed=0)
            ph.farthest_point_subsample(Xn, min(int(n_points), int(n_cloud)), seed=0, metric=metric)

        with threadpool_limits(1):
            return median_seconds(prepare, 3, 1.0)

    key = ("persistence preparation", int(n_cloud), int(n_points), int(width), metric)
    return kept_probe(key, measure)[0]


def persistence_seconds_now(s: PersistenceSettings, n_states: int, n_cloud: int, width: int) -> float:
    """Time for every state on this machine now: Rips from its cost model scaled by the machine's measured speed
    (:func:`analysis.capture.estimate.calibrated_seconds`), plus the preparation timed now
    (:func:`preparation_seconds`)."""
    points = min(int(s.n_points), int(n_cloud))
    rips = calibrated_seconds(ph.estimate_rips_seconds(points, int(s.max_dim)))
    return n_states * (rips + preparation_seconds(n_cloud, s.n_points, width, s.metric))


def cloud_size(ws, s: PersistenceSettings) -> int:
    """Points in each state's cloud before the subsample (no capture needed)."""
    if s.cloud != "all":
        return int(s.last_windows)
    c = ws.calibration
    n = c.n_windows * max(0, c.window_len - max(c.exclude_first, int(s.drop_first)))
    return n if c.n_max is None else min(n, c.n_max)


@dataclass
class PersistenceResult:
    diagrams: list[list[np.ndarray]]  # [state][dim] -> [k, 2] (birth, death), death may be inf
    scales: np.ndarray  # median pairwise distance each cloud was divided by
    n_cloud: np.ndarray  # points in each state's cloud before subsampling
    seconds: np.ndarray  # Rips time per state (when it was computed)
    settings: PersistenceSettings
    computed: int  # states computed in this call (the rest came from the cache)

    @property
    def n_states(self) -> int:
        return len(self.diagrams)


def _cloud_capture(ws, s: PersistenceSettings, progress: Progress | None) -> Capture:
    """The capture the setting's clouds come from (captured with progress on first use; TextError if too short)."""
    if s.cloud == "all":
        c = ws.calibration
        if not ws.is_captured():  # the workspace's own capture, in bigger batches (same cache entry)
            capture_hidden_states(
                ws.lm,
                ws.text,
                c.n_windows,
                c.window_len,
                storage=c.storage,
                batch_size=max(8, CAPTURE_TOKENS_PER_BATCH // max(1, c.window_len)),
                progress=progress,
            )
        return ws.capture(progress)
    calibration_windows(ws.lm.tokenizer, ws.text, s.last_windows, s.last_window_len)  # TextError if too short
    return last_token_capture(ws.lm, ws.text, s.last_windows, s.last_window_len, progress=progress)


def _state_cloud(ws, s: PersistenceSettings, cap: Capture, state: int) -> np.ndarray:
    if s.cloud == "all":
        c = ws.calibration
        return cap.all_token_cloud(
            state, n_max=c.n_max, seed=c.seed, exclude_first=max(c.exclude_first, int(s.drop_first))
        )
    return cap.last_token_cloud(state)


def layer_persistence(
    ws, s: PersistenceSettings | None = None, progress: Progress | None = None, states: Sequence[int] | None = None
) -> PersistenceResult:
    """Rips diagrams of every hidden state (or of ``states``), each state cached on its own."""
    s = check_persistence_settings(s or PersistenceSettings())
    wanted = list(range(ws.n_states)) if states is None else [int(x) for x in states]
    base = persistence_params(ws, s)
    cap: Capture | None = None
    if not all(cache.entry("persistence", {**base, "state": st}).exists() for st in wanted):
        cap = _cloud_capture(ws, s, progress)
    diagrams, scales, n_cloud, seconds = [], [], [], []
    computed = 0
    for i, state in enumerate(wanted):
        if progress:
            progress(i, len(wanted), f"Rips persistence of h{state}")

        def compute(state=state):
            from threadpoolctl import threadpool_limits

            X = _state_cloud(ws, s, cap if cap is not None else _cloud_capture(ws, s, None), state)
            t0 = time.perf_counter()
            # one BLAS thread: the farthest-point subsample is hundreds of small matrix-vector products, 3-7x
            # slower with two threads on a busy 2-core machine (thread hand-offs); Rips is single-threaded anyway
            with threadpool_limits(1):
                res = ph.layer_diagrams(X, n_points=s.n_points, seed=s.seed, metric=s.metric, max_dim=s.max_dim)
            arrays = {f"h{d}": dgm for d, dgm in enumerate(res.diagrams)}
            return arrays, {"scale": res.scale, "n_cloud": int(X.shape[0]), "seconds": time.perf_counter() - t0}

        arrays, data, outcome = cache.cached("persistence", {**base, "state": state}, compute)
        computed += outcome.status != "hit"
        diagrams.append([np.asarray(arrays[f"h{d}"], dtype=np.float64).reshape(-1, 2) for d in range(s.max_dim + 1)])
        scales.append(data["scale"])
        n_cloud.append(data["n_cloud"])
        seconds.append(data["seconds"])
    if progress:
        progress(len(wanted), len(wanted), "Rips persistence done")
    return PersistenceResult(diagrams, np.array(scales), np.array(n_cloud), np.array(seconds), s, computed)


def persistence_is_cached(ws, s: PersistenceSettings) -> bool:
    base = persistence_params(ws, s)
    return all(cache.entry("persistence", {**base, "state": st}).exists() for st in range(ws.n_states))


def persistence_summary(result: PersistenceResult, noise: float = 0.05) -> pd.DataFrame:
    """Per state: total persistence and persistent entropy of each dimension, bar counts, bars above ``noise``.

    Lifetimes are in units of the state's median pairwise distance (the clouds are scale-normalised). Total
    persistence and entropy use the finite bars (the essential H0 bar is left out). ``h{d}_above_noise`` counts the
    bars with lifetime strictly above ``noise``.
    """
    rows = []
    for state, dgms in enumerate(result.diagrams):
        row = {"state": state}
        for d, dgm in enumerate(dgms):
            row[f"total_persistence_h{d}"] = ph.total_persistence(dgm)
            row[f"entropy_h{d}"] = ph.persistent_entropy(dgm)
            row[f"bars_h{d}"] = int(dgm.shape[0])
            row[f"h{d}_above_noise"] = ph.count_bars_above(ph.finite_bars(dgm), noise)
        row["scale"] = float(result.scales[state])
        row["cloud_points"] = int(result.n_cloud[state])
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = ["state"] + [
        c for d in range(result.settings.max_dim + 1) for c in (f"total_persistence_h{d}", f"entropy_h{d}")
    ]
    return frame[first + [c for c in frame.columns if c not in first]]


def betti_curves(diagrams: Sequence[np.ndarray], n_grid: int = 200) -> pd.DataFrame:
    """Betti curves ``β_d(t)`` of one state's diagrams on a common grid from 0 to the largest finite death."""
    finite = [ph.finite_bars(d)[:, 1] for d in diagrams]
    top = max([float(f.max()) for f in finite if f.size] + [1e-9])
    grid = np.linspace(0.0, top * 1.05, n_grid)
    out = pd.DataFrame({"t": grid})
    for d, dgm in enumerate(diagrams):
        out[f"betti_{d}"] = ph.betti_curve(dgm, grid)
    return out


def _distance_params(ws, s: PersistenceSettings, kind: str, dim: int) -> dict:
    return {**persistence_params(ws, s), "distance": kind, "dim": int(dim)}


def distance_matrix(
    ws, s: PersistenceSettings, kind: str = "wasserstein", dim: int = 1, progress: Progress | None = None
) -> np.ndarray:
    """Layer x layer matrix of diagram distances of dimension ``dim`` (cached).

    ``"wasserstein"``: 1-Wasserstein with the L∞ ground metric (GUDHI/Hera); ``"bottleneck"``: exact bottleneck
    (GUDHI). Infinite bars are dropped. Computes the diagrams first if needed.
    """
    if kind not in ("wasserstein", "bottleneck"):
        raise TopologyError(f"distance must be 'wasserstein' or 'bottleneck', got {kind!r}")
    s = check_persistence_settings(s)
    if not 0 <= dim <= s.max_dim:
        raise TopologyError(f"dimension {dim} was not computed (max_dim = {s.max_dim})")

    def compute():
        res = layer_persistence(ws, s, progress=progress)
        fin = [ph.finite_bars(d[dim]) for d in res.diagrams]
        n = len(fin)
        M = np.zeros((n, n))
        for i in range(n):
            if progress:
                progress(i, n, f"{kind} distances of H{dim}, row {i}")
            for j in range(i + 1, n):
                M[i, j] = M[j, i] = ph.diagram_distance(fin[i], fin[j], kind=kind)
        if progress:
            progress(n, n, f"{kind} distances done")
        return {"matrix": M}, {"ground_metric": "L-infinity", "order": 1}

    arrays, _, _ = cache.cached("persistence-distance", _distance_params(ws, s, kind, dim), compute)
    return np.asarray(arrays["matrix"])


def distance_matrix_is_cached(ws, s: PersistenceSettings, kind: str, dim: int) -> bool:
    return cache.entry("persistence-distance", _distance_params(ws, s, kind, dim)).exists()
