"""Per-layer Vietoris-Rips persistence: barcode, diagram and Betti curves of one state; summaries across states."""

import time

import pandas as pd
import streamlit as st

from analysis.cache import stable_hash
from analysis.capture import estimate
from analysis.profiles import topology as topo
from analysis.texts import TextError
from components import figures, jobs, state
from components import topology_figures as tf
from components.widgets import figure_with_csv, run_with_progress, workspace_caption

st.title("Persistence barcodes")
st.caption(
    "Vietoris–Rips persistence (GUDHI) of each hidden state's token cloud (METHODS.md §5; the per-layer view of "
    "Gardinazzi et al., arXiv 2410.11042). Norms grow with depth, so every cloud is first divided by its median "
    "pairwise distance; then a greedy farthest-point subsample keeps the shape. Lifetimes are in units of that "
    "median distance. Total persistence and persistent entropy use the finite bars (the one essential H0 bar is "
    "left out); diagram distances drop infinite bars and use the L∞ ground metric (GUDHI/Hera)."
)

ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
WIDGETS = ["ph-cloud", "ph-metric", "ph-points", "ph-dim", "ph-last-n", "ph-last-t"]
state.keep_widgets(WIDGETS, context=ws.lm.fingerprint)  # the settings survive navigation …
jobs.restore_widgets("persistence", context=ws.lm.fingerprint)  # … and a reload, from this tab's last job

c = st.columns(4)
cloud = c[0].radio(
    "Cloud",
    ["all", "last"],
    horizontal=True,
    key="ph-cloud",
    format_func=lambda x: {"all": "all tokens", "last": "last token"}[x],
    help="all tokens of the sidebar's windows, or the last token of N windows (the zigzag's cloud)",
)
metric = c[1].radio(
    "Distance",
    ["euclidean", "cosine"],
    horizontal=True,
    key="ph-metric",
    help="cosine = 1 − cos(x, y): a dissimilarity, Rips is well defined on it",
)
n_points = c[2].number_input("Subsample (farthest points)", 10, 3000, 300, step=50, key="ph-points")
max_dim = c[3].selectbox(
    "Homology", [1, 2], key="ph-dim", format_func=lambda d: "H0, H1" if d == 1 else "H0, H1, H2 (slower)"
)
last_windows, last_len = 500, 32
drop_first = 0
if cloud == "last":
    c = st.columns(4)
    last_windows = c[0].number_input("Windows (last-token cloud)", 3, 100_000, 500, key="ph-last-n")
    last_len = c[1].number_input("Tokens per window", 2, 4096, 32, key="ph-last-t")
elif ws.calibration.exclude_first == 0:
    hide = st.checkbox(
        "Leave out the first position of each window (attention sink)",
        value=True,
        key="ph-drop-first",
        help="the first token of every window has no context and, in most LLMs, a norm ~100× the "
        "others': one such point far from the cloud squashes every other bar of the barcode "
        "and the diagram (on the bundled model, h15's sink point sits at ~130 median distances)",
    )
    drop_first = 1 if hide else 0
    st.caption(
        "The first position of each window is left out by default (the attention sink dominates the cloud); "
        "untick to include it."
        if hide
        else "The first position of each window is included: expect one far point (the attention sink) to "
        "dominate the scale of the barcode and the diagram."
    )
settings = topo.PersistenceSettings(
    cloud=cloud,
    metric=metric,
    n_points=int(n_points),
    max_dim=int(max_dim),
    last_windows=int(last_windows),
    last_window_len=int(last_len),
    drop_first=drop_first,
)

n_cloud = topo.cloud_size(ws, settings)
# Rips scaled by a ~0.1 s timed probe, the preparation timed on a cloud of this size (both kept for 5 minutes)
total = topo.persistence_seconds_now(settings, ws.n_states, n_cloud, ws.lm.width)
per_state = total / ws.n_states
default = topo.PersistenceSettings(
    cloud=settings.cloud,
    last_windows=settings.last_windows,
    last_window_len=settings.last_window_len,
    drop_first=drop_first,
)
cost = (
    f"Expected cost: about {estimate.format_seconds(total)} for {ws.n_states} states ({per_state:.2f} s each; "
    f"{estimate.speed_note('rips')}; still a factor of 2 either way, more on clouds whose points are nearly "
    "equidistant), plus the capture if it is not cached."
)
cached = False
try:
    topo.check_persistence_settings(settings)
    cached = topo.persistence_is_cached(ws, settings)
except topo.TopologyError as exc:
    st.error(str(exc))
    st.stop()
if cached:
    st.caption("These diagrams are cached.")
elif (
    total > 5
    and total > 2 * (default_total := topo.persistence_seconds_now(default, ws.n_states, n_cloud, ws.lm.width)) + 5
):
    # the default's cost is probed only when the user's is long enough to be compared with it
    st.warning(
        f"{cost} The default ({default.n_points} points, H0 to H{default.max_dim}) takes about "
        f"{estimate.format_seconds(default_total)}."
    )
else:
    st.caption(cost)
job_key = "persistence:" + stable_hash(topo.persistence_params(ws, settings))  # the computation's settings
running = jobs.get(job_key) is not None and jobs.get(job_key).is_active
pressed = st.button("Compute diagrams", type="primary", disabled=cached or running, key="ph-compute")
if pressed:  # a background job: it survives leaving the page, a reload and a dropped connection
    jobs.start(
        job_key,
        f"Rips persistence of {ws.n_states} states ({cloud} tokens, {settings.n_points} points)",
        lambda job: job.set_stage("Capturing the clouds") or topo.layer_persistence(ws, settings, progress=job.report),
        meta={"tag": "persistence", "context": ws.lm.fingerprint, "widgets": jobs.widget_values(WIDGETS)},
        restart=True,
    )  # the button is enabled only when not cached: an old finished job is not the answer
