"""Replacing blocks by linear maps: one full-residual map per block (Razzhigaev et al.), or ReplaceMe (a run of blocks
removed and one map folded into the block before it: a plain checkpoint)."""

import pandas as pd
import streamlit as st

from analysis.changes import low_rank as cp
from components import replaceme, state
from components.change import (
    apply_panel,
    evaluation_form,
    export_section,
    result_marker,
    start_apply,
    variant_result,
)
from components.compress import also_remove, residual_figure
from components.widgets import figure_with_csv, run_with_progress, workspace_caption

st.title("Linear replacement of blocks")
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
METHODS = {
    "linear": "a linear map per block (full residual; the project's loader)",
    "replaceme": "ReplaceMe: a run removed, one map folded into the block before it (plain checkpoint)",
}
state.keep_widgets(["replace-method"])  # the method chosen survives navigation (its widgets are kept below)
method = st.radio(
    "Method",
    list(METHODS),
    format_func=METHODS.get,
    key="replace-method",
    horizontal=True,
    help="removing blocks without a map is the prune page",
)
if method == "replaceme":
    replaceme.page(ws)
    st.stop()
st.caption(
    "Razzhigaev et al., *Your Transformer is Secretly Linear* (arXiv 2405.12250): consecutive hidden states are "
    "nearly linear in each other, so a block can be replaced by one affine map `h ↦ h·W + c`, fitted by "
    "least squares from the block's real input `h_b` to its real output `h_(b+1)` on the calibration tokens (METHODS.md "
    "§1). The map has d² + d parameters instead of the block's attention and MLP."
)
L = ws.n_blocks
c = ws.calibration

st.header("1 · How linear is each block?")
bm = run_with_progress(
    "Streaming every block's input and output moments",
    lambda p: cp.block_moments(ws.lm, ws.text, c.n_windows, c.window_len, progress=p),
)
residuals = bm.residuals
st.caption(
    f"Relative residual `‖H_b W + c − H_(b+1)‖_F / ‖H_(b+1) − mean‖_F` of the fitted map on {bm.tokens:,} "
    "calibration tokens (0 = exactly affine, 1 = no better than the mean), from moments streamed in one pass "
    "and cached. The last block is fitted on its own output, before the final norm. In-sample: with "
    f"{bm.tokens:,} tokens and `d = {ws.lm.width}` the fit has {ws.lm.width**2 + ws.lm.width:,} parameters per "
    "block, so the held-out evaluation below is what counts."
)
if bm.tokens < 2 * ws.lm.width:
    st.warning(
        f"Only {bm.tokens} calibration tokens for width {ws.lm.width}: the fit can match them exactly and the "
        "residual says nothing. Use more windows in the sidebar (at least 2·d tokens)."
    )
state_key = "replace-blocks"
state.keep_widgets([state_key, "replace-k", "replace-remove"], context=ws.lm.fingerprint)  # kept on navigation
k = st.slider("Blocks to suggest (lowest residual)", 1, L - 1, max(1, L // 10), key="replace-k")
cols = st.columns([3, 1])
lowest = sorted(int(b) for b in residuals.argsort()[:k])
cols[0].markdown(f"Lowest residual: blocks `{', '.join(map(str, lowest))}`")
if cols[1].button("Use these blocks", key="replace-use"):
    st.session_state[state_key] = lowest
chosen = st.multiselect(
    "Blocks to replace by linear maps (0-based)", list(range(L)), key=state_key, help="block b maps h_b to h_(b+1)"
)
figure_with_csv(
    residual_figure(residuals, chosen),
    pd.DataFrame({"block": range(L), "fit_residual": residuals}),
    "linear_fit_residual.csv",
    key="replace-residual",
)

st.header("2 · Evaluate against the original")
removed = also_remove(ws, "replace", exclude=chosen)
settings = evaluation_form("replace")
if settings is not None:
    blocks = sorted(chosen)
    if not blocks:
        st.error("No blocks chosen to replace: pick at least one block above.")
        st.stop()
    both = sorted(set(blocks) & set(removed))
    if both:
        st.error(
            f"Block{'s' if len(both) > 1 else ''} {', '.join(map(str, both))} cannot be both replaced and removed."
        )
        st.stop()
    action = {"replace_linear": blocks}
    if removed:
        action["remove_blocks"] = removed
    name = f"linear {','.join(map(str, blocks))}" + (f" minus {','.join(map(str, removed))}" if removed else "")
    start_apply(ws, "replace", action, settings, name=name)
job = apply_panel(ws, "replace")  # a background job: this page may be left (or reloaded) while it runs
variant = state.latest_variant("replace_linear")
if variant is None:
    if job is None or not job.is_active:
        st.caption("Nothing applied yet: pick blocks and press **Apply and evaluate**.")
    st.stop()
result_marker(variant, "replace_linear", chosen, what="choice of blocks to replace")
variant_result(ws, variant)
fit = (cp.record_of(variant.model).get("replace_linear") or {}).get("fit_residual", {})
if fit:
    st.caption("Fit residual of the replaced blocks: " + ", ".join(f"block {b}: {r:.4f}" for b, r in fit.items()))

st.header("3 · Export")
st.caption(
    "A linear map cannot be written as a Llama decoder layer (its RMSNorm and gated MLP are not linear), so the "
    "checkpoint records the replaced blocks in config.json (`layerscope_linear_blocks`) and stores each map as "
    "`<block>.linear.weight` / `.bias`: reload it with the project's loader."
)
export_section(ws, variant, key="replace", forms=("dense", "factorised"))
