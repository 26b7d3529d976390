"""Variants: every change kept in this session, quality against cost, and any two side by side."""

import streamlit as st

from analysis.changes.variant import describe_action
from components import state
from components.downstream import downstream_section
from components.evaluation import evaluation_view
from components.variants import healing_gap, quality_cost_figure, variants_frame
from components.widgets import csv_download, figure_with_csv, workspace_caption

st.title("Variants")
st.caption(
    "Each applied change is kept as a variant with its recipe and evaluation (against the original on the "
    "held-out text). Depth-pruned variants share the original's weights, so keeping several costs little."
)
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
kept = state.variants()
if not kept:
    st.info("No variant yet: apply a change on the Prune or Compress page (then heal it on the Heal page).")
    st.stop()

frame = variants_frame(kept)
num = st.column_config.NumberColumn
st.dataframe(
    frame,
    hide_index=True,
    width="stretch",
    column_config={  # compact columns: the table fits the page
        "variant": st.column_config.TextColumn(width="medium"),
        "change": st.column_config.TextColumn(width="medium"),
        "perplexity": num(format="%.2f", width="small"),
        "recovery": num(format="%.3f", width="small"),
        "KL to original": num(format="%.4f", width="small"),
        "top-1 agreement": num(format="percent", width="small"),
        "parameters": num(format="compact", width="small"),
        "weights MiB": num(format="%.1f", width="small"),
        "prefill tokens/s": num(format="%.0f", width="small"),
        "decode ms/token": num(format="%.1f", width="small"),
        "peak memory MiB": num(format="%.0f", width="small"),
    },
)  # empty cells: not measured
csv_download(frame, "variants.csv", key="variants-csv")
for v in kept:  # the healing outcome in words too: the table above is drawn on a canvas
    gap = healing_gap(v)
    if gap.get("gap_closed") is not None:
        st.caption(
            f"**{v.name}**: gap closed {gap['gap_closed']:.1%} — perplexity original "
            f"{gap['perplexity_original']:.3f}, cut {gap['perplexity_cut']:.3f}, healed "
            f"{gap['perplexity_healed']:.3f} on the same held-out tokens."
        )

c = st.columns(2)
x = c[0].selectbox("Cost", ["parameters", "weights MiB", "decode ms/token", "prefill tokens/s", "peak memory MiB"])
y = c[1].selectbox(
    "Quality",
    ["perplexity", "recovery", "KL to original", "top-1 agreement", "gap closed"],
    help="gap closed (healed variants only) = (ppl_cut − ppl_healed) / (ppl_cut − ppl_original)",
)
figure_with_csv(quality_cost_figure(frame, x, y), frame, "variants_quality_cost.csv", key="variants-fig")

st.header("Side by side")
names = ["original"] + [v.name for v in kept]
c = st.columns(2)
left = c[0].selectbox("Left", names, index=0)
right = c[1].selectbox("Right", names, index=len(names) - 1)
cols = st.columns(2)
for col, name in zip(cols, (left, right)):
    with col:
        if name == "original":
            st.markdown("**original**")
            st.caption("the model as loaded")
            if kept[-1].evaluation is not None:
                st.info(kept[-1].evaluation.original.generation or "(empty)")
        else:
            v = next(v for v in kept if v.name == name)
            st.markdown(f"**{v.name}** — {describe_action(v.action)}")
            if v.evaluation is not None:
                evaluation_view(v.evaluation, key=f"side-{name}")
st.caption(
    "To see two variants on the metric pages, choose one under *Compare with* in the sidebar: the pages that "
    "support it draw the original and that variant on one chart, with depth as a fraction."
)

st.header("Downstream tasks")
st.caption(
    "Multiple-choice tasks through lm-eval on the in-memory models, from data on this machine only: the "
    "repository's own task always; MMLU, HellaSwag, WinoGrande, ARC and PIQA when their data is available locally."
)
target = st.selectbox("Variant", [v.name for v in kept], index=len(kept) - 1, key="downstream-variant")
downstream_section(ws, next(v for v in kept if v.name == target))

st.header("Manage")
c = st.columns([3, 1])
drop = c[0].selectbox("Variant", [v.name for v in kept], key="variant-drop")
c[1].write("")
if c[1].button("Forget this variant"):
    state.remove_variant(drop)
    st.rerun()
