"""Overview: every metric's answer to "which blocks are redundant?", side by side, and where they agree."""

import pandas as pd
import streamlit as st

from analysis.metrics import consensus, registry
from components import figures, state
from components.widgets import (
    csv_download,
    figure_with_csv,
    run_with_progress,
    workspace_caption,
)

st.title("Overview: where the metrics agree")
st.caption(
    "Each metric is rank-normalised over the blocks so that 1 marks its most redundant block and 0 its least "
    "(its own direction decides which end is which). A metric's suggestion is its own rule for k blocks; "
    "the consensus is the k blocks suggested by the most metrics (ties: higher mean rank)."
)
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
all_metrics = registry.metrics()

st.header("Metrics")
status = pd.DataFrame(
    [
        {
            "metric": m.label,
            "key": m.key,
            "redundant when": m.redundant_when,
            "computed": "yes" if m.cached(ws) else "no",
            "about": m.description,
        }
        for m in all_metrics
    ]
)
st.dataframe(status, hide_index=True)
missing = [m for m in all_metrics if not m.cached(ws)]
if missing:
    with st.form("compute-missing"):
        chosen = st.multiselect(
            "Compute now (with their default settings)", missing, default=[], format_func=lambda m: m.label
        )
        if st.form_submit_button("Compute") and chosen:
            run_with_progress("Computing", lambda p: consensus.score_table(ws, chosen, progress=p))
            st.rerun()
metrics = consensus.computed_metrics(ws, all_metrics)
if not metrics:
    st.info("No metric is computed yet for this model and text. Open a view, or compute some above.")
    st.stop()

scores = consensus.score_table(ws, metrics)
ranks = consensus.rank_table(scores, metrics)
labels = [m.label for m in metrics]

st.header("Blocks × metrics")
fig = figures.heatmap(
    ranks.to_numpy().T,
    list(range(L)),
    labels,
    "Rank-normalised redundancy (1 = most redundant)",
    figures.BLOCK_AXIS,
    "metric",
    colorscale="Reds",
    zmin=0,
    zmax=1,
    hover="%{y}, block %{x}: %{z:.2f}<extra></extra>",
    colorbar_title="rank",
)
fig.update_yaxes(autorange=True)
figure_with_csv(fig, ranks.reset_index(), "overview_ranks.csv", key="ov-ranks")
with st.expander("Raw scores"):
    st.dataframe(scores, width="stretch")
    csv_download(scores.reset_index(), "overview_scores.csv", key="ov-scores")

st.header("Suggestions and agreement")
k = st.slider("Blocks to remove (k)", 1, L - 1, max(1, L // 8), key="ov-k")
suggested = consensus.suggestions(ws, metrics, k, scores)
v = consensus.votes(suggested, L)
agreed = consensus.consensus(suggested, ranks, k)
rows = [
    {"metric": m.label, "direction": m.direction_text, "suggested blocks": ", ".join(map(str, suggested[m.key]))}
    for m in metrics
]
rows.append(
    {
        "metric": "CONSENSUS",
        "direction": f"most votes of {len(metrics)} metrics",
        "suggested blocks": ", ".join(map(str, agreed)),
    }
)
st.dataframe(pd.DataFrame(rows), hide_index=True)
c = st.columns([2, 1])
pick = c[0].selectbox(
    "Send to the prune page",
    ["consensus"] + [m.key for m in metrics],
    format_func=lambda key: "Consensus" if key == "consensus" else registry.get(key).label,
)
c[1].write("")
if c[1].button("Send to prune", type="primary", key="ov-send"):
    blocks = agreed if pick == "consensus" else suggested[pick]
    state.send_to_prune(blocks, f"overview: {'consensus' if pick == 'consensus' else registry.get(pick).label} (k={k})")

fig = figures.bars(
    list(range(L)),
    v,
    f"Votes: how many of {len(metrics)} metrics suggest each block",
    figures.BLOCK_AXIS,
    "metrics",
    highlight=agreed,
    hover_fmt="d",
)
figure_with_csv(fig, pd.DataFrame({"block": range(L), "votes": v}), "overview_votes.csv", key="ov-votes")
if len(metrics) > 1:
    overlap = consensus.pairwise_overlap(suggested)
    names = [registry.get(key).label for key in overlap.index]
    fig = figures.heatmap(
        overlap.to_numpy(),
        names,
        names,
        "Pairwise overlap of suggestions (Jaccard)",
        "",
        "",
        colorscale="Blues",
        zmin=0,
        zmax=1,
        hover="%{y} / %{x}: %{z:.2f}<extra></extra>",
    )
    figure_with_csv(fig, overlap, "overview_overlap.csv", index=True, key="ov-overlap")
