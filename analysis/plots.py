"""Plotly figure builders shared by the pages and the HTML report (no Streamlit, no model access here)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

BLOCK_AXIS = "block b (h_b → h_b+1)"
HIGHLIGHT = "#d62728"
BASE = "#1f77b4"
#: Series colours (matplotlib's tab10 without the highlight red): every multi-series builder colours its traces
#: explicitly from this list, so the dashboard and the offline report draw them alike (Streamlit's own plotly
#: template only names placeholder colours, which plain plotly.js renders black).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star", "pentagon", "hexagon"]
DIM_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
STATE_AXIS = "hidden state l (h_0 = embeddings; h_l = output of block l - 1)"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def report_template():
    """The template the HTML report draws with: plotly's white theme with :data:`PALETTE` as the colour way (the
    figures were maybe built while Streamlit's placeholder template was the default)."""
    import plotly.io as pio

    t = go.layout.Template(pio.templates["plotly_white"])
    t.layout.colorway = PALETTE
    return t


def _superscript(n: int) -> str:
    return str(n).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def log_tick_label(v: float, plain: bool | None = None) -> str:
    """``0.002``, ``50``, ``2×10⁻⁵``, ``10⁶``: plain between 1e-3 and 1e4 (or as ``plain`` says), otherwise
    mantissa × power of ten."""
    if v <= 0 or not np.isfinite(v):
        return ""
    e = int(np.floor(np.log10(v) + 1e-9))
    m = v / 10.0**e
    if plain if plain is not None else -3 <= e <= 3:
        return f"{v:.{max(0, -e)}f}"
    mant = f"{m:.0f}" if abs(m - round(m)) < 1e-6 else f"{m:.1f}"
    return f"10{_superscript(e)}" if mant == "1" else f"{mant}×10{_superscript(e)}"