job = jobs.show(job_key)
if job is not None and job.is_active:
    st.stop()
cached = cached or topo.persistence_is_cached(ws, settings)
if not cached:
    st.info(
        "Choose the cloud and press **Compute diagrams**. Every state's diagrams are cached on their own, so an "
        "interrupted run resumes where it stopped."
    )
    st.stop()
t0 = time.perf_counter()
try:
    result = topo.layer_persistence(ws, settings)  # reads the cache
except (topo.TopologyError, TextError) as exc:
    st.error(str(exc))
    st.stop()
if result.computed:
    st.session_state["ph-elapsed"] = (time.perf_counter() - t0, total, result.computed)
if st.session_state.get("ph-elapsed") and pressed:
    took, expected, n_done = st.session_state["ph-elapsed"]
    st.success(
        f"Computed {n_done} state(s) in {estimate.format_seconds(took)} (estimated "
        f"{estimate.format_seconds(expected)})."
    )

n_cloud = int(result.n_cloud[0])  # as captured (duplicates included)
what = (
    "all tokens of the sidebar's windows"
    if cloud == "all"
    else f"the last token of {settings.last_windows} windows of {settings.last_window_len} tokens"
)
st.caption(
    f"Cloud: {what} ({n_cloud:,} points per state"
    + (", the first position of each window left out" if settings.drop_first else "")
    + f"), {metric} distance, farthest-point subsample of {min(n_cloud, settings.n_points)} points, homology "
    f"up to H{settings.max_dim}."
)

st.header("One state")
c = st.columns([3, 1])
layer = c[0].slider("Hidden state", 0, L, L // 2, key="ph-layer", help="h_0 = embeddings, h_l = output of block l − 1")
noise = c[1].number_input(
    "Noise threshold",
    0.0,
    10.0,
    0.05,
    step=0.01,
    format="%.3f",
    key="ph-noise",
    help="bars shorter than this (units of the median pairwise distance) count as noise",
)
dgms = result.diagrams[layer]
c = st.columns(2)
with c[0]:
    bars = pd.concat([pd.DataFrame({"dim": d, "birth": g[:, 0], "death": g[:, 1]}) for d, g in enumerate(dgms)])
    figure_with_csv(
        tf.persistence_barcode(dgms, f"Barcode of h{layer}"), bars, f"barcode_h{layer}.csv", key="ph-barcode"
    )
with c[1]:
    figure_with_csv(
        tf.persistence_diagram(dgms, f"Persistence diagram of h{layer}"),
        bars,
        f"diagram_h{layer}.csv",
        key="ph-diagram",
    )
curves = topo.betti_curves(dgms)
figure_with_csv(
    tf.betti_curves(curves, f"Betti curves of h{layer}"), curves, f"betti_curves_h{layer}.csv", key="ph-betti"
)

st.header("Across layers")
summary = topo.persistence_summary(result, noise=float(noise))
x = list(range(ws.n_states))
dims = range(settings.max_dim + 1)
c = st.columns(2)
with c[0]:
    fig = tf.per_dimension_curves(
        summary, "total_persistence_h", dims, "Total persistence (sum of finite lifetimes)", "total persistence"
    )
    figure_with_csv(fig, summary, "persistence_layers.csv", key="ph-total")
with c[1]:
    fig = tf.per_dimension_curves(summary, "entropy_h", dims, "Persistent entropy (nats)", "entropy")
    figure_with_csv(fig, summary, "persistence_layers.csv", key="ph-entropy")
fig = figures.bars(
    x, summary["h1_above_noise"], f"H1 bars longer than {noise:g} per state", tf.STATE_AXIS, "H1 bars", hover_fmt=".0f"
)
figure_with_csv(fig, summary[["state", "h1_above_noise", "bars_h1"]], "h1_above_noise.csv", key="ph-count")

st.subheader("Diagram distances between layers")
c = st.columns([2, 2, 1])
kind = c[0].radio(
    "Distance",
    ["wasserstein", "bottleneck"],
    horizontal=True,
    key="ph-dist",
    format_func=lambda k: {"wasserstein": "1-Wasserstein", "bottleneck": "bottleneck"}[k],
)
ddim = c[1].radio("Dimension", list(dims), index=1, horizontal=True, key="ph-ddim", format_func=lambda d: f"H{d}")
have = topo.distance_matrix_is_cached(ws, settings, kind, int(ddim))
press = c[2].button("Compute distances", disabled=have, key="ph-compute-dist")
if have or press:
    M = run_with_progress("Diagram distances", lambda p: topo.distance_matrix(ws, settings, kind, int(ddim), p))
    labels = figures.state_labels(ws.n_states)
    fig = figures.heatmap(
        M,
        labels,
        labels,
        f"{kind.capitalize()} distance between H{ddim} diagrams",
        "state",
        "state",
        colorscale="Viridis",
        colorbar_title="distance",
    )
    figure_with_csv(
        fig,
        pd.DataFrame(M, index=pd.Index(labels, name="state"), columns=labels),
        f"{kind}_h{ddim}.csv",
        index=True,
        key="ph-dmat",
    )
else:
    st.caption(
        f"{ws.n_states * (ws.n_states - 1) // 2} pairs of diagrams: about 5-25 s on this machine for 300 "
        "points. Press **Compute distances**; the matrix is cached."
    )
