"""Projections of one hidden state's token cloud: PCA (instant, not cached) and UMAP (cached) in 2-D or 3-D, with per
point window, position, token id, token text and token frequency for colouring and hover.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis.cache import CacheOutcome
from analysis.capture.workspace import Workspace
from analysis.errors import InputError
from analysis.methods.clouds import subsample_indices
from analysis.profiles.avss import Progress

COLOURINGS = {
    "position": "position in window",
    "window": "window",
    "frequency": "token frequency (log10 count in the calibration tokens)",
}


DEFAULT_PROJECTION_POINTS = 2000


@dataclass(frozen=True)
class ProjectionSettings:
    method: str = "pca"  # pca | umap
    n_components: int = 2
    n_points: int = DEFAULT_PROJECTION_POINTS
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    drop_first: int = 0  # also leave out the first positions of every window (the attention sink) in this view

    def __post_init__(self) -> None:
        if self.method not in ("pca", "umap"):
            raise InputError(f"unknown projection {self.method!r}; use 'pca' or 'umap'")
        if self.n_components not in (2, 3):
            raise InputError(f"projections are 2-D or 3-D, got {self.n_components}")
        if self.n_points < 4:
            raise InputError(f"a projection needs at least 4 points, got {self.n_points}")

    def cache_params(self, state: int) -> dict:
        p = {"v": 1, "state": int(state), **asdict(self)}
        if self.method == "pca":
            p.pop("n_neighbors"), p.pop("min_dist")
        return p


@dataclass
class Projection:
    """Coordinates of one state's token cloud and what each point is.

    ``points``: one row per point with ``x, y`` (and ``z`` in 3-D), ``window, position, token_id, token,
    frequency, log_frequency``. ``explained``: PCA explained-variance ratios (empty for UMAP).
    """

    state: int
    settings: ProjectionSettings
    points: pd.DataFrame
    explained: np.ndarray
    seconds: float
    outcome: CacheOutcome | None = None
    notes: list[str] = field(default_factory=list)


def token_text(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token id as readable text (decoded alone; newlines and tabs escaped, spaces shown as '·' at ends)."""
    cache: dict[int, str] = {}
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            s = tokenizer.decode([i])
            s = s.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
            cache[i] = s if s.strip() == s and s else s.replace(" ", "·") or "∅"
        out.append(cache[i])
    return out


def projection_rows(
    ws: Workspace, n_points: int, seed: int = 0, drop_first: int = 0
) -> tuple[np.ndarray, pd.DataFrame]:
    """Which rows of the workspace's all-token clouds a projection shows, and what each is.

    Returns ``(rows, info)``: ``rows`` indexes the rows of ``ws``'s all-token cloud (the same for every state),
    ``info`` has ``window, position, token_id, token, frequency, log_frequency`` per row. Rows at positions below
    ``drop_first`` are left out before ``n_points`` rows are drawn with ``seed``.
    """
    from analysis.methods.projection import (
        cloud_token_coordinates,
        row_token_ids,
        token_frequency,
    )

    cap = ws.capture()
    c = ws.calibration
    window, position = cloud_token_coordinates(
        c.n_windows, c.window_len, n_max=c.n_max, seed=c.seed, exclude_first=c.exclude_first
    )
    keep = np.flatnonzero(position >= drop_first)
    rows = keep[subsample_indices(keep.size, n_points, seed)]
    window, position = window[rows], position[rows]
    ids = row_token_ids(cap.tokens, window, position)
    freq = token_frequency(ids, corpus_ids=cap.tokens)
    info = pd.DataFrame(
        {
            "window": window,
            "position": position,
            "token_id": ids,
            "token": token_text(ws.lm.tokenizer, ids),
            "frequency": freq,
            "log_frequency": np.log10(np.maximum(freq, 1)),
        }
    )
    return rows, info


def projection(
    ws: Workspace,
    state: int,
    settings: ProjectionSettings | None = None,
    progress: Progress | None = None,
    refresh: bool = False,
) -> Projection:
    """PCA or UMAP of hidden state ``state``'s token cloud (UMAP cached per workspace, state and settings)."""
    from analysis.methods.projection import pca_2d3d, umap_embed

    settings = settings or ProjectionSettings()
    if not 0 <= state < ws.n_states:
        raise InputError(f"state must be in 0..{ws.n_states - 1}, got {state}")
    clouds = ws.cloud_reader(progress)
    rows, info = projection_rows(ws, settings.n_points, settings.seed, settings.drop_first)
    if rows.size < 4:
        raise InputError(f"the cloud has {rows.size} points; a projection needs at least 4")
    notes = []

    def cloud() -> np.ndarray:
        X = clouds[state][rows]
        if np.unique(X, axis=0).shape[0] < min(4, X.shape[0]):
            raise InputError(f"h{state}: fewer than 4 distinct points, nothing to project")
        return X

    t0 = time.perf_counter()
    outcome = None
    if settings.method == "pca":
        coords, explained = pca_2d3d(cloud(), settings.n_components, seed=settings.seed)
        seconds = time.perf_counter() - t0
    else:
        n_neighbors = min(settings.n_neighbors, rows.size - 1)
        if n_neighbors != settings.n_neighbors:
            notes.append(f"n_neighbors lowered to {n_neighbors} (only {rows.size} points)")

        def compute():
            t = time.perf_counter()
            emb = umap_embed(
                cloud(), settings.n_components, n_neighbors=n_neighbors, min_dist=settings.min_dist, seed=settings.seed
            )
            return {"coords": emb}, {"seconds": time.perf_counter() - t}

        arrays, data, outcome = ws.result("umap", settings.cache_params(state), compute, refresh=refresh)
        coords, explained = np.asarray(arrays["coords"]), np.zeros(0)
        seconds = float(data.get("seconds", 0.0))
    points = info.copy()
    for j, axis in enumerate("xyz"[: settings.n_components]):
        points.insert(j, axis, coords[:, j])
    return Projection(
        state=state,
        settings=settings,
        points=points,
        explained=explained,
        seconds=seconds,
        outcome=outcome,
        notes=notes,
    )


def has_projection(ws: Workspace, state: int, settings: ProjectionSettings) -> bool:
    return settings.method == "pca" or ws.has_result("umap", settings.cache_params(state))
