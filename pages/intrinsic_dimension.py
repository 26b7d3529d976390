"""Intrinsic dimension against depth (METHODS.md §4; Song et al., arXiv 2503.22547)."""

import pandas as pd
import streamlit as st

from analysis.methods.intrinsic_dimension import MIN_POINTS
from analysis.model.architecture import ModelLoadError
from analysis.profiles.intrinsic_dimension import (
    ID_ESTIMATORS,
    ID_LABELS,
    IDSettings,
    has_id_profile,
    id_profile_result,
    workspace_for,
)
from analysis.texts import TextError
from components import comparison, state
from components import geometry_figures as gf
from components.widgets import (
    ensure_capture,
    figure_with_csv,
    run_with_progress,
    workspace_caption,
)

SETTINGS = "id-settings"
SECOND = "id-second-profile"

st.title("Intrinsic dimension")
st.caption(
    "The intrinsic dimension (ID) of every hidden state's token cloud, against depth. Song et al., *Bridging the "
    "dimensional chasm* (arXiv 2503.22547), report an expansion–contraction profile: the ID rises into a working "
    "space, then falls; good models end near 10. Estimators: **TwoNN** (Facco et al. 2017; linear fit, top 10 % of "
    "ratios discarded), **GRIDE** (Denti et al. 2022; neighbours of order k and 2k, swept over k to show ID against "
    "scale) and the **correlation dimension** (Grassberger–Procaccia, between the 0.1 % and 5 % quantiles of pair "
    'distances). The seed paper\'s "correlators" could not be checked — their exact definition is not available '
    "to us — so the correlation dimension is shown as the closest standard estimator, not as the paper's "
    "measure. Each cloud is divided by its median pairwise distance and exact duplicates are removed. **The line is "
    "each estimator on the whole distinct cloud** (what dadapy and scikit-dimension return for it); the band is the "
    "spread over disjoint random subsets of the size shown. TwoNN and GRIDE depend on the sample size — fewer "
    "points probe larger scales — so smaller subsets read higher: the band shows that, and the GRIDE sweep below "
    "puts the scale on its own axis."
)

ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
n_tokens = ws.n_cloud_tokens()

current: IDSettings = st.session_state.get(SETTINGS) or IDSettings(max_points=max(MIN_POINTS, min(4096, n_tokens)))
with st.form("id-form"):
    c = st.columns(4)
    default_size = current.subset_size or max(
        MIN_POINTS, min(current.max_points or n_tokens, n_tokens) // current.n_subsets
    )
    subset_size = c[0].number_input(
        "Points per subset (band)",
        MIN_POINTS,
        1_000_000,
        int(default_size),
        step=256,
        key="id-subset-size",
        help="the band is the spread of the estimates on disjoint random subsets of "
        "this many distinct points (as many subsets as fit); the line is always "
        "the whole cloud. Smaller subsets probe larger scales",
    )
    max_points = c[1].number_input(
        "Points per state",
        MIN_POINTS,
        1_000_000,
        max(MIN_POINTS, min(current.max_points or n_tokens, n_tokens)),
        step=256,
        key="id-points",
        help=f"tokens of each state's cloud used (of {n_tokens:,}), subsampled with a "
        "fixed seed; more points = smaller scales and more time",
    )
    gride_k = c[2].number_input(
        "GRIDE k",
        1,
        32,
        current.gride_k,
        key="id-gride-k",
        help="neighbour orders k and 2k of the GRIDE estimate in the profile",
    )
    c[3].write("")
    submitted = c[3].form_submit_button("Compute ID profile", type="primary", key="id-compute")
try:
    settings = IDSettings(max_points=int(max_points), gride_k=int(gride_k), subset_size=int(subset_size))
except ValueError as exc:
    st.error(str(exc))
    st.stop()
if submitted:
    st.session_state[SETTINGS] = settings
settings = st.session_state.get(SETTINGS)
if settings is None:
    if has_id_profile(ws, current):
        settings = current
    else:
        n_pts = min(current.max_points or n_tokens, n_tokens)
        st.info(
            f"Press **Compute ID profile**: {ws.n_states} hidden states, each on its whole cloud of up to "
            f"{n_pts:,} points and on disjoint subsets of {int(default_size):,} points for the band (about 4–12 s "
            "per state on a CPU; cached afterwards)."
        )
        st.stop()

ensure_capture(ws)
try:
    prof = run_with_progress("Intrinsic dimension", lambda p: id_profile_result(ws, settings, progress=p))
except ValueError as exc:
    st.error(f"The ID profile cannot be computed: {exc}")
    st.stop()
if prof.outcome.message:
    st.warning(prof.outcome.message)
if prof.errors:
    st.warning(
        "No estimate for "
        + "; ".join(f"h{s}: {m}" for s, m in sorted(prof.errors.items()))
        + ". These states are left out of the charts."
    )

st.header("Profile")
c = st.columns([3, 2])
estimators = c[0].multiselect(
    "Estimators",
    list(ID_ESTIMATORS),
    default=["twonn", "gride"],
    format_func=lambda e: ID_LABELS[e],
    key="id-estimators",
)
band = c[1].radio(
    "Band",
    ["range", "std"],
    horizontal=True,
    key="id-band",
    format_func=lambda b: "min–max over subsets" if b == "range" else "subsets' mean ± 1 s.d.",
)
if not estimators:
    st.info("Choose at least one estimator.")
    st.stop()
