"""The guided presentation: what the model is, where it is redundant, what we removed, what it costs and saves."""

import json
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from analysis import formatting as fmt
from analysis import plots
from analysis.capture.workspace import Workspace
from analysis.changes.variant import describe_action
from analysis.metrics import consensus, registry
from analysis.model.architecture import ModelLoadError
from analysis.model.loading import load_model
from analysis.workflow import recipe as rc
from analysis.workflow.report import speed_lines
from components.presentation import options, style

STEPS = ["What the model is", "Where it is redundant", "What we removed", "What it costs and saves"]
style()
opts = options()
path = Path(opts.recipe)
if not path.is_file():
    st.title("LayerScope")
    st.warning(
        f"No precomputed recipe at `{path}`. Prepare one first — `make demo` runs the demo recipe headless "
        "(`python -m analysis run analysis/recipes/demo.json --out exports/demo`) and then starts this mode."
    )
    st.stop()
recipe = json.loads(path.read_text())


@st.cache_resource(max_entries=1, show_spinner="Opening the model …")
def _workspace(recipe_text: str) -> Workspace:
    r = json.loads(recipe_text)
    return Workspace(lm=load_model(rc.spec_of(r)), text=rc.text_of(r), calibration=rc.calibration_of(r))


try:
    ws = _workspace(path.read_text())
except (ModelLoadError, rc.RecipeError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

step = st.session_state.setdefault("present-step", 0)
st.caption(f"{step + 1} / {len(STEPS)} · {recipe.get('name', '')}")
st.title(STEPS[step])
card = ws.lm.card()
ev = recipe.get("evaluation") or {}
cname = next((k for k in ev if k not in ("settings", "text", "original", "downstream")), None)
removed = (recipe.get("action") or {}).get("remove_blocks", [])

if step == 0:
    c = st.columns(4)
    c[0].metric("Decoder blocks", card["blocks"])
    c[1].metric("Width", card["width"])
    c[2].metric("Parameters", f"{card['parameters'] / 1e6:.0f} M")
    c[3].metric("Weights", f"{card['memory_bytes'] / 2**20:.0f} MiB")
    st.markdown(
        f"**{ws.lm.name}** — a {card['architecture']} with {card['blocks']} decoder blocks. We fed it "
        f"{ws.calibration.n_windows} windows of {ws.calibration.window_len} tokens of *{ws.text.label}* and "
        "looked at what every block does to them."
    )
elif step == 1:
    computed = consensus.computed_metrics(ws)
    if not computed:
        st.warning("No metric is precomputed for this model and text.")
    else:
        k = max(1, len(removed) or ws.n_blocks // 8)
        scores = consensus.score_table(ws, computed)
        ranks = consensus.rank_table(scores, computed)
        suggested = consensus.suggestions(ws, computed, k, scores)
        fig = plots.heatmap(
            ranks.to_numpy().T,
            list(range(ws.n_blocks)),
            [m.label for m in computed],
            "Which blocks each metric finds redundant (darker = more)",
            plots.BLOCK_AXIS,
            "",
            colorscale="Reds",
            zmin=0,
            zmax=1,
        )
        fig.update_yaxes(autorange=True)
        st.plotly_chart(fig, config={"displayModeBar": False})
        agreed = consensus.consensus(suggested, ranks, k)
        st.markdown(f"### The metrics agree on blocks **{', '.join(map(str, agreed))}**")
    for section in registry.report_sections()[:1]:
        for kind, obj, caption in section.build(ws)[1:2]:
            if kind == "figure":
                st.plotly_chart(obj, config={"displayModeBar": False})
                st.caption(caption)
elif step == 2:
    st.markdown(f"### {describe_action(recipe.get('action') or {})}")
    colors = ["#d62728" if b in removed else "#1f77b4" for b in range(card["blocks"])]
    fig = go.Figure(
        go.Bar(
            x=list(range(card["blocks"])),
            y=[1] * card["blocks"],
            marker_color=colors,
            hovertemplate="block %{x}<extra></extra>",
        )
    )
    fig.update_layout(
        height=220, yaxis_visible=False, xaxis_title="block (red = removed)", margin=dict(l=20, r=20, t=10, b=50)
    )
    st.plotly_chart(fig, config={"displayModeBar": False})
    source = (recipe.get("metrics") or {}).get("selection_source")
    if source:
        st.markdown(f"Chosen from: **{source}**")
else:
    if not cname:
        st.warning("This recipe has no evaluation: run it with `python -m analysis run` first.")
        st.stop()
    o, c_ = ev["original"], ev[cname]
    cols = st.columns(4)
    saved = 1 - c_["parameters"] / o["parameters"]
    cols[0].metric("Parameters", f"{c_['parameters'] / 1e6:.0f} M", f"−{saved:.0%}", delta_color="inverse")
    cols[1].metric(
        "Perplexity",
        fmt.perplexity(c_["perplexity"]),
        f"{c_['perplexity'] - o['perplexity']:+.2f} vs {fmt.perplexity(o['perplexity'])}",
        delta_color="inverse",
    )
    cols[2].metric("Recovery", fmt.ratio(c_.get("recovery")))
    cols[3].metric("Same next token", fmt.percent(c_.get("top1_agreement")))
    if c_.get("decode_ms_per_token") and o.get("decode_ms_per_token"):
        st.markdown(
            "Speed: " + "; ".join(speed_lines(o, c_)) + f" (a change only where the measured ranges do not "
            f"overlap); weights **{fmt.mib(c_['weight_bytes'])}** instead of {fmt.mib(o['weight_bytes'])}."
        )
    st.markdown(f"Same prompt, greedy: *{ev.get('settings', {}).get('prompt', '')}*")
    g = st.columns(2)
    g[0].markdown("**original**")
    g[0].info(o.get("generation", ""))
    g[1].markdown(f"**{cname}**")
    g[1].info(c_.get("generation", ""))

c = st.columns([1, 1, 6])
if c[0].button("◀ Back", disabled=step == 0):
    st.session_state["present-step"] = step - 1
    st.rerun()
if c[1].button("Next ▶", disabled=step == len(STEPS) - 1):
    st.session_state["present-step"] = step + 1
    st.rerun()
