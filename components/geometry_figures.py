"""Plotly figures of the activation-statistics and geometry views (no Streamlit, no model access here).

Every builder drops non-finite values before drawing: a chart never receives NaN or inf.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.plots import legend_swatches, set_log_axis
from components.figures import BASE, BLOCK_AXIS, HIGHLIGHT

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
WARN = "#ff7f0e"


def _finite(frame: pd.DataFrame, *cols: str) -> pd.DataFrame:
    ok = np.ones(len(frame), dtype=bool)
    for c in cols:
        ok &= np.isfinite(frame[c].to_numpy(dtype=float))
    return frame[ok]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def block_bars(
    table: pd.DataFrame,
    column: str,
    title: str,
    y_title: str,
    highlight: Sequence[int] = (),
    flagged: Sequence[int] = (),
    log: bool = False,
    hover_fmt: str = ".4g",
    flag_text: str = "sparsity near zero",
) -> go.Figure:
    """One bar per block; ``highlight`` (suggested) in red, ``flagged`` blocks outlined and marked with ▲."""
    t = _finite(table, column)
    if log:
        t = t[t[column] > 0]
    hl, fl = {int(b) for b in highlight}, {int(b) for b in flagged}
    blocks = t["block"].astype(int).tolist()
    colours = [HIGHLIGHT if b in hl else BASE for b in blocks]
    lines = [WARN if b in fl else "rgba(0,0,0,0)" for b in blocks]
    notes = [flag_text if b in fl else "" for b in blocks]
    fig = go.Figure(
        go.Bar(
            x=blocks,
            y=t[column].tolist(),
            marker=dict(color=colours, line=dict(color=lines, width=2)),
            customdata=notes,
            showlegend=False,
            hovertemplate=f"block %{{x}}: %{{y:{hover_fmt}}}<br>%{{customdata}}<extra></extra>",
        )
    )
    if fl:
        ys = t.set_index("block")[column]
        fx = [b for b in blocks if b in fl]
        fig.add_trace(
            go.Scatter(
                x=fx,
                y=[float(ys[b]) for b in fx],
                mode="markers",
                name=flag_text,
                marker=dict(symbol="triangle-up", color=WARN, size=8),
                hovertemplate=f"block %{{x}}: {flag_text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title=BLOCK_AXIS,
        yaxis_title=y_title,
        height=340,
        showlegend=bool(fl),
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.3),
    )
    if hl:
        legend_swatches(fig, {"suggested": HIGHLIGHT, "other blocks": BASE})
    if log:
        set_log_axis(fig, t[column].tolist())  # 1-2-5 ticks with full labels, never plotly's bare "5, 2"
    else:
        fig.update_yaxes(exponentformat="e" if t[column].abs().max() < 1e-2 else "none")
    return fig


def cumulative_curve(curve: pd.DataFrame, share: float | None, chosen: Sequence[int] = ()) -> go.Figure:
    """Sorted cumulative NAVSS: x = rank (lowest AVSS first), each point labelled with its block."""
    c = _finite(curve, "cumulative_navss")
    hl = {int(b) for b in chosen}
    colours = [HIGHLIGHT if int(b) in hl else BASE for b in c["block"]]
    fig = go.Figure(
        go.Scatter(
            x=(c["rank"] + 1).tolist(),
            y=c["cumulative_navss"].tolist(),
            mode="lines+markers+text",
            text=[str(int(b)) for b in c["block"]],
            textposition="top center",
            textfont=dict(size=9),
            marker=dict(color=colours, size=7),
            line=dict(color="#999"),
            customdata=np.stack([c["block"], c["navss"]], axis=1),
            hovertemplate="rank %{x}: block %{customdata[0]:.0f}, NAVSS %{customdata[1]:.4g}, "
            "cumulative %{y:.4f}<extra></extra>",
        )
    )
    if share is not None:
        fig.add_hline(
            y=share,
            line_dash="dash",
            line_color=HIGHLIGHT,
            annotation_text=f"share {share:.0%}",
            annotation_position="top left",
        )
    fig.update_layout(
        title="Cumulative NAVSS over blocks sorted by AVSS (labels: block)",
        xaxis_title="number of lowest-AVSS blocks taken",
        yaxis_title="cumulative NAVSS",
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig


def id_profile_chart(
    profiles: Sequence[tuple[str, object]],
    estimators: Sequence[str],
    labels: dict[str, str],
    x: str = "state",
    band: str = "range",
    annotate: bool = True,
    title: str = "Intrinsic dimension against depth",
) -> go.Figure:
    """ID profiles: one line per (profile, estimator), a band over the subsets, peak and final ID annotated.

    ``profiles``: ``(name, IDProfile)``. ``x``: ``state`` (h_s) or ``depth`` (s / L, to compare models of
    different depth). The line is the estimate on the whole distinct cloud; ``band``: ``range`` (min–max over the
    disjoint subsets) or ``std`` (the subsets' mean ± 1 s.d.).
    """
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    widths = []
    for pi, (name, prof) in enumerate(profiles):
        widths.append((name, prof.width))
        for ei, est in enumerate(estimators):
            col = f"id_{est}"
            t = _finite(prof.table, col, f"{col}_std", f"{col}_min", f"{col}_max")
            if t.empty:
                continue
            colour = PALETTE[(pi * len(estimators) + ei) % len(PALETTE)]
            xs = t[x].tolist()
            centre = t[f"{col}_subset_mean"] if f"{col}_subset_mean" in t else t[col]
            lo = (t[f"{col}_min"] if band == "range" else centre - t[f"{col}_std"]).tolist()
            hi = (t[f"{col}_max"] if band == "range" else centre + t[f"{col}_std"]).tolist()
            label = f"{labels.get(est, est)}" + (f" · {name}" if len(profiles) > 1 else "")
            fig.add_trace(
                go.Scatter(
                    x=xs + xs[::-1],
                    y=hi + lo[::-1],
                    fill="toself",
                    fillcolor=_rgba(colour, 0.18),
                    mode="lines",
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=t[col].tolist(),
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    line=dict(color=colour, dash=dashes[pi % len(dashes)]),
                    marker=dict(size=5),
                    customdata=np.stack([t["state"], t[f"{col}_std"], t[f"{col}_min"], t[f"{col}_max"]], axis=1),
                    hovertemplate="h%{customdata[0]:.0f}: ID %{y:.2f} on the whole cloud (subsets: s.d. "
                    "%{customdata[1]:.2f}, range %{customdata[2]:.2f}–%{customdata[3]:.2f})<extra>"
                    + label
                    + "</extra>",
                )
            )
            if annotate and ei == 0:
                peak, final = prof.peak(est), prof.final(est)
                if peak is not None:
                    px = peak[0] if x == "state" else peak[0] / prof.n_blocks
                    fig.add_annotation(
                        x=px,
                        y=peak[1],
                        text=f"peak h{peak[0]}: {peak[1]:.1f}",
                        showarrow=True,
                        arrowhead=2,
                        ax=0,
                        ay=-30 - 22 * pi,
                        font=dict(color=colour),
                    )
                if final is not None and (peak is None or final[0] != peak[0]):
                    fx = final[0] if x == "state" else final[0] / prof.n_blocks
                    fig.add_annotation(
                        x=fx,
                        y=final[1],
                        text=f"final {final[1]:.1f}",
                        showarrow=True,
                        arrowhead=2,
                        ax=-45,
                        ay=28 if pi == 0 else -32,
                        font=dict(color=colour),
                    )
    width_text = " · ".join(f"{n}: width {w}" if len(widths) > 1 else f"ambient width {w}" for n, w in widths)
    if width_text:
        fig.add_annotation(
            xref="paper",
            yref="paper",
            x=1.0,
            y=1.0,
            xanchor="right",
            yanchor="bottom",
            text=f"for reference, {width_text}",
            showarrow=False,
            font=dict(size=11, color="#555"),
        )
    fig.update_layout(
        title=title,
        height=440,
        margin=dict(l=60, r=20, t=60, b=50),
        xaxis_title="hidden state h_s" if x == "state" else "depth s / L (0 = embeddings)",
        yaxis_title="intrinsic dimension",
        legend=dict(orientation="h", y=-0.2),
    )
    if x == "depth":
        fig.update_xaxes(range=[-0.03, 1.03])
    return fig


def gride_sweep_chart(sweep: pd.DataFrame, states: Sequence[int], scale: str = "k") -> go.Figure:
    """GRIDE ID against scale for some states: x = neighbour order k (log 2) or the mean radius of the 2k-th
    neighbour (in units of the state's median pairwise distance); line = whole cloud, band = range over subsets."""
    fig = go.Figure()
    for i, s in enumerate(states):
        t = _finite(sweep[sweep["state"] == s], "id", "id_min", "id_max", "radius")
        if t.empty:
            continue
        colour = PALETTE[i % len(PALETTE)]
        xs = t["k" if scale == "k" else "radius"].tolist()
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=t["id_max"].tolist() + t["id_min"].tolist()[::-1],
                fill="toself",
                fillcolor=_rgba(colour, 0.15),
                mode="lines",
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=t["id"].tolist(),
                mode="lines+markers",
                name=f"h{s}",
                line=dict(color=colour),
                customdata=np.stack([t["k"], t["radius"]], axis=1),
                hovertemplate=f"h{s}" + ", k=%{customdata[0]:.0f} (neighbours k and 2k, radius %{customdata[1]:.3f}): "
                "ID %{y:.2f}<extra></extra>",
            )
        )
    fig.update_layout(
        title="GRIDE: intrinsic dimension against scale",
        height=400,
        xaxis_title="neighbour order k (ratios r_2k / r_k)"
        if scale == "k"
        else "mean distance to the 2k-th neighbour (median pairwise distance = 1)",
        yaxis_title="intrinsic dimension",
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    fig.update_xaxes(type="log")
    if scale == "k":
        ks = sorted({int(k) for k in sweep["k"]})
        fig.update_xaxes(tickvals=ks, ticktext=[str(k) for k in ks])
    return fig


def projection_scatter(
    points: pd.DataFrame,
    colour: str,
    colour_title: str,
    title: str,
    n_components: int = 2,
    axis_titles: Sequence[str] = ("1", "2", "3"),
) -> go.Figure:
    """A 2-D or 3-D scatter of a projected token cloud; hover shows the token, window and position."""
    p = _finite(points, *("xyz"[:n_components]))
    custom = np.stack([p["token"].astype(str), p["window"], p["position"], p["frequency"]], axis=1)
    hover = (
        "token %{customdata[0]}<br>window %{customdata[1]}, position %{customdata[2]}"
        "<br>frequency %{customdata[3]}<extra></extra>"
    )
    discrete = colour == "window" and p["window"].nunique() <= 1
    marker = dict(
        size=4 if n_components == 2 else 2.5,
        opacity=0.8,
        color=p[colour].tolist(),
        colorscale="Viridis" if colour != "window" else "Turbo",
        showscale=not discrete,
        colorbar=dict(title=colour_title),
    )
    if n_components == 3:
        trace = go.Scatter3d(
            x=p["x"], y=p["y"], z=p["z"], mode="markers", marker=marker, customdata=custom, hovertemplate=hover
        )
    else:
        trace = go.Scattergl(x=p["x"], y=p["y"], mode="markers", marker=marker, customdata=custom, hovertemplate=hover)
    fig = go.Figure(trace)
    fig.update_layout(title=title, height=620, margin=dict(l=40, r=20, t=50, b=40))
    if n_components == 3:
        fig.update_layout(
            scene=dict(xaxis_title=axis_titles[0], yaxis_title=axis_titles[1], zaxis_title=axis_titles[2])
        )
    else:
        fig.update_layout(xaxis_title=axis_titles[0], yaxis_title=axis_titles[1])
    return fig
