"""Intrinsic-dimension profiles on a workspace (METHODS.md §4), cached under the workspace key.

Per hidden state, the all-token cloud of the workspace (at most ``max_points`` rows, fixed seed) is divided by its
median pairwise distance, exact duplicates are removed, and the distinct rows are split into ``n_subsets`` disjoint
random subsets. On every subset: TwoNN, GRIDE (neighbours of order ``gride_k`` and ``2·gride_k``), the correlation
dimension, and the GRIDE sweep over neighbour orders ``k = 1, 2, 4, …`` (ID against scale). The profile is the mean
over subsets; the spread is their sample standard deviation (and min/max). A state whose cloud cannot be estimated
gets no value and a message in ``errors`` — never NaN on a chart. Another model, or a pruned variant, is profiled the
same way on the same text with its own workspace (:func:`workspace_for`); :func:`depth_fraction` puts two profiles on
one axis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.cache import CacheOutcome
from analysis.capture.workspace import Workspace
from analysis.errors import InputError
from analysis.methods import intrinsic_dimension as idm
from analysis.methods.clouds import dedupe_rows, normalise_scale, subsample_indices
from analysis.model.loading import LoadedModel
from analysis.profiles.avss import Progress

ID_ESTIMATORS = ("twonn", "gride", "corr")


ID_LABELS = {"twonn": "TwoNN", "gride": "GRIDE", "corr": "correlation dimension"}


SWEEP_KS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class IDSettings:
    """What an ID profile depends on besides the workspace.

    The headline value of every estimator is its estimate on the whole distinct cloud of each state (what dadapy
    and scikit-dimension return for that cloud). The band is the spread over disjoint random subsets: ``n_subsets``
    near-equal parts, or, when ``subset_size`` is given, ``n_distinct // subset_size`` parts of exactly that many
    points (the rest left out of the band). TwoNN and GRIDE depend on the sample size (it sets the scale they
    probe), so subsets of 1024 points read higher than the whole cloud of 4096: the band shows that dependence,
    the GRIDE sweep over neighbour order shows it as a scale axis.
    """

    n_subsets: int = 4
    max_points: int | None = 4096  # rows of each state's cloud used (subsampled with ``seed``); None = all
    seed: int = 0
    gride_k: int = 4
    sweep_ks: tuple[int, ...] = SWEEP_KS
    subset_size: int | None = None  # points per subset of the band; None = n_distinct // n_subsets

    def __post_init__(self) -> None:
        if self.n_subsets < 1:
            raise InputError(f"at least one subset is needed, got {self.n_subsets}")
        if self.subset_size is not None and self.subset_size < idm.MIN_POINTS:
            raise InputError(f"subsets need at least {idm.MIN_POINTS} points, got {self.subset_size}")
        if self.max_points is not None and self.max_points < idm.MIN_POINTS:
            raise InputError(f"max_points must be at least {idm.MIN_POINTS}, got {self.max_points}")
        if self.gride_k < 1 or not self.sweep_ks or min(self.sweep_ks) < 1:
            raise InputError("GRIDE neighbour orders must be positive")

    def cache_params(self) -> dict:
        return {"v": 2, **asdict(self), "sweep_ks": list(self.sweep_ks)}

    def parts(self, n: int) -> int:
        """Number of disjoint subsets of ``n`` distinct points for the band."""
        return max(1, n // self.subset_size) if self.subset_size is not None else self.n_subsets


@dataclass
class IDProfile:
    """The ID-against-depth profile of one model on one workspace.

    ``table``: one row per hidden state with ``state, depth, n_points, n_distinct, scale, subset_size`` and per
    estimator ``id_<e>`` (the estimate on the whole distinct cloud: the headline), ``id_<e>_subset_mean``,
    ``id_<e>_std``, ``id_<e>_min``, ``id_<e>_max`` (over the disjoint subsets of ``subset_size`` points: the band;
    NaN only for states listed in ``errors``). ``subsets``: ``{estimator: [n_states, n_subsets]}``. ``sweep``: long
    table ``state, k, id, id_std, id_min, id_max, radius`` of the GRIDE sweep (``id``, ``radius``: whole cloud;
    the rest over the subsets). ``errors``: ``{state: message}``.
    """

    table: pd.DataFrame
    subsets: dict[str, np.ndarray]
    sweep: pd.DataFrame
    errors: dict[int, str]
    settings: IDSettings
    model_name: str
    n_blocks: int
    width: int
    seconds: float
    outcome: CacheOutcome

    def valid(self, estimator: str = "twonn") -> pd.DataFrame:
        """The rows with a finite value of ``estimator`` (what a chart may draw)."""
        col = f"id_{estimator}"
        return self.table[np.isfinite(self.table[col].to_numpy(dtype=float))]

    def peak(self, estimator: str = "twonn", first_state: int = 1) -> tuple[int, float] | None:
        """``(state, id)`` of the largest ID from ``first_state`` on: the end of the expansion phase.

        ``h_0`` is skipped by default: it is the embedding lookup, whose cloud holds only the distinct token
        vectors of the text (about a thousand of them), not a contextual representation.
        """
        v = self.valid(estimator)
        v = v[v["state"] >= first_state] if (v["state"] >= first_state).any() else v
        if v.empty:
            return None
        i = int(np.argmax(v[f"id_{estimator}"].to_numpy()))
        return int(v["state"].iloc[i]), float(v[f"id_{estimator}"].iloc[i])

    def final(self, estimator: str = "twonn") -> tuple[int, float] | None:
        v = self.valid(estimator)
        if v.empty:
            return None
        return int(v["state"].iloc[-1]), float(v[f"id_{estimator}"].iloc[-1])

    def shape(self, estimator: str = "twonn") -> str:
        """A one-line description of the profile over ``h_1 … h_L``: where it peaks, how far it falls after."""
        v = self.valid(estimator)
        v = v[v["state"] >= 1]
        if len(v) < 3:
            return "too few states for a profile shape"
        ids = v[f"id_{estimator}"].to_numpy()
        s0, s1 = int(v["state"].iloc[0]), int(v["state"].iloc[-1])
        first, last = float(ids[0]), float(ids[-1])
        peak_state, peak = self.peak(estimator)
        rise, fall = peak - first, peak - last
        where = f"peak {peak:.1f} at h{peak_state} (depth {peak_state / self.n_blocks:.2f})"
        if fall >= 0.1 * peak and rise >= 0.1 * peak:
            return f"expansion–contraction: {first:.1f} at h{s0} → {where} → {last:.1f} at h{s1}"
        if rise >= 0.1 * peak:
            return f"expansion without contraction: {first:.1f} at h{s0} → {where}, {last:.1f} at h{s1}"
        if fall >= 0.1 * peak:
            return f"contraction: {where} → {last:.1f} at h{s1}"
        return f"flat: between {ids.min():.1f} and {ids.max():.1f} over h{s0}…h{s1}"

    def csv_frame(self) -> pd.DataFrame:
        cols = ["state", "depth"] + [
            c
            for e in ID_ESTIMATORS
            for c in (f"id_{e}", f"id_{e}_subset_mean", f"id_{e}_std", f"id_{e}_min", f"id_{e}_max")
        ]
        cols += ["n_points", "n_distinct", "subset_size", "scale"]
        return self.table[cols]

    def subset_size_text(self) -> str:
        """``"4 disjoint subsets of 1,024 points"`` (the band's label)."""
        sizes = self.table["subset_size"].to_numpy(dtype=float)
        sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
        n = self.subsets[ID_ESTIMATORS[0]].shape[1] if self.subsets else self.settings.n_subsets
        if sizes.size == 0:
            return f"{n} disjoint subsets"
        lo, hi = int(sizes.min()), int(sizes.max())
        return f"{n} disjoint subsets of {lo:,} points" if lo == hi else f"{n} disjoint subsets of {lo:,}–{hi:,} points"


def depth_fraction(states: Sequence[int], n_blocks: int) -> np.ndarray:
    """Hidden state ``s`` at depth ``s / L`` (0 = embeddings, 1 = last state), so models of any depth align."""
    return np.asarray(states, dtype=float) / max(1, int(n_blocks))


def check_id_settings(n_cloud_points: int, settings: IDSettings) -> None:
    """Refuse settings that cannot give ``n_subsets`` subsets of at least ``MIN_POINTS`` points (a clear message)."""
    n = n_cloud_points if settings.max_points is None else min(n_cloud_points, settings.max_points)
    if settings.subset_size is not None:
        if settings.subset_size > n:
            raise InputError(
                f"subsets of {settings.subset_size} points need at least that many tokens per state; "
                f"there are {n}: use smaller subsets or more windows"
            )
        return
    if n // settings.n_subsets < idm.MIN_POINTS:
        raise InputError(
            f"{n} tokens per state cannot make {settings.n_subsets} disjoint subsets of at least {idm.MIN_POINTS} "
            f"points: use more windows, fewer subsets, or a larger point budget"
        )


def distinct_cloud(cloud: np.ndarray, settings: IDSettings) -> tuple[np.ndarray, int, float]:
    """The rows every estimate of a state sees: subsampled to ``max_points`` (``seed``), divided by the median
    pairwise distance, float32, exact duplicates removed. Returns ``(distinct rows, rows before dedupe, scale)``;
    raises ``ValueError`` with the reason on an unusable cloud."""
    cloud = np.asarray(cloud)
    n_rows = int(cloud.shape[0])
    if settings.max_points is not None and n_rows > settings.max_points:
        cloud = cloud[subsample_indices(n_rows, settings.max_points, settings.seed)]
    if cloud.ndim != 2 or cloud.shape[0] < idm.MIN_POINTS:
        raise InputError(f"the cloud has {cloud.shape[0]} points; at least {idm.MIN_POINTS} are needed")
    if not np.all(np.isfinite(cloud)):
        raise InputError("the cloud contains NaN or infinite values")
    normalised, scale = normalise_scale(cloud)
    if scale == 0.0:
        raise InputError("constant cloud: every point is the same (median pairwise distance 0); ID undefined")
    distinct = dedupe_rows(np.asarray(normalised, dtype=np.float32) + np.float32(0.0))
    return distinct, int(cloud.shape[0]), float(scale)


def _estimates(X: np.ndarray, settings: IDSettings, ks: Sequence[int]) -> tuple[dict[str, float], Any]:
    """TwoNN, GRIDE(k) and the correlation dimension of ``X`` (all its rows), and its GRIDE sweep over ``ks``,
    from one exact neighbour search."""
    n = X.shape[0]
    n_neighbours = min(n - 1, max([2, 2 * settings.gride_k] + [2 * k for k in ks]))
    if 2 * settings.gride_k > n_neighbours:
        raise InputError(f"GRIDE with k={settings.gride_k} needs {2 * settings.gride_k + 1} points per estimate")
    r = idm.knn_distances(X, n_neighbours)
    values = {
        "twonn": idm.twonn_from_knn(r),
        "gride": float(idm.gride_sweep_from_knn(r, [settings.gride_k])["id"].iloc[0]),
        "corr": idm.correlation_dimension(X, max_points=n, seed=settings.seed),
    }
    sweep = idm.gride_sweep_from_knn(r, list(ks)) if ks else None
    return values, sweep


def state_id(cloud: np.ndarray, settings: IDSettings) -> dict[str, Any]:
    """Every estimate of one state's cloud: on the whole distinct cloud (the headline) and on disjoint subsets
    (the band; see :class:`IDSettings`).

    Returns ``{"n_points", "n_distinct", "scale", "subset_size", "ks", "whole": {estimator: value},
    "sweep_whole": [n_ks], "radius_whole": [n_ks], "<estimator>": values [n_subsets], "sweep": [n_ks, n_subsets],
    "radius": [n_ks, n_subsets]}``. The correlation dimension uses every row too (no 2000-point subsample). Raises
    ``ValueError`` (with the reason) on an unusable cloud.
    """
    distinct, n_points, scale = distinct_cloud(cloud, settings)
    n = distinct.shape[0]
    n_parts = settings.parts(n)
    order = np.random.default_rng(settings.seed).permutation(n)
    if settings.subset_size is not None:
        if settings.subset_size > n:
            raise InputError(f"{n} distinct points (of {n_points}) cannot make a subset of {settings.subset_size}")
        parts = [order[i * settings.subset_size : (i + 1) * settings.subset_size] for i in range(n_parts)]
    else:
        if n // n_parts < idm.MIN_POINTS:
            raise InputError(
                f"{n} distinct points (of {n_points}) cannot make {n_parts} disjoint "
                f"subsets of at least {idm.MIN_POINTS} points"
            )
        parts = np.array_split(order, n_parts)
    smallest = min(len(p) for p in parts)
    ks = [k for k in settings.sweep_ks if 2 * k <= min(64, smallest - 1)]
    whole, sweep_whole = _estimates(distinct, settings, ks)
    out: dict[str, Any] = {
        "n_points": n_points,
        "n_distinct": int(n),
        "scale": scale,
        "ks": ks,
        "subset_size": int(smallest),
        "whole": whole,
    }
    out["sweep_whole"] = sweep_whole["id"].to_numpy() if ks else np.zeros(0)
    out["radius_whole"] = sweep_whole["radius"].to_numpy() if ks else np.zeros(0)
    values = {e: [] for e in ID_ESTIMATORS}
    sweep, radius = [], []
    for part in parts:
        v, sw = _estimates(distinct[np.sort(part)], settings, ks)
        for e in ID_ESTIMATORS:
            values[e].append(v[e])
        if ks:
            sweep.append(sw["id"].to_numpy())
            radius.append(sw["radius"].to_numpy())
    for e in ID_ESTIMATORS:
        out[e] = np.asarray(values[e], dtype=float)
    out["sweep"] = np.asarray(sweep, dtype=float).reshape(len(parts), len(ks)).T  # [n_ks, n_subsets]
    out["radius"] = np.asarray(radius, dtype=float).reshape(len(parts), len(ks)).T
    return out


def id_profile_result(
    ws: Workspace, settings: IDSettings | None = None, progress: Progress | None = None, refresh: bool = False
) -> IDProfile:
    """The ID profile of ``ws`` (its model, text and windows), cached per (workspace, settings)."""
    settings = settings or IDSettings()
    check_id_settings(ws.n_cloud_tokens(), settings)
    n_states = ws.n_states
    n_ks = len(settings.sweep_ks)
    n_cloud = ws.n_cloud_tokens() if settings.max_points is None else min(ws.n_cloud_tokens(), settings.max_points)
    width = settings.parts(n_cloud)  # most subsets any state can have (fewer distinct points: NaN columns)

    def compute():
        t0 = time.perf_counter()
        clouds = ws.cloud_reader(progress)
        arrays: dict[str, np.ndarray] = {
            "n_points": np.zeros(n_states, dtype=np.int64),
            "n_distinct": np.zeros(n_states, dtype=np.int64),
            "subset_size": np.zeros(n_states, dtype=np.int64),
            "scale": np.full(n_states, np.nan),
            "sweep": np.full((n_states, n_ks, width), np.nan),
            "radius": np.full((n_states, n_ks, width), np.nan),
            "sweep_whole": np.full((n_states, n_ks), np.nan),
            "radius_whole": np.full((n_states, n_ks), np.nan),
        }
        for e in ID_ESTIMATORS:
            arrays[f"subsets_{e}"] = np.full((n_states, width), np.nan)
            arrays[f"whole_{e}"] = np.full(n_states, np.nan)
        errors: dict[str, str] = {}
        for s in range(n_states):
            cloud = clouds[s]
            try:
                r = state_id(cloud, settings)
            except ValueError as exc:
                errors[str(s)] = str(exc)
            else:
                for key in ("n_points", "n_distinct", "scale", "subset_size"):
                    arrays[key][s] = r[key]
                m = len(r["twonn"])
                for e in ID_ESTIMATORS:
                    arrays[f"subsets_{e}"][s, :m] = r[e]
                    arrays[f"whole_{e}"][s] = r["whole"][e]
                idx = [settings.sweep_ks.index(k) for k in r["ks"]]
                arrays["sweep"][s, idx, :m] = r["sweep"]
                arrays["radius"][s, idx, :m] = r["radius"]
                arrays["sweep_whole"][s, idx] = r["sweep_whole"]
                arrays["radius_whole"][s, idx] = r["radius_whole"]
            if progress:
                progress(s + 1, n_states, f"intrinsic dimension of h{s}")
        return arrays, {
            "errors": errors,
            "seconds": time.perf_counter() - t0,
            "model_name": ws.lm.name,
            "n_blocks": ws.n_blocks,
            "width": ws.lm.width,
        }

    arrays, data, outcome = ws.result("id_profile", settings.cache_params(), compute, refresh=refresh)
    return _profile_from_arrays(arrays, data, settings, outcome)


def _profile_from_arrays(arrays, data, settings: IDSettings, outcome) -> IDProfile:
    n_blocks = int(data["n_blocks"])
    states = np.arange(n_blocks + 1)
    table = pd.DataFrame({"state": states, "depth": depth_fraction(states, n_blocks)})
    subsets = {}
    for e in ID_ESTIMATORS:
        v = np.asarray(arrays[f"subsets_{e}"], dtype=float)
        subsets[e] = v
        mean, std, lo, hi = _spread(v)
        # the headline: the whole distinct cloud (results cached before it existed fall back to the subsets' mean)
        whole = np.asarray(arrays[f"whole_{e}"], dtype=float) if f"whole_{e}" in arrays else mean.copy()
        whole[~np.isfinite(mean) & ~np.isfinite(whole)] = np.nan
        table[f"id_{e}"], table[f"id_{e}_subset_mean"] = whole, mean
        table[f"id_{e}_std"], table[f"id_{e}_min"], table[f"id_{e}_max"] = std, lo, hi
    table["n_points"] = np.asarray(arrays["n_points"])
    table["n_distinct"] = np.asarray(arrays["n_distinct"])
    table["subset_size"] = (
        np.asarray(arrays["subset_size"])
        if "subset_size" in arrays
        else np.asarray(arrays["n_distinct"]) // max(1, subsets[ID_ESTIMATORS[0]].shape[1])
    )
    table["scale"] = np.asarray(arrays["scale"], dtype=float)
    rows = []
    sweep, radius = np.asarray(arrays["sweep"], dtype=float), np.asarray(arrays["radius"], dtype=float)
    sweep_whole = np.asarray(arrays["sweep_whole"], dtype=float) if "sweep_whole" in arrays else None
    radius_whole = np.asarray(arrays["radius_whole"], dtype=float) if "radius_whole" in arrays else None
    for s in states:
        for j, k in enumerate(settings.sweep_ks):
            v = sweep[s, j]
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            head = float(sweep_whole[s, j]) if sweep_whole is not None else float(v.mean())
            rad = float(radius_whole[s, j]) if radius_whole is not None else float(np.nanmean(radius[s, j]))
            if not np.isfinite(head):
                continue
            rows.append(
                {
                    "state": int(s),
                    "k": int(k),
                    "id": head,
                    "id_std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                    "id_min": float(v.min()),
                    "id_max": float(v.max()),
                    "radius": rad,
                }
            )
    sweep_df = pd.DataFrame(rows, columns=["state", "k", "id", "id_std", "id_min", "id_max", "radius"])
    errors = {int(k): v for k, v in data.get("errors", {}).items()}
    return IDProfile(
        table=table,
        subsets=subsets,
        sweep=sweep_df,
        errors=errors,
        settings=settings,
        model_name=str(data.get("model_name", "")),
        n_blocks=n_blocks,
        width=int(data["width"]),
        seconds=float(data.get("seconds", 0.0)),
        outcome=outcome,
    )


def _spread(v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean, sample s.d., min and max over the finite entries of each row (NaN for a row without any)."""
    n = v.shape[0]
    mean, std, lo, hi = (np.full(n, np.nan) for _ in range(4))
    for i in range(n):
        row = v[i][np.isfinite(v[i])]
        if row.size:
            mean[i], lo[i], hi[i] = row.mean(), row.min(), row.max()
            std[i] = row.std(ddof=1) if row.size > 1 else 0.0
    return mean, std, lo, hi


def has_id_profile(ws: Workspace, settings: IDSettings | None = None) -> bool:
    return ws.has_result("id_profile", (settings or IDSettings()).cache_params())


def workspace_for(ws: Workspace, lm: LoadedModel) -> Workspace:
    """The same text and calibration windows as ``ws``, on another model."""
    return Workspace(lm=lm, text=ws.text, calibration=ws.calibration)