def log_ticks(values: Sequence[float], max_ticks: int = 10) -> tuple[list[float], list[str]]:
    """Tick positions and labels for a log axis over ``values``: 1-2-5 per decade when that gives at most
    ``max_ticks`` ticks, else every decade (or every other one). Never plotly's bare "2, 5" minor labels."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    if v.size == 0:
        return [], []
    lo, hi = int(np.floor(np.log10(v.min()))), int(np.ceil(np.log10(v.max())))
    hi = max(hi, lo + 1)
    candidates = [[1.0, 2.0, 5.0], [1.0, 3.0], [1.0]]
    for mants in candidates:
        ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in mants]
        ticks = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
        if len(ticks) <= max_ticks and len(ticks) >= 2:
            break
    else:
        step = max(1, int(np.ceil((hi - lo + 1) / max_ticks)))
        ticks = [10.0**e for e in range(lo, hi + 1, step)]
    plain = all(1e-3 <= t < 1e4 for t in ticks)  # one notation for the whole axis
    return ticks, [log_tick_label(t, plain) for t in ticks]


def set_log_axis(fig: go.Figure, values: Sequence[float], axis: str = "y") -> go.Figure:
    """A log ``axis`` with :func:`log_ticks` labels."""
    vals, text = log_ticks(values)
    upd = fig.update_yaxes if axis == "y" else fig.update_xaxes
    upd(type="log", tickvals=vals or None, ticktext=text or None)
    return fig


def legend_swatches(fig: go.Figure, items: dict[str, str], kind: str = "bar") -> go.Figure:
    """Legend-only entries (``{label: colour}``): explains per-bar colours without drawing anything."""
    for label, c in items.items():
        if kind == "bar":
            fig.add_trace(go.Bar(x=[None], y=[None], marker_color=c, name=label, showlegend=True, hoverinfo="skip"))
            fig.update_layout(barmode="overlay")  # legend-only bars must not shift the real ones
        else:
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker=dict(color=c, size=10, symbol="square"),
                    name=label,
                    showlegend=True,
                    hoverinfo="skip",
                )
            )
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.3))
    return fig


def heatmap(
    z: np.ndarray,
    x: Sequence,
    y: Sequence,
    title: str,
    x_title: str,
    y_title: str,
    colorscale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    hover: str = "%{y} → %{x}: %{z:.4f}<extra></extra>",
    colorbar_title: str = "",
) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(x),
            y=list(y),
            colorscale=colorscale,
            zmin=zmin,
            zmax=zmax,
            hovertemplate=hover,
            colorbar=dict(title=colorbar_title),
        )
    )
    fig.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, height=520, margin=dict(l=60, r=20, t=50, b=50)
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(automargin=True)
    return fig


def curves(
    x: Sequence,
    series: dict[str, Sequence[float]],
    title: str,
    x_title: str,
    y_title: str,
    highlight: Sequence[int] = (),
    markers: bool = True,
    y_range: tuple[float, float] | None = None,
    hover_fmt: str = ".4f",
) -> go.Figure:
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=list(x),
                y=list(ys),
                name=name,
                mode="lines+markers" if markers else "lines",
                line=dict(color=colour(i)),
                marker=dict(color=colour(i), symbol=MARKERS[i % 9]),
                hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra>{name}</extra>",
            )
        )
    for b in highlight:
        fig.add_vrect(x0=b - 0.5, x1=b + 0.5, fillcolor=HIGHLIGHT, opacity=0.12, line_width=0)
    if len(highlight):
        legend_swatches(fig, {"suggested": _rgba(HIGHLIGHT, 0.35)}, kind="marker")
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=380,
        showlegend=True,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    if y_range:
        fig.update_yaxes(range=list(y_range))
    return fig


def bars(
    x: Sequence,
    y: Sequence[float],
    title: str,
    x_title: str,
    y_title: str,
    highlight: Sequence[int] = (),
    hover_fmt: str = ".4f",
    highlight_label: str = "suggested",
    base_label: str = "other blocks",
) -> go.Figure:
    """One bar per ``x``; ``highlight`` bars in red, with a legend saying what red and blue mean."""
    hl = set(int(h) for h in highlight)
    colors = [HIGHLIGHT if int(b) in hl else BASE for b in x]
    fig = go.Figure(
        go.Bar(
            x=list(x),
            y=list(y),
            marker_color=colors,
            showlegend=False,
            hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=360,
        showlegend=False,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    if hl:
        legend_swatches(fig, {highlight_label: HIGHLIGHT, base_label: BASE})
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def state_labels(n_states: int) -> list[str]:
    return [f"h{s}" for s in range(n_states)]


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
    vlines: dict[str, float] | None = None,
    hover_fmt: str = ".4g",
    height: int = 380,
) -> go.Figure:
    """Curves with their own x values each (``{name: (x, y)}``), optional log y axis and labelled vertical lines."""
    fig = go.Figure()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=list(xs),
                y=list(ys),
                name=name,
                mode="lines",
                line=dict(color=colour(i)),
                hovertemplate=f"{x_title} %{{x}}: %{{y:{hover_fmt}}}<extra>{name}</extra>",
            )
        )
    for i, (label, x) in enumerate((vlines or {}).items()):
        fig.add_vline(
            x=x,
            line_dash="dash" if i else "solid",
            line_color=HIGHLIGHT if not i else "#7f7f7f",
            annotation_text=label,
            annotation_position="top right" if not i else "bottom right",
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=height,
        showlegend=True,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    if log_y:
        set_log_axis(fig, [v for _, ys in series.values() for v in ys])
    return fig


def comparison_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    y_title: str,
    x_title: str = "depth (block index / blocks)",
) -> go.Figure:
    """Curves of models with different depths on one chart: each series is ``(x as a fraction, y)``."""
    fig = go.Figure()
    for i, (name, (x, y)) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=list(x),
                y=list(y),
                name=name,
                mode="lines+markers",
                line=dict(color=colour(i)),
                marker=dict(color=colour(i), symbol=MARKERS[i % 9]),
                hovertemplate=f"{name}: %{{x:.2f}} → %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=380,
        showlegend=True,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Per-state persistence (the Persistence barcodes page and the report)


def dimension_colour(d: int) -> str:
    """The colour of homology dimension ``d`` in every topology figure."""
    return DIM_COLOURS[d % len(DIM_COLOURS)]


def bar_segments(x0: np.ndarray, x1: np.ndarray, y: np.ndarray) -> tuple[list, list]:
    """Horizontal bars ``[x0, x1]`` at heights ``y`` as one line trace's points, a ``None`` between bars."""
    xs, ys = [], []
    for a, b, c in zip(x0.tolist(), x1.tolist(), y.tolist()):
        xs += [a, b, None]
        ys += [c, c, None]
    return xs, ys


def _finite_top(diagrams: Sequence[np.ndarray]) -> float:
    vals = [float(np.max(d[np.isfinite(d)])) for d in diagrams if d.size and np.isfinite(d).any()]
    return max(vals + [1e-9])


def persistence_barcode(diagrams: Sequence[np.ndarray], title: str) -> go.Figure:
    """Barcode of one state: bars by dimension, each dimension sorted by birth then length; ∞ drawn to the edge."""
    top = _finite_top(diagrams) * 1.08
    fig = go.Figure()
    offset = 0
    for d, dgm in enumerate(diagrams):
        if dgm.shape[0] == 0:
            continue
        order = np.lexsort((-(dgm[:, 1] - dgm[:, 0]), dgm[:, 0]))
        dg = dgm[order]
        death = np.where(np.isfinite(dg[:, 1]), dg[:, 1], top)
        y = offset + np.arange(dg.shape[0])
        xs, ys = bar_segments(dg[:, 0], death, y)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"H{d} ({dg.shape[0]})",
                line=dict(color=dimension_colour(d), width=2),
                hoverinfo="skip",
            )
        )
        offset += dg.shape[0] + 5
    fig.update_layout(
        title=title,
        xaxis_title="scale (units of the median pairwise distance)",
        yaxis_title="bar",
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.2),
    )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    return fig


