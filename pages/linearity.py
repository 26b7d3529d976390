"""Linearity between layers (arXiv 2405.12250) beside block influence (ShortGPT) and angular distance."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis.methods import baselines as bl
from analysis.methods.linearity import NotEnoughTokens
from analysis.metrics import registry
from analysis.metrics.families.baselines import baseline_results, block_influence_note
from analysis.metrics.families.linearity import linearity_results
from components import figures, state
from components.figures import comparison_curves
from components.widgets import (
    ensure_capture,
    figure_with_csv,
    run_with_progress,
    suggestion_row,
    workspace_caption,
)

st.title("Linearity and baselines")
st.caption(
    "Razzhigaev et al., *Your Transformer is Secretly Linear* (arXiv 2405.12250): linearity(X, Y) = "
    "1 − min_A ‖X̃A − Ỹ‖²_F over any linear map A, with columns centred and each cloud divided by its Frobenius "
    "norm. Beside it the usual baselines: block influence (ShortGPT, arXiv 2403.03853) and angular distance "
    "(Gromov et al., arXiv 2403.17887)."
)

ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
ensure_capture(ws)
L = ws.n_blocks
blocks = list(range(L))

st.header("Linearity of every pair of hidden states")
try:
    lin = run_with_progress("Linearity", lambda p: linearity_results(ws, p))
except NotEnoughTokens as exc:
    lin = None
    st.warning(f"The heatmap is not coloured: {exc}")
if lin is not None and lin.get("matrix_skipped"):
    st.warning(f"The all-pairs heatmap was left out: {lin['matrix_skipped']}")
elif lin is not None:
    M = lin["matrix"]
    labels = figures.state_labels(L + 1)
    fig = figures.heatmap(
        M,
        labels,
        labels,
        f"Linearity from h_i (row) to h_j (column), {lin['tokens']:,} tokens",
        "to state",
        "from state",
        zmin=float(np.nanmin(M)),
        zmax=1.0,
        colorbar_title="linearity",
    )
    figure_with_csv(fig, pd.DataFrame(M, index=labels, columns=labels), "linearity.csv", index=True, key="linmat")
if lin is not None:
    st.header("Consecutive blocks, with and without the residual")
    st.caption(
        "With residual: linearity of h_b → h_(b+1); the paper reports ≈ 0.99 for every decoder it tried. "
        "Without residual: linearity of h_b → h_(b+1) − h_b, the block's own contribution — far lower."
    )
    curve = pd.DataFrame(
        {"block": blocks, "linearity": lin["consecutive"], "linearity_no_residual": lin["without_residual"]}
    )
    fig = figures.curves(
        blocks,
        {"with residual": curve.linearity, "without residual": curve.linearity_no_residual},
        "Linearity of each block",
        figures.BLOCK_AXIS,
        "linearity",
    )
    figure_with_csv(fig, curve, "linearity_consecutive.csv", key="lincurve")

st.header("Block influence")
base = run_with_progress("Baselines", lambda p: baseline_results(ws, p))
bi = base["block_influence"]
k_default = max(1, L // 8)
k_bi = st.slider("Blocks to suggest", 1, L - 1, k_default, key="k-bi")
bi_metric = registry.get("block_influence")
bi_pick = bi_metric.suggest(ws, k_bi, scores=bi)
fig = figures.bars(
    blocks,
    bi,
    "Block influence BI_b = 1 − mean cos(h_b, h_(b+1)) (low = redundant)",
    figures.BLOCK_AXIS,
    "block influence",
    highlight=bi_pick,
)
figure_with_csv(fig, pd.DataFrame({"block": blocks, "block_influence": bi}), "block_influence.csv", key="bi")
if block_influence_note(bi):
    st.caption(block_influence_note(bi))

st.header("Angular distance between h_l and h_(l+n)")
st.caption(
    f"d(l, n) = arccos(cos(h_l, h_(l+n)))/π on the last token of each of {base['windows']} windows. "
    "Removing the range [l, l+n) of n blocks is cheapest where d is smallest."
)
D = base["angular"]
fig = figures.heatmap(
    D,
    list(range(1, L + 1)),
    blocks,
    "Angular distance d(l, n)",
    "block size n",
    "start block l",
    colorscale="Viridis_r",
    hover="start %{y}, size %{x}: %{z:.4f}<extra></extra>",
    colorbar_title="d",
)
figure_with_csv(
    fig,
    pd.DataFrame(D, index=pd.Index(blocks, name="start"), columns=[f"n={n}" for n in range(1, L + 1)]),
    "angular_distance.csv",
    index=True,
    key="ang",
)
best = pd.DataFrame(bl.best_ranges(D), columns=["size n", "start", "end (exclusive)", "distance"])
best["range"] = [f"[{s}, {e})" for s, e in zip(best["start"], best["end (exclusive)"])]
with st.expander("Best range for every size"):
    st.dataframe(best[["size n", "range", "distance"]], hide_index=True)

st.header("Suggested blocks to remove")
k = st.slider("How many blocks", 1, L - 1, k_default, key="k-suggest")
for key in ("linearity", "linearity_no_residual", "block_influence", "angular_distance"):
    metric = registry.get(key)
    if key.startswith("linearity") and lin is None:
        continue
    suggestion_row(ws, metric, k, key=f"lin-{key}")

other = state.compare_workspace(ws)
if other is not None:
    st.header(f"Compared with {state.compare_variant().name}")
    st.caption(
        "The original and the variant on the same calibration windows, with depth as a fraction of each "
        "model's blocks (the variant has fewer)."
    )
    if not (other.has_result("linearity", {"v": 1}) and other.has_result("baselines", {"v": 1})):
        if st.button(f"Compute the views on {state.compare_variant().name}"):
            run_with_progress("Variant", lambda p: (linearity_results(other, p), baseline_results(other, p)))
            st.rerun()
    else:
        lin_o, base_o = linearity_results(other), baseline_results(other)
        L_o = other.n_blocks
        fig = comparison_curves(
            {
                "original": (np.arange(L) / L, lin["consecutive"] if lin is not None else bi * np.nan),
                "variant": (np.arange(L_o) / L_o, lin_o["consecutive"]),
            },
            "Linearity of each block",
            "linearity",
        )
        st.plotly_chart(fig, key="cmp-lin")
        fig = comparison_curves(
            {"original": (np.arange(L) / L, bi), "variant": (np.arange(L_o) / L_o, base_o["block_influence"])},
            "Block influence",
            "block influence",
        )
        st.plotly_chart(fig, key="cmp-bi")