main = estimators[0]
peak, final = prof.peak(main), prof.final(main)
m = st.columns(4)
if peak is not None:
    m[0].metric(
        f"Peak ({ID_LABELS[main]})",
        f"{peak[1]:.1f}",
        help="the largest ID over h1…hL, the end of the expansion phase (h0, the embedding lookup, holds "
        "only the distinct token vectors and is not a candidate)",
    )
    m[1].metric("Peak state", f"h{peak[0]}", f"depth {peak[0] / L:.2f}", delta_color="off", delta_arrow="off")
if final is not None:
    m[2].metric("Final ID", f"{final[1]:.1f}", f"h{final[0]}", delta_color="off", delta_arrow="off")
m[3].metric("Width (for reference)", prof.width)
st.caption(
    f"Shape ({ID_LABELS[main]}, whole cloud): {prof.shape(main)}. Hidden state h_0 is the embedding "
    f"output; h_{L} already has the final norm applied. Line: each state's whole distinct cloud (up to "
    f"{int(prof.table['n_distinct'].max()):,} points); band: {prof.subset_size_text()} per state."
)
fig = gf.id_profile_chart([(prof.model_name, prof)], estimators, ID_LABELS, x="state", band=band)
figure_with_csv(fig, prof.csv_frame(), "id_profile.csv", key="id-profile")

st.header("ID against scale (GRIDE sweep)")
st.caption(
    "GRIDE with neighbours of order k and 2k for k = 1, 2, 4, …, on the whole cloud (line) and on the "
    f"subsets (band: {prof.subset_size_text()}): the scale axis. Small k probes short scales (sensitive to "
    "noise), large k larger scales (sensitive to curvature); a subset of n/4 points at order k probes about "
    "the scale of the whole cloud at order 4k. A plateau means a well-defined dimension."
)
default_states = sorted({0, peak[0] if peak else 0, L})
c = st.columns([3, 1])
states = c[0].multiselect(
    "States", list(range(L + 1)), default=default_states, format_func=lambda s: f"h{s}", key="id-sweep-states"
)
scale = c[1].radio(
    "x axis",
    ["k", "radius"],
    horizontal=True,
    key="id-sweep-x",
    format_func=lambda v: "neighbour order" if v == "k" else "distance",
)
if states:
    fig = gf.gride_sweep_chart(prof.sweep, states, scale=scale)
    figure_with_csv(fig, prof.sweep[prof.sweep["state"].isin(states)], "id_gride_sweep.csv", key="id-sweep")

st.header("Compare with another model or the pruned variant")
opts = comparison.options(ws.lm)
c = st.columns([2, 2, 1])
kind = c[0].selectbox("Second profile", list(opts), format_func=lambda k: opts[k], key="id-compare")
source = c[1].text_input(
    "Model",
    key="id-compare-source",
    disabled=kind != "other",
    help="a Hugging Face id, a local checkpoint folder or a .gguf file",
)
c[2].write("")
if c[2].button("Compute second profile", disabled=kind == "none", key="id-compare-go"):
    try:
        with st.spinner("Loading the second model (a GGUF is de-quantised once, then cached)…"):
            other = comparison.second_model(kind, ws.lm, source)
        other_ws = workspace_for(ws, other)
        run_with_progress(f"Capturing {other.name}", lambda p: other_ws.capture(progress=p))
        other_prof = run_with_progress(
            f"Intrinsic dimension of {other.name}", lambda p: id_profile_result(other_ws, settings, progress=p)
        )
        st.session_state[SECOND] = (kind, ws.key(), other.name, other_prof)
    except (ModelLoadError, TextError, ValueError) as exc:
        st.error(str(exc))
second = st.session_state.get(SECOND)
if second is not None and second[0] == kind and second[1] == ws.key() and second[3].settings == settings:
    _, _, name, other_prof = second
    label = ws.lm.name.split(" (")[0]
    fig = gf.id_profile_chart(
        [(label, prof), (name, other_prof)],
        [main],
        ID_LABELS,
        x="depth",
        band=band,
        title=f"{ID_LABELS[main]} against depth as a fraction: {label} and {name}",
    )
    both = pd.concat([prof.csv_frame().assign(model=label), other_prof.csv_frame().assign(model=name)])
    figure_with_csv(fig, both, "id_profiles_compared.csv", key="id-compare-fig")
    op, of = other_prof.peak(main), other_prof.final(main)
    if op and of:
        st.caption(f"{name}: {other_prof.n_blocks} blocks, width {other_prof.width}; {other_prof.shape(main)}.")
    if other_prof.errors:
        st.warning(f"{name}: no estimate for " + "; ".join(f"h{s}: {m}" for s, m in sorted(other_prof.errors.items())))
elif kind == "none":
    st.caption(
        "Choose a second model to draw both profiles on one chart, with depth as a fraction (s / L) so that "
        "models of different depth line up."
    )

with st.expander("Table"):
    st.dataframe(prof.csv_frame(), hide_index=True)
