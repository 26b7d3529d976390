"""Token-cloud projections: PCA and UMAP of one hidden state in 2-D or 3-D."""

import streamlit as st

from analysis.capture import estimate
from analysis.profiles.projections import (
    COLOURINGS,
    DEFAULT_PROJECTION_POINTS,
    ProjectionSettings,
    has_projection,
    projection,
)
from components import geometry_figures as gf
from components import state
from components.widgets import (
    ensure_capture,
    figure_with_csv,
    run_with_progress,
    workspace_caption,
)

st.title("Token-cloud projections")
st.caption(
    "One hidden state's all-token cloud projected to 2-D or 3-D. **PCA**: the centred cloud on its first "
    "principal axes (signs fixed), linear and faithful to large distances. **UMAP** (umap-learn, seeded): "
    "non-linear, keeps neighbourhoods, not distances — clusters are real, the space between them is not. "
    "Hover a point for its token. UMAP results are cached."
)

ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
n_tokens = ws.n_cloud_tokens()

c = st.columns([3, 1, 1, 2])
s = c[0].slider(
    "Hidden state h_s",
    0,
    L,
    L // 2,
    key="proj-state",
    help="h_0 = embedding output; h_s = residual stream after block s − 1; h_L has the final norm",
)
method = c[1].radio("Method", ["pca", "umap"], format_func=str.upper, key="proj-method")
dims = c[2].radio("Dimensions", [2, 3], format_func=lambda d: f"{d}-D", key="proj-dims")
colour = c[3].selectbox("Colour by", list(COLOURINGS), format_func=lambda k: COLOURINGS[k], key="proj-colour")
sink_default = ws.calibration.exclude_first == 0  # the sidebar may leave it out of every cloud already
drop_first = st.checkbox(
    "Hide the first position of each window (attention sink)",
    value=sink_default,
    key="proj-drop-first",
    disabled=not sink_default,
    help="the first token of every window has no context and, in most LLMs, activations "
    "~100× larger than the rest: it alone can fill the first principal axis",
)
if drop_first:
    st.caption(
        "The first position of each window is hidden by default: in most LLMs it carries the attention "
        "sink, whose activations are ~100× the others' and would squash the rest of the cloud (PCA's "
        "first axis goes to it alone). Untick to see it."
    )
with st.expander("Points and UMAP settings"):
    c = st.columns(3)
    n_points = c[0].number_input(
        "Points",
        4,
        max(4, n_tokens),
        min(DEFAULT_PROJECTION_POINTS, max(4, n_tokens)),
        step=250,
        key="proj-points",
        help=f"tokens drawn (of {n_tokens:,}), the same tokens for every state",
    )
    n_neighbors = c[1].number_input("UMAP n_neighbors", 2, 200, 15, key="proj-nn")
    min_dist = c[2].number_input("UMAP min_dist", 0.0, 1.0, 0.1, step=0.05, key="proj-md")

settings = ProjectionSettings(
    method=method,
    n_components=int(dims),
    n_points=int(n_points),
    n_neighbors=int(n_neighbors),
    min_dist=float(min_dist),
    drop_first=1 if drop_first else 0,
)
ensure_capture(ws)
if method == "umap" and not has_projection(ws, s, settings):
    f = estimate.machine_speed("rips")["factor"]  # this machine's speed now (a ~0.1 s probe, cached)
    st.info(
        f"UMAP of h{s} is not computed yet for these settings ({int(n_points):,} points; about "
        f"{estimate.format_seconds(10 * f)}–{estimate.format_seconds(40 * f)} on this machine now, "
        f"{estimate.speed_note('rips')}; the first run in a session also compiles umap-learn)."
    )
    c = st.columns(2)
    go = c[0].button(f"Compute UMAP of h{s}", type="primary", key="proj-umap-go")
    go_all = c[1].button(f"Compute UMAP of every state (h0 … h{L})", key="proj-umap-all")
    if go_all:
        bar = st.progress(0.0)
        for i in range(L + 1):
            bar.progress(i / (L + 1), text=f"UMAP of h{i}")
            projection(ws, i, settings)
        bar.empty()
    elif not go:
        st.stop()
try:
    proj = run_with_progress(f"{method.upper()} of h{s}", lambda p: projection(ws, s, settings, progress=p))
except ValueError as exc:
    st.error(f"Cannot project h{s}: {exc}")
    st.stop()
for note in proj.notes:
    st.caption(note)
if method == "pca":
    axes = [f"PC{i + 1} ({v:.1%})" for i, v in enumerate(proj.explained)]
    st.caption(f"Explained variance: {', '.join(axes)}.")
    if proj.explained[0] > 0.9 and not drop_first and ws.calibration.exclude_first == 0:
        st.info(
            f"PC1 alone explains {proj.explained[0]:.0%}: a few tokens with massive activations (usually the "
            "first token of each window, the attention sink) dominate the cloud. Tick **Hide the first "
            "position of each window** to see the shape of the rest."
        )
else:
    axes = [f"UMAP {i + 1}" for i in range(int(dims))]
    st.caption(
        "UMAP "
        + ("from the cache" if proj.outcome and proj.outcome.status == "hit" else f"computed in {proj.seconds:.1f} s")
        + f"; n_neighbors {settings.n_neighbors}, "
        f"min_dist {settings.min_dist}, seed {settings.seed}."
    )
colour_col = "log_frequency" if colour == "frequency" else colour
title = f"{method.upper()} of h{s}, {len(proj.points):,} tokens, coloured by {COLOURINGS[colour]}"
fig = gf.projection_scatter(
    proj.points,
    colour_col,
    "log10 count" if colour == "frequency" else colour,
    title,
    n_components=int(dims),
    axis_titles=axes,
)
figure_with_csv(fig, proj.points, f"projection_{method}_h{s}.csv", key="proj")
