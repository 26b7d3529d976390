"""Prune and evaluate: pick blocks, apply, compare with the original, export a checkpoint."""

import streamlit as st

from analysis.metrics import registry
from components import state
from components.change import (
    apply_panel,
    evaluation_form,
    export_section,
    result_marker,
    start_apply,
    variant_result,
)
from components.widgets import workspace_caption

st.title("Prune and evaluate")
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks

st.header("1 · Choose blocks to remove")
state.restore_prune_selection(L)  # after a reload: the selection comes back from this tab's store
state.sync_widget("prune-blocks", state.PRUNE_SELECTION)
source = st.session_state.get(state.PRUNE_SOURCE)
if source and st.session_state.get("prune-blocks"):
    st.info(f"Selection from **{source}**.")
available = [m for m in registry.metrics() if m.cached(ws)]
with st.expander("Use a metric's suggestion", expanded=not st.session_state.get("prune-blocks")):
    if not available:
        st.caption("No metric has been computed for this model and text yet: open a view (e.g. Linearity) first.")
    else:
        c = st.columns([3, 1, 1])
        metric = c[0].selectbox("Metric", available, format_func=lambda m: f"{m.label} ({m.direction_text})")
        k = c[1].number_input("Blocks", 1, L - 1, max(1, L // 8))
        c[2].write("")
        if c[2].button("Use suggestion"):
            state.set_prune_selection(metric.suggest(ws, int(k)), f"{metric.label} (k={k})")
            st.rerun()
st.multiselect(
    "Blocks to remove (0-based)",
    list(range(L)),
    key="prune-blocks",
    on_change=state.widget_to_selection,
    args=("prune-blocks",),
    help="block b maps hidden state h_b to h_(b+1)",
)

st.header("2 · Evaluate against the original")
blocks = sorted(st.session_state.get("prune-blocks") or [])
settings = evaluation_form("prune", ws=ws, candidate_share=1.0 - len(blocks) / L)  # with its time estimate
if settings is not None:
    if not blocks:
        st.error("No blocks chosen to remove: pick at least one block above.")
        st.stop()
    start_apply(
        ws,
        "prune",
        {"remove_blocks": blocks},
        settings,
        name=f"minus {','.join(map(str, blocks))}",
        metrics={"selection_source": st.session_state.get(state.PRUNE_SOURCE)},
    )
job = apply_panel(ws, "prune")  # a background job: this page may be left (or reloaded) while it runs
variant = state.latest_variant("remove_blocks")
if variant is None:
    if job is None or not job.is_active:
        st.caption("Nothing applied yet: pick blocks and press **Apply and evaluate**.")
    st.stop()
result_marker(variant, "remove_blocks", st.session_state.get("prune-blocks") or [])
variant_result(ws, variant)

st.header("3 · Export")
export_section(ws, variant, key="prune")
