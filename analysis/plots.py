"""Plotly figure builders shared by the pages and the HTML report (no Streamlit, no model access here)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

BLOCK_AXIS = "block b (h_b → h_b+1)"
HIGHLIGHT = "#d62728"
BASE = "#1f77b4"


def heatmap(z: np.ndarray, x: Sequence, y: Sequence, title: str, x_title: str, y_title: str,
            colorscale: str = "Viridis", zmin: float | None = None, zmax: float | None = None,
            hover: str = "%{y} → %{x}: %{z:.4f}<extra></extra>", colorbar_title: str = "") -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=list(x), y=list(y), colorscale=colorscale, zmin=zmin, zmax=zmax,
                               hovertemplate=hover, colorbar=dict(title=colorbar_title)))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=520,
                      margin=dict(l=60, r=20, t=50, b=50))
    fig.update_yaxes(autorange="reversed")
    return fig


def curves(x: Sequence, series: dict[str, Sequence[float]], title: str, x_title: str, y_title: str,
           highlight: Sequence[int] = (), markers: bool = True, y_range: tuple[float, float] | None = None,
           hover_fmt: str = ".4f") -> go.Figure:
    fig = go.Figure()
    for name, ys in series.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), name=name, mode="lines+markers" if markers else "lines",
                                 hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra>{name}</extra>"))
    for b in highlight:
        fig.add_vrect(x0=b - 0.5, x1=b + 0.5, fillcolor=HIGHLIGHT, opacity=0.12, line_width=0)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=380,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    if y_range:
        fig.update_yaxes(range=list(y_range))
    return fig


def bars(x: Sequence, y: Sequence[float], title: str, x_title: str, y_title: str, highlight: Sequence[int] = (),
         hover_fmt: str = ".4f") -> go.Figure:
    hl = set(int(h) for h in highlight)
    colors = [HIGHLIGHT if int(b) in hl else BASE for b in x]
    fig = go.Figure(go.Bar(x=list(x), y=list(y), marker_color=colors,
                           hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=360,
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def state_labels(n_states: int) -> list[str]:
    return [f"h{s}" for s in range(n_states)]


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, x_title: str, y_title: str,
          log_y: bool = False, vlines: dict[str, float] | None = None, hover_fmt: str = ".4g",
          height: int = 380) -> go.Figure:
    """Curves with their own x values each (``{name: (x, y)}``), optional log y axis and labelled vertical lines."""
    fig = go.Figure()
    for name, (xs, ys) in series.items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), name=name, mode="lines",
                                 hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra>{name}</extra>"))
    for i, (label, x) in enumerate((vlines or {}).items()):
        fig.add_vline(x=x, line_dash="dash" if i else "solid", line_color=HIGHLIGHT if not i else "#7f7f7f",
                      annotation_text=label, annotation_position="top right" if not i else "bottom right")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=height,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def comparison_curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, y_title: str,
                      x_title: str = "depth (block index / blocks)") -> go.Figure:
    """Curves of models with different depths on one chart: each series is ``(x as a fraction, y)``."""
    fig = go.Figure()
    for name, (x, y) in series.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(y), name=name, mode="lines+markers",
                                 hovertemplate=f"{name}: %{{x:.2f}} → %{{y:.4f}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=380,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    return fig
