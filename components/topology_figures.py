"""Plotly figures of the topology views: barcodes, persistence diagrams, Betti curves, the zigzag barcode."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# the per-state persistence figures live in analysis.plots, so that the HTML report draws the same figures
from analysis.plots import (DIM_COLOURS, STATE_AXIS, _finite_top, betti_curves,  # noqa: F401
                            per_dimension_curves, persistence_barcode, persistence_diagram)


def _colour(d: int) -> str:
    return DIM_COLOURS[d % len(DIM_COLOURS)]


def _segments(x0: np.ndarray, x1: np.ndarray, y: np.ndarray) -> tuple[list, list]:
    xs, ys = [], []
    for a, b, c in zip(x0.tolist(), x1.tolist(), y.tolist()):
        xs += [a, b, None]
        ys += [c, c, None]
    return xs, ys


def zigzag_barcode(bars: pd.DataFrame, n_layers: int, cap: int = 300) -> tuple[go.Figure, pd.DataFrame, int]:
    """One horizontal bar per zigzag feature from its birth layer to its death layer, coloured by dimension.

    Longest first (ties: lower dimension, earlier birth), at most ``cap`` drawn. Returns ``(figure, drawn bars,
    number not drawn)``. A bar is drawn on ``[birth_layer, death_layer]``: alive in ``birth_layer .. death_layer - 1``;
    ``death_layer = n_layers`` means alive in the last state.
    """
    b = bars.assign(lifetime=bars["death_layer"] - bars["birth_layer"])
    b = b.sort_values(["lifetime", "dim", "birth_layer"], ascending=[False, True, True], kind="stable")
    shown = b.head(max(0, int(cap))).reset_index(drop=True)
    hidden = len(b) - len(shown)
    fig = go.Figure()
    y = np.arange(len(shown))
    height = max(360, min(900, 120 + 3 * len(shown)))
    width = float(np.clip(0.6 * (height - 120) / max(1, len(shown)), 0.5, 4.0))  # thin enough not to merge
    for d in sorted(shown["dim"].unique()):
        sel = shown["dim"].to_numpy() == d
        xs, ys = _segments(shown["birth_layer"].to_numpy()[sel], shown["death_layer"].to_numpy()[sel], y[sel])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"H{d}", line=dict(color=_colour(int(d)),
                                                                                   width=width),
                                 hoverinfo="skip"))
        # one invisible marker per bar carries the hover text
        mid = (shown["birth_layer"].to_numpy()[sel] + shown["death_layer"].to_numpy()[sel]) / 2
        text = [f"H{d}: born in h{bl}, alive through h{dl - 1} ({dl - bl} layer{'s' if dl - bl != 1 else ''})"
                for bl, dl in zip(shown["birth_layer"].to_numpy()[sel], shown["death_layer"].to_numpy()[sel])]
        fig.add_trace(go.Scatter(x=mid, y=y[sel], mode="markers", marker=dict(size=6, opacity=0),
                                 hovertext=text, hoverinfo="text", showlegend=False))
    title = f"Zigzag barcode: {len(shown):,} longest bars" + (f" (+{hidden:,} more not drawn)" if hidden else "")
    fig.update_layout(title=title, xaxis_title=STATE_AXIS, yaxis_title="bar (longest first)",
                      height=height, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    fig.update_xaxes(range=[-0.5, n_layers + 0.5], dtick=2)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    return fig, shown.drop(columns="lifetime"), hidden


def zbar_curve(zbar: np.ndarray, p: int, alpha: float, fractions: Sequence[float],
               suggested_states: Sequence[int]) -> go.Figure:
    """``Z̄_p(l)`` per state with the threshold lines and the suggested states shaded."""
    x = np.arange(len(zbar))
    fig = go.Figure(go.Scatter(x=x, y=zbar, mode="lines+markers", name=f"Z̄_{p}",
                               hovertemplate="h%{x}: %{y:.4f}<extra></extra>"))
    top = float(np.max(zbar)) if len(zbar) else 0.0
    for f, dash in zip(fractions, ["dash", "dot", "dashdot"]):
        fig.add_hline(y=f * top, line=dict(color="#d62728", dash=dash, width=1),
                      annotation_text=f"{f:g} · max", annotation_position="top left")
    for s in suggested_states:
        fig.add_vrect(x0=s - 0.5, x1=s + 0.5, fillcolor="#d62728", opacity=0.12, line_width=0)
    fig.update_layout(title=f"Averaged inter-layer persistence Z̄_{p}(l), α = {alpha:g}", xaxis_title=STATE_AXIS,
                      yaxis_title=f"Z̄_{p}", height=380, margin=dict(l=60, r=20, t=50, b=50))
    return fig

