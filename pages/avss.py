"""AVSS: activation variance and sparsity per block (Song et al., arXiv 2411.02117; METHODS.md §3)."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis.metrics import registry
from analysis.metrics.families.avss import contradictions
from analysis.profiles.avss import (
    DEFAULT_EPS,
    DEFAULT_RELATIVE_EPS,
    DEFAULT_SHARE,
    NEAR_ZERO_SPARSITY,
    SITES,
    AVSSSettings,
    avss_result,
    is_moe,
    site_label,
)
from components import comparison, state
from components import geometry_figures as gf
from components.figures import comparison_curves
from components.widgets import figure_with_csv, run_with_progress, workspace_caption

RELATIVE_KEY = "avss-relative"

st.title("AVSS: activation variance and sparsity")
st.caption(
    "Song et al., *AVSS: Layer importance evaluation in LLMs via activation variance-sparsity analysis* "
    "(arXiv 2411.02117). Per block b and activation site: variance AV_b = variance over hidden units of "
    "each window's mean-pooled activation, averaged over windows; sparsity AS_b = fraction of activation "
    "entries with |a| < ε; AVSS_b = AV_b / AS_b, NAVSS_b = AVSS_b / Σ AVSS. Low AVSS = a block whose "
    "activity is little varied and mostly small: a removal candidate. Statistics are streamed over the "
    "calibration windows (sums per block; windows are never padded)."
)

ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
MOE = is_moe(ws.lm)


def _label(s: str) -> str:
    return site_label(s, MOE)


def _use_relative() -> None:
    st.session_state[RELATIVE_KEY] = True


c = st.columns([2, 2, 1])
site = c[0].selectbox(
    "Activation site",
    SITES,
    index=SITES.index("mlp"),
    format_func=_label,
    key="avss-site",
    help="block output = the residual stream h_(b+1) (before the final norm for the last block); "
    + (
        "the MoE block's output (this model is a mixture of experts: one down projection per expert)"
        if MOE
        else "MLP hidden activation = the input of down_proj (or the family's feed-forward output projection)"
    )
    + "; attention output = the output of the attention's output projection (o_proj), before "
    "it is added to the residual",
)
relative = c[1].toggle(
    "Relative threshold ε · RMS(a)",
    key=RELATIVE_KEY,
    help="count |a_j| < ε · RMS(a) per token vector a instead of |a_j| < ε: scale-free, so it "
    "also works on the residual stream, whose entries are almost never below 1e-5",
)
eps = c[2].number_input(
    "ε",
    min_value=1e-12,
    max_value=1.0,
    format="%.1e",
    value=DEFAULT_RELATIVE_EPS if relative else DEFAULT_EPS,
    key=f"avss-eps-{'rel' if relative else 'abs'}",
)
settings = AVSSSettings(site=site, eps=float(eps), relative=relative)

try:
    res = run_with_progress(f"AVSS on the {_label(site)}", lambda p: avss_result(ws, settings, progress=p))
except ValueError as exc:
    st.error(f"AVSS cannot be computed: {exc}")
    st.stop()
if res.outcome.message:
    st.warning(res.outcome.message)
table = res.table
near_zero = res.near_zero
st.caption(
    f"{settings.describe(MOE)} · {int(table['n_tokens'].iloc[0]):,} tokens × {L} blocks"
    + (f" · computed in {res.seconds:.1f} s" if res.outcome.status != "hit" else " · from the cache")
)

st.header("Suggested blocks to remove")
K_LOWEST, SHARE_RULE = "k lowest (capped by the share)", "Sorted cumulative share (the paper's rule)"
c = st.columns([2, 2, 1])
rule = c[0].radio(
    "Rule",
    [K_LOWEST, SHARE_RULE],
    horizontal=True,
    key="avss-rule",
    help="k lowest (the default): the k blocks with the lowest AVSS, never past a sorted cumulative "
    "NAVSS of 25 % (the overview's rule). Share: the lowest-AVSS blocks while their cumulative "
    "NAVSS (summed after sorting) stays ≤ the share: the paper's rule with 25 %; on a model whose "
    "AVSS sum is dominated by a few blocks it takes most of the model.",
)
if rule == K_LOWEST:
    k = int(
        c[1].number_input(
            "k", 1, max(1, L - 1), max(1, L // 8), key="avss-k", help=f"default L / 8 = {max(1, L // 8)} of {L} blocks"
        )
    )
    share_pct = int(DEFAULT_SHARE * 100)
    chosen = res.suggest(share=DEFAULT_SHARE, k=k)
    source = f"AVSS, {site}, {k} lowest"
else:
    share_pct = c[1].slider("Share (%)", 1, 100, int(DEFAULT_SHARE * 100), key="avss-share")
    chosen = res.suggest(share=share_pct / 100.0)
    source = f"AVSS, {site}, cumulative share ≤ {share_pct}%"
if len(chosen) >= L:
    chosen = chosen[: L - 1]  # at least one block must remain
c[0].markdown(f"**Remove blocks** `{', '.join(map(str, chosen)) or '—'}` ({len(chosen)} of {L})")
if c[2].button("Send to prune", key="avss-send", disabled=not chosen, type="primary"):
    state.send_to_prune(chosen, source)
for line in contradictions(ws, chosen):  # block influence and, when computed, measured damage
    st.warning(line)
if not registry.get("block_influence").cached(ws):
    st.caption(
        "Block influence is not computed for this calibration yet (linearity page): once it is, a suggested "
        "block it ranks among the most important is flagged here."
    )
by_share = res.suggest(share=DEFAULT_SHARE)
if rule == K_LOWEST:
    st.caption(
        f"The {len(chosen)} lowest-AVSS blocks. The paper's 25 % cumulative-share rule would take "
        f"{len(by_share)} of {L} blocks here"
        + (" — most of the model, so here it only caps k." if len(by_share) > L // 2 else ".")
    )
elif len(chosen) > L // 2:
    top = table.sort_values("navss", ascending=False).head(3)
    st.warning(
        f"The share rule takes {len(chosen)} of {L} blocks here: AVSS is dominated by a few blocks "
        f"({', '.join(f'block {int(b)}: {v:.0%}' for b, v in zip(top['block'], top['navss']))} of the "
        f"sum), so a {share_pct} % share of the sum covers most blocks. Use **k lowest** for a practical "
        "selection."
    )

st.header("AVSS per block")
zero_blocks = [int(b) for b in table.loc[table["sparsity_zero"], "block"]]
if near_zero:
    cols = st.columns([4, 1])
    cols[0].warning(
        f"**Sparsity is near zero** on {len(near_zero)} of {L} blocks (▲; fewer than 1 entry in "
        f"{1 / NEAR_ZERO_SPARSITY:,.0f} below the threshold"
        + (f", none at all on blocks {', '.join(map(str, zero_blocks))}" if zero_blocks else "")
        + "). AVSS then divides by a handful of entries, so the score mostly measures chance; where no entry is "
        "small it is shown as variance × entries, a lower bound. The raw sparsity is in the chart and table "
        "below. On the residual stream this is expected: use the relative threshold ε · RMS(a) or the MLP site."
    )
    if not relative:
        cols[1].button("Use relative threshold ε · RMS(a)", on_click=_use_relative, key="avss-use-relative")
fig = gf.block_bars(
    table, "avss", f"AVSS per block, {_label(site)} (log scale)", "AVSS", highlight=chosen, flagged=near_zero, log=True
)
show = table[["block", "variance", "sparsity", "n_small", "n_entries", "sparsity_zero", "avss", "navss"]]
figure_with_csv(fig, show, f"avss_{site}.csv", key="avss-bars")

c = st.columns(2)
with c[0]:
    fig = gf.block_bars(
        table,
        "variance",
        "Variance AV_b (over hidden units of mean-pooled windows)",
        "variance",
        highlight=chosen,
        log=True,
    )
    figure_with_csv(fig, table[["block", "variance"]], f"avss_variance_{site}.csv", key="avss-var")
with c[1]:
    fig = gf.block_bars(
        table,
        "sparsity",
        "Raw sparsity AS_b (fraction of entries below the threshold)",
        "sparsity",
        highlight=chosen,
        flagged=near_zero,
        hover_fmt=".3e",
    )
    figure_with_csv(
        fig, table[["block", "sparsity", "n_small", "n_entries"]], f"avss_sparsity_{site}.csv", key="avss-sp"
    )

fig = gf.block_bars(table, "navss", "Normalised AVSS (NAVSS_b = AVSS_b / Σ AVSS)", "NAVSS", highlight=chosen)
figure_with_csv(fig, table[["block", "navss"]], f"navss_{site}.csv", key="avss-navss")

curve = res.curve()
fig = gf.cumulative_curve(curve, share_pct / 100.0, chosen)
figure_with_csv(fig, curve, f"avss_cumulative_{site}.csv", key="avss-cum")

compared = comparison.compared_variant_section(
    ws, "AVSS", "at the same site and threshold on the same calibration windows", key="avss-compare"
)
if compared is not None:
    other, name = compared
    try:
        res_o = run_with_progress(f"AVSS of {name}", lambda p: avss_result(other, settings, progress=p))
    except (ValueError, RuntimeError) as exc:  # e.g. a block replaced by a linear map has no MLP to hook
        st.error(f"AVSS cannot be computed on {name}: {exc}")
    else:
        t_o, L_o = res_o.table, other.n_blocks
        fig = comparison_curves(
            {
                "original": (np.arange(L) / L, table["navss"].to_numpy()),
                name: (np.arange(L_o) / L_o, t_o["navss"].to_numpy()),
            },
            f"Normalised AVSS per block, {_label(site)}",
            "NAVSS",
        )
        frame = pd.concat(
            [table[["block", "navss"]].assign(model="original"), t_o[["block", "navss"]].assign(model=name)]
        )
        figure_with_csv(fig, frame, f"navss_{site}_compared.csv", key="avss-cmp-fig")

with st.expander("Table"):
    t = show.copy()
    t["note"] = [
        "no entry below threshold: AVSS is a lower bound" if z else ("sparsity near zero" if b in near_zero else "")
        for b, z in zip(t["block"], t["sparsity_zero"])
    ]
    st.dataframe(
        t,
        hide_index=True,
        column_config={
            "sparsity": st.column_config.NumberColumn(format="%.3e"),
            "avss": st.column_config.NumberColumn(format="%.4g"),
            "navss": st.column_config.NumberColumn(format="%.4g"),
            "variance": st.column_config.NumberColumn(format="%.4g"),
        },
    )
st.caption(
    "Differences from the reference code, on purpose: padding would never count (our windows have none); "
    "the cumulative share is summed after sorting by AVSS (the reference sums in layer order first). "
    f"The first {ws.calibration.exclude_first} position(s) of each window are left out of the statistics."
    if ws.calibration.exclude_first
    else "Differences from the reference code, on purpose: padding would never count (our windows have none); "
    "the cumulative share is summed after sorting by AVSS (the reference sums in layer order first)."
)
