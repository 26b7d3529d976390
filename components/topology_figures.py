"""Plotly figures of the topology views: barcodes, persistence diagrams, Betti curves, the zigzag barcode."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# the per-state persistence figures live in analysis.plots, so that the HTML report draws the same figures
from analysis.plots import (  # noqa: F401
    DIM_COLOURS,
    STATE_AXIS,
    _finite_top,
    bar_segments,
    betti_curves,
    dimension_colour,
    per_dimension_curves,
    persistence_barcode,
    persistence_diagram,
)


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
        xs, ys = bar_segments(shown["birth_layer"].to_numpy()[sel], shown["death_layer"].to_numpy()[sel], y[sel])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"H{d}",
                line=dict(color=dimension_colour(int(d)), width=width),
                hoverinfo="skip",
            )
        )
        # one invisible marker per bar carries the hover text
        mid = (shown["birth_layer"].to_numpy()[sel] + shown["death_layer"].to_numpy()[sel]) / 2
        text = [
            f"H{d}: born in h{bl}, alive through h{dl - 1} ({dl - bl} layer{'s' if dl - bl != 1 else ''})"
            for bl, dl in zip(shown["birth_layer"].to_numpy()[sel], shown["death_layer"].to_numpy()[sel])
        ]
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=y[sel],
                mode="markers",
                marker=dict(size=6, opacity=0),
                hovertext=text,
                hoverinfo="text",
                showlegend=False,
            )
        )
    title = f"Zigzag barcode: {len(shown):,} longest bars" + (f" (+{hidden:,} more not drawn)" if hidden else "")
    fig.update_layout(
        title=title,
        xaxis_title=STATE_AXIS,
        yaxis_title="bar (longest first)",
        height=height,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
    )
    fig.update_xaxes(range=[-0.5, n_layers + 0.5], dtick=2)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    return fig, shown.drop(columns="lifetime"), hidden


def zbar_curve(
    zbar: np.ndarray, p: int, alpha: float, fractions: Sequence[float], suggested_states: Sequence[int]
) -> go.Figure:
    """``Z̄_p(l)`` per state with the threshold lines and the suggested states shaded."""
    x = np.arange(len(zbar))
    fig = go.Figure(
        go.Scatter(x=x, y=zbar, mode="lines+markers", name=f"Z̄_{p}", hovertemplate="h%{x}: %{y:.4f}<extra></extra>")
    )
    top = float(np.max(zbar)) if len(zbar) else 0.0
    for f, dash in zip(fractions, ["dash", "dot", "dashdot"]):
        fig.add_hline(
            y=f * top,
            line=dict(color="#d62728", dash=dash, width=1),
            annotation_text=f"{f:g} · max",
            annotation_position="top left",
        )
    for s in suggested_states:
        fig.add_vrect(x0=s - 0.5, x1=s + 0.5, fillcolor="#d62728", opacity=0.12, line_width=0)
    fig.update_layout(
        title=f"Averaged inter-layer persistence Z̄_{p}(l), α = {alpha:g}",
        xaxis_title=STATE_AXIS,
        yaxis_title=f"Z̄_{p}",
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def _wrap(text: str, width: int = 60, limit: int = 400) -> str:
    """Hover text: at most ``limit`` characters, broken into lines of about ``width``."""
    import html
    import textwrap

    t = text if len(text) <= limit else "…" + text[-limit:]
    return "<br>".join(html.escape(line) for line in textwrap.wrap(t, width)) or " "


def representative_figure(
    coords: np.ndarray,
    texts: Sequence[str],
    edges: np.ndarray,
    cycle: Sequence[int],
    cluster: Sequence[int],
    title: str,
    axis: str = "PC",
) -> go.Figure:
    """A layer's points (grey), the bar's windows (coloured) and the loop's edges (lines) over a 2-D projection.

    Hover on any point shows its window's text (the point is the window's last token, in ⟦ ⟧)."""
    coords = np.asarray(coords, dtype=float)
    n = coords.shape[0]
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=coords[:, 0],
            y=coords[:, 1],
            mode="markers",
            name="other windows",
            marker=dict(size=5, color="#c8c8c8"),
            text=[f"window {i}<br>{_wrap(texts[i])}" for i in range(n)],
            hoverinfo="text",
        )
    )
    if len(cluster):
        c = np.asarray(cluster, dtype=int)
        fig.add_trace(
            go.Scattergl(
                x=coords[c, 0],
                y=coords[c, 1],
                mode="markers",
                name="cluster (H0)",
                marker=dict(size=7, color="#9ecae1", line=dict(width=0.5, color="#3182bd")),
                text=[f"window {i}<br>{_wrap(texts[i])}" for i in c],
                hoverinfo="text",
            )
        )
    if len(edges):
        xs, ys = [], []
        for a, b in np.asarray(edges, dtype=int).tolist():
            xs += [coords[a, 0], coords[b, 0], None]
            ys += [coords[a, 1], coords[b, 1], None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name="loop edges (kNN graph)",
                line=dict(color=DIM_COLOURS[1], width=2),
                hoverinfo="skip",
            )
        )
    if len(cycle):
        v = np.asarray(cycle, dtype=int)
        fig.add_trace(
            go.Scatter(
                x=coords[v, 0],
                y=coords[v, 1],
                mode="markers+text",
                name="windows of the feature",
                marker=dict(size=11, color=DIM_COLOURS[3], line=dict(width=1, color="white")),
                text=[str(i) for i in v],
                textposition="top center",
                textfont=dict(size=10),
                hovertext=[f"window {i}<br>{_wrap(texts[i])}" for i in v],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=f"{axis} 1",
        yaxis_title=f"{axis} 2",
        height=560,
        margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(orientation="h", y=-0.12),
        hoverlabel=dict(align="left"),
    )
    return fig