def persistence_diagram(diagrams: Sequence[np.ndarray], title: str) -> go.Figure:
    """Birth against death per dimension, with the diagonal; essential bars on a dashed line at the top."""
    top = _finite_top(diagrams) * 1.08
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            line=dict(color="#888", dash="dot"),
            showlegend=False,
            hoverinfo="skip",
        )
    )
    fig.add_hline(y=top, line=dict(color="#bbb", dash="dash"), annotation_text="∞", annotation_position="right")
    for d, dgm in enumerate(diagrams):
        if dgm.shape[0] == 0:
            continue
        inf = ~np.isfinite(dgm[:, 1])
        death = np.where(inf, top, dgm[:, 1])
        symbols = np.where(inf, "triangle-up", "circle").tolist()
        fig.add_trace(
            go.Scatter(
                x=dgm[:, 0],
                y=death,
                mode="markers",
                name=f"H{d}",
                marker=dict(color=dimension_colour(d), size=6, symbol=symbols),
                hovertemplate="birth %{x:.4f}, death %{y:.4f}<extra>H" + str(d) + "</extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="birth",
        yaxis_title="death",
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.2),
    )
    fig.update_xaxes(range=[-0.02 * top, top * 1.02])
    fig.update_yaxes(range=[-0.02 * top, top * 1.05])
    return fig


def betti_curves(frame: pd.DataFrame, title: str) -> go.Figure:
    """Step curves ``β_d(t)`` from :func:`analysis.profiles.topology.betti_curves`."""
    fig = go.Figure()
    for col in [c for c in frame.columns if c.startswith("betti_")]:
        d = int(col.split("_")[1])
        fig.add_trace(
            go.Scatter(
                x=frame["t"],
                y=frame[col],
                mode="lines",
                line_shape="hv",
                name=f"β{d}",
                line=dict(color=dimension_colour(d)),
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="scale t",
        yaxis_title="Betti number",
        height=360,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def per_dimension_curves(frame: pd.DataFrame, prefix: str, dims: Sequence[int], title: str, y_title: str) -> go.Figure:
    """``frame[f"{prefix}{d}"]`` against ``frame["state"]``: H0 on the left axis, higher dimensions on the right
    (their values are often orders of magnitude smaller)."""
    fig = go.Figure()
    for d in dims:
        fig.add_trace(
            go.Scatter(
                x=frame["state"],
                y=frame[f"{prefix}{d}"],
                mode="lines+markers",
                name=f"H{d}",
                line=dict(color=dimension_colour(d)),
                yaxis="y" if d == 0 else "y2",
                hovertemplate="h%{x}: %{y:.4f}<extra>H" + str(d) + "</extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=STATE_AXIS,
        height=380,
        margin=dict(l=60, r=60, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
        yaxis=dict(title=dict(text=f"{y_title}, H0", font=dict(color=dimension_colour(0)))),
        yaxis2=dict(
            title=dict(text=f"{y_title}, H1+", font=dict(color=dimension_colour(1))),
            overlaying="y",
            side="right",
            showgrid=False,
        ),
    )
    return fig


def quality_cost_figure(frame: pd.DataFrame, x: str, y: str) -> go.Figure:
    """Variants as labelled points of quality ``y`` against cost ``x``; the original is a red star (the Variants
    page and the report)."""
    fig = go.Figure()
    orig = frame[frame.variant == "original"]
    rest = frame[frame.variant != "original"]
    fig.add_trace(
        go.Scatter(
            x=rest[x],
            y=rest[y],
            mode="markers+text",
            text=rest.variant,
            textposition="top center",
            name="variants",
            marker=dict(size=11, color=BASE),
            hovertemplate="%{text}: " + x + " %{x:,.4g}, " + y + " %{y:.4g}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=orig[x],
            y=orig[y],
            mode="markers+text",
            text=["original"] * len(orig),
            textposition="top center",
            name="original",
            marker=dict(size=16, symbol="star", color=HIGHLIGHT),
            hovertemplate="original: " + x + " %{x:,.4g}, " + y + " %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{y} against {x} (the original is the star)",
        xaxis_title=x,
        yaxis_title=y,
        height=440,
        margin=dict(l=60, r=20, t=50, b=50),
        showlegend=True,
        legend=dict(orientation="h", y=-0.2),
    )
    return fig
