"""Zigzag persistence across layers (Gardinazzi et al., arXiv 2410.11042) and its pruning suggestion."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis.cache import stable_hash
from analysis.profiles import topology as topo
from analysis.texts import TextError
from components import comparison, figures, jobs, state
from components import topology_figures as tf
from components.widgets import csv_download, figure_with_csv, run_with_progress

SETTINGS = "zigzag_settings"

st.title("Zigzag persistence")
st.caption(
    "Gardinazzi et al., *Persistent Topological Features in Large Language Models* (arXiv 2410.11042, ICML 2025). "
    "The last-token cloud of every hidden state h_0 … h_L (one point per window) → symmetrised k-nearest-neighbour "
    "graph → clique complex up to dimension m → the zigzag K_0 ⊇ K_0∩K_1 ⊆ K_1 ⊇ … ⊆ K_L → barcodes from "
    "Dionysus 2's FastZigzag (Dey & Hou, arXiv 2204.11080, the algorithm the paper's authors used). **What the "
    "paper used:** k scanned from 1 to 15, m = 4, α = 0, and the pruning rule "
    "Z̄_1(l) ≥ 0.9 · max (0.8 also shown); its clouds are the normalised inputs of each block's MLP. **Here** the "
    "states are the residual-stream last-token clouds (h_L already has the final norm applied); m = 3 by "
    "default, m = 4 (the paper's) runs at the default size too. Only H_p with p < m is meaningful: the H_m bars are artefacts of cutting the "
    "complex at dimension m and are left out."
)

ws = state.workspace()
if ws is None:
    st.stop()
if SETTINGS not in st.session_state:  # a reloaded tab: the settings of its last zigzag job, which it finds again
    last = jobs.latest("zigzag")
    if last is not None and last.meta.get("context") == ws.lm.fingerprint:
        st.session_state[SETTINGS] = topo.ZigzagSettings(**last.meta["settings"])
current: topo.ZigzagSettings = st.session_state.get(SETTINGS) or topo.ZigzagSettings()


def job_key(settings: topo.ZigzagSettings) -> str:
    return "zigzag:" + stable_hash(topo.zigzag_params(ws.lm, ws.text, settings))


def too_large(job) -> None:
    if isinstance(job.exception, topo.ZigzagTooLarge):
        st.warning(f"{job.error} Tick **Run even if the estimated cost is large** and press **Compute zigzag** again.")
    else:
        st.error(job.error)


with st.form("zigzag-form"):
    c = st.columns(4)
    n_windows = c[0].number_input(
        "Windows (points)",
        1,
        100_000,
        current.n_windows,
        key="zz-windows",
        help="the first N non-overlapping windows of the text; one point per window",
    )
    window_len = c[1].number_input("Tokens per window", 2, 4096, current.window_len, key="zz-len")
    k = c[2].number_input("k (nearest neighbours)", 1, 100, current.k, key="zz-k", help="paper: scanned 1-15")
    m = c[3].number_input(
        "m (clique dimension)",
        1,
        10,
        current.max_dim,
        key="zz-m",
        help="paper: 4 (runs at the default size in a few seconds); 1..4 accepted (above, the simplex count explodes)",
    )
    allow_large = st.checkbox(
        "Run even if the estimated cost is large",
        key="zz-allow",
        help=f"above about {topo.ZIGZAG_WARN_SECONDS:.0f} s (estimated) the run asks first",
    )
    submitted = st.form_submit_button("Compute zigzag", type="primary")

st.caption(
    f"**{ws.lm.name}** · {ws.n_blocks} blocks · text **{ws.text.label}**. The zigzag uses its own windows "
    "(above), not the sidebar's; state s is the output of block s − 1, and blocks are 0-based."
)

result = None
if submitted:
    settings = topo.ZigzagSettings(int(n_windows), int(window_len), int(k), int(m))
    try:
        topo.check_zigzag_settings(settings, ws.lm, ws.text)
        st.session_state[SETTINGS] = current = settings
        # a background job: it survives leaving the page, a reload and a dropped connection
        jobs.start(
            job_key(settings),
            f"Zigzag of {settings.n_windows} windows (k = {settings.k}, m = {settings.max_dim})",
            lambda job: job.set_stage("Capturing the last-token clouds")
            or topo.compute_zigzag(ws.lm, ws.text, settings, progress=job.report, allow_large=allow_large),
            meta={"tag": "zigzag", "context": ws.lm.fingerprint, "settings": settings.to_dict()},
            restart=not topo.zigzag_is_cached(ws.lm, ws.text, settings),
        )
    except (topo.TopologyError, TextError) as exc:
        st.error(str(exc))
        st.stop()
job = jobs.show(
    job_key(current), on_done=lambda j: st.session_state.__setitem__("_zigzag_fresh", j.result), on_error=too_large
)
if job is not None and job.is_active:
    st.stop()
fresh = st.session_state.pop("_zigzag_fresh", None)
if fresh is not None and fresh.settings == current:
    result = fresh  # computed by the job just now
elif topo.zigzag_is_cached(ws.lm, ws.text, current):
    result = topo.compute_zigzag(ws.lm, ws.text, current)  # reads the cache

if result is None:
    if not submitted and job is None:
        s = current
        st.info(
            f"Press **Compute zigzag** to capture the last token of {s.n_windows} windows of {s.window_len} "
            f"tokens of {ws.text.label} (once, cached) and run the zigzag with k = {s.k}, m = {s.max_dim}. After "
            "the capture the default setting takes a few seconds (graphs, cliques and FastZigzag; more on a busy "
            "machine)."
        )
        if topo.zigzag_estimate_is_cached(ws.lm, ws.text, s):
            st.caption(f"Counted before: {topo.zigzag_estimate(ws.lm, ws.text, s).describe()}.")
    st.stop()

s, info = result.settings, result.info
st.success(
    f"{s.n_windows} points × {result.n_layers} states, k = {s.k}, m = {s.max_dim}: "
    f"{info['n_simplices']:,} distinct simplices, {info['n_events']:,} zigzag events, "
    f"{info.get('seconds', 0):.1f} s (estimated {info.get('estimated_seconds', 0):.0f} s); "
    f"{'read from the cache' if result.outcome and result.outcome.status == 'hit' else 'computed now'}."
)

st.header("View")
c = st.columns(5)
dims = list(range(max(1, s.max_dim)))
p = c[0].selectbox(
    "Dimension p", dims, index=min(1, len(dims) - 1), key="zz-p", help="homology dimension of Z_p and Z̄_p"
)
alpha = c[1].number_input(
    "α (weight exponent)",
    -5.0,
    5.0,
    0.0,
    step=0.5,
    key="zz-alpha",
    help="Z̄(l) weights layer i by |l − i|^α; α = 0 is the paper's plain mean",
)
threshold = round(c[2].slider("Threshold (fraction of max)", 0.5, 1.0, 0.9, step=0.05, key="zz-threshold"), 2)
min_life = c[3].number_input(
    "Minimum lifetime (layers)",
    1,
    result.n_layers,
    1,
    key="zz-min-life",
    help="keep bars alive in at least this many layers; 1 keeps all",
)
cap = c[4].number_input("Bars drawn", 10, 20_000, 300, step=50, key="zz-cap")
st.caption(
    f"A bar is alive in layers birth … death − 1. The paper's same-layer rule drops bars born and dead in the same "
    f"layer: with the index → layer map i//2 + i%2 those are exactly the classes that live only inside an "
    f"intersection K_(l−1) ∩ K_l and in no layer ({info['n_same_layer_dropped']:,} dropped here; "
    f"{info['n_top_dim_bars']:,} H_{s.max_dim} artefacts left out). A loop present in one layer only — e.g. the "
    "middle one of three — is born in that layer and dies entering the next intersection: a one-layer bar, kept "
    "(it counts in that layer's β); a minimum lifetime of 2 drops it. With a minimum lifetime above 1 the Betti "
    "numbers below count the remaining bars only."
)

fractions = tuple(dict.fromkeys([float(threshold), 0.8]))
try:
    view = topo.describe_zigzag(result, p=int(p), alpha=float(alpha), min_lifetime=int(min_life), fractions=fractions)
except topo.TopologyError as exc:
    st.error(str(exc))
    st.stop()
n = result.n_layers
labels = figures.state_labels(n)

st.header("Zigzag barcode")
fig, shown, hidden = tf.zigzag_barcode(view.bars, n, cap=int(cap))
figure_with_csv(
    fig,
    view.bars[["dim", "birth_index", "death_index", "birth_layer", "death_layer"]],
    "zigzag_bars.csv",
    key="zz-bars",
)
if hidden:
    st.caption(f"{hidden:,} shorter bars are not drawn (the CSV has all {len(view.bars):,}).")

st.header("What a persistent feature is made of")
st.caption(
    "Each point is one window of text (its last token's hidden state). A long-lived **H1 bar** is a loop of the "
    "k-nearest-neighbour graph: a ring of windows, each a neighbour of the next, around a hole, that survives from "
    "layer to layer. A long-lived **H0 bar** is a cluster of windows cut off from the rest. Below: the windows that "
    "form a chosen bar at a chosen layer (Dionysus' apex representative of the bar, read at that layer; every chain "
    "is checked to be a loop of that layer's graph), drawn over the layer's 2-D projection; hover a point for its "
    "text (the last token is in ⟦ ⟧). The table lists, per window, the layers of the bar in which it is part of it."
)
reps = None
if topo.representatives_are_cached(ws.lm, ws.text, s):
    reps = topo.zigzag_representatives(ws.lm, ws.text, s)
elif st.button(
    "Find the windows of the longest bars",
    key="zz-rep-go",
    help=f"representatives of the {topo.REPRESENTATIVE_TOP[1]} longest H1 and "
    f"{topo.REPRESENTATIVE_TOP[0]} longest H0 bars in every layer they live in (cached)",
):
    reps = run_with_progress(
        "Cycle representatives", lambda p: topo.zigzag_representatives(ws.lm, ws.text, s, progress=p)
    )
else:
    st.info(
        "Press **Find the windows of the longest bars**: FastZigzag runs once more, keeping its reduction "
        "matrices, and the representatives of the longest bars are lifted to every layer (about 2-3× the "
        "zigzag's time; cached)."
    )
if reps is not None and not reps.bars.empty:
    c = st.columns([1, 3, 1])
    dims_here = sorted(int(d) for d in reps.bars["dim"].unique())
    rep_dim = c[0].radio(
        "Feature",
        dims_here,
        index=dims_here.index(1) if 1 in dims_here else 0,
        key="zz-rep-dim",
        format_func=lambda d: "H1 loops" if d == 1 else "H0 clusters",
    )
    choices = reps.bars[reps.bars["dim"] == rep_dim]["bar"].tolist()
    rep_bar = c[1].selectbox("Bar (longest first)", choices, key="zz-rep-bar", format_func=reps.describe)
    method = c[2].radio(
        "Projection",
        ["pca", "umap"],
        horizontal=True,
        key="zz-rep-proj",
        format_func=lambda m_: m_.upper(),
        help="UMAP takes ~10-20 s per layer the first time",
    )
    rep_layers = reps.layers(rep_bar)
    if not rep_layers:
        st.warning("No verified representative for this bar in any layer.")
    else:
        rep_layer = st.select_slider(
            "Layer",
            rep_layers,
            value=rep_layers[len(rep_layers) // 2],
            key="zz-rep-layer",
            format_func=lambda x: f"h{x}",
        )
        windows = reps.windows(rep_bar, rep_layer)
        coords = topo.layer_projection(ws.lm, ws.text, s, rep_layer, method)
        cycle_w = windows[windows["role"] == "representative"]["window"].tolist()
        cluster_w = windows[windows["role"] == "cluster"]["window"].tolist()
        what = f"a loop of {len(cycle_w)} windows" if rep_dim == 1 else f"a cluster of {len(cluster_w)} windows"
        fig = tf.representative_figure(
            coords,
            reps.texts,
            reps.edges(rep_bar, rep_layer),
            cycle_w,
            cluster_w,
            f"{reps.describe(rep_bar)} — at h{rep_layer}: {what}",
            axis="PC" if method == "pca" else "UMAP",
        )
        frame = reps.frame()
        figure_with_csv(
            fig, frame[frame["bar"] == rep_bar], f"zigzag_representative_bar{rep_bar}.csv", key="zz-rep-fig"
        )
        st.dataframe(
            windows,
            hide_index=True,
            key="zz-rep-table",
            column_config={
                "layers": st.column_config.TextColumn("layers it is part of the bar"),
                "degree": st.column_config.NumberColumn("edges of the loop at it"),
            },
        )
        missing = [layer for b_, layer in reps.unverified if b_ == rep_bar]
        if missing:
            st.caption(
                "Not shown for this bar (the lifted chain failed the loop check there): "
                + ", ".join(f"h{x}" for x in missing)
                + "."
            )
        csv_download(frame, "zigzag_representatives.csv", "CSV of every representative", key="zz-rep-all")

c = st.columns(2)
with c[0]:
    betti = pd.DataFrame({"state": range(n), **{f"betti_{d}": view.betti[i] for i, d in enumerate(view.dims)}})
    fig = figures.curves(
        range(n),
        {f"β{d}": view.betti[i] for i, d in enumerate(view.dims)},
        "Betti numbers per layer",
        tf.STATE_AXIS,
        "Betti number",
        hover_fmt=".0f",
    )
    figure_with_csv(fig, betti, "zigzag_betti.csv", key="zz-betti")
with c[1]:
    fig = figures.bars(
        range(n), view.births, f"Births' relative frequency, H{view.p}", tf.STATE_AXIS, "share of the bars born here"
    )
    figure_with_csv(
        fig, pd.DataFrame({"state": range(n), f"births_{view.p}": view.births}), "zigzag_births.csv", key="zz-births"
    )

st.header(f"Inter-layer persistence Z_{view.p}(l1, l2)")
st.caption(
    "Z_p(l1, l2) = number of p-bars born at or before min(l1, l2) and still alive in max(l1, l2), divided "
    "by β_p(l1) (0 where β_p(l1) = 0): the share of the features of l1 (row) that persist to l2. "
    "Z_p(l, l) = 1 wherever β_p(l) > 0."
)
fig = figures.heatmap(
    view.Z, labels, labels, f"Z_{view.p}(l1 = row, l2 = column)", "l2", "l1", zmin=0, zmax=1, colorbar_title="Z"
)
figure_with_csv(
    fig, pd.DataFrame(view.Z, index=pd.Index(labels, name="l1"), columns=labels), "zigzag_Z.csv", index=True, key="zz-Z"
)

st.header("Pruning suggestion")
first = view.suggestions[fractions[0]]
fig = tf.zbar_curve(view.zbar, view.p, view.alpha, fractions, first["states"])
layers = topo.zigzag_layers_frame(result, view)
figure_with_csv(fig, layers, "zigzag_layers.csv", key="zz-zbar")
st.caption(
    "Z̄_p(l) = Σ_i w(l, i) Z_p(l, i) / Σ_i w(l, i) with w = |l − i|^α. Suggested: the states with "
    "Z̄_p ≥ fraction · max (never h_0, nor the last state, which carries the final norm); state s is removed by "
    "removing block s − 1."
)
for f in fractions:
    sug = view.suggestions[f]
    ranges = ", ".join(f"[{a}, {b})" for a, b in sug["ranges"]) or "—"
    cols = st.columns([4, 1])
    cols[0].markdown(
        f"**Z̄_{view.p} ≥ {f:g} · max**: remove blocks `{', '.join(map(str, sug['blocks'])) or '—'}` "
        f"(ranges {ranges}; states {', '.join(f'h{x}' for x in sug['states']) or '—'})"
    )
    if cols[1].button("Send to prune page", key=f"zz-send-{f:g}", disabled=not sug["blocks"]):
        state.send_to_prune(
            sug["blocks"],
            f"Zigzag persistence Z̄_{view.p} ≥ {f:g}·max "
            f"(k={s.k}, m={s.max_dim}, α={view.alpha:g}, {s.n_windows} windows)",
        )
compared = comparison.compared_variant_section(
    ws, "the zigzag", "with the same windows, k, m, p, α and minimum lifetime", key="zz-compare"
)
if compared is not None:
    other, name = compared
    try:
        res_o = run_with_progress(
            f"Zigzag of {name}", lambda p_: topo.compute_zigzag(other.lm, other.text, s, progress=p_, allow_large=True)
        )
        view_o = topo.describe_zigzag(
            res_o, p=int(p), alpha=float(alpha), min_lifetime=int(min_life), fractions=fractions
        )
    except (topo.TopologyError, TextError, ValueError) as exc:
        st.error(f"The zigzag cannot be computed on {name}: {exc}")
    else:
        n_o = res_o.n_layers
        fig = figures.comparison_curves(
            {"original": (np.arange(n) / (n - 1), view.zbar), name: (np.arange(n_o) / (n_o - 1), view_o.zbar)},
            f"Averaged inter-layer persistence Z̄_{view.p}, α = {view.alpha:g}",
            f"Z̄_{view.p}",
            x_title="depth (hidden state index / last index)",
        )
        frame = pd.concat(
            [
                pd.DataFrame({"model": "original", "state": range(n), "zbar": view.zbar}),
                pd.DataFrame({"model": name, "state": range(n_o), "zbar": view_o.zbar}),
            ]
        )
        figure_with_csv(fig, frame, "zigzag_zbar_compared.csv", key="zz-cmp-fig")
with st.expander("Settings of this result"):
    st.json(topo.zigzag_suggestion(result, view, ws.lm, ws.text))
