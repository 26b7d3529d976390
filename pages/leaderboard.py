"""Leaderboard: which rule's blocks to cut, measured on held-out text against the damage they really do."""

import pandas as pd
import streamlit as st

from analysis import cache
from analysis.evaluation.perplexity import EvaluationError
from analysis.formatting import format_seconds
from analysis.metrics import registry
from analysis.metrics.damage import DamageError, SearchSettings
from analysis.search import leaderboard as lb
from analysis.search.distributed import Cluster, ClusterError, run_leaderboard
from analysis.texts import BUNDLED, DEFAULT_EVALUATION_TEXT, TextError
from components import figures, jobs, state
from components.widgets import csv_download, figure_with_csv, workspace_caption

st.title("Leaderboard: which blocks to cut, measured")
st.caption(
    "Every metric suggests blocks from a proxy; here each suggestion of k blocks is removed and evaluated "
    "against the original on held-out text, beside greedy search (SLEB: remove the least damaging block on "
    "a separate search text, k times), reverse order [L−1−k, L−1) and random selections. Measured damage "
    "(the cost of removing one block alone on the search text) is also a metric of the overview."
)
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks
if L < 2:
    st.error("The model has a single block: nothing can be removed.")
    st.stop()

names = list(BUNDLED)
by_key = {m.key: m for m in registry.metrics()}
# keyed and kept: the settings survive navigation and reload (this tab's store), and after a reload the settings of
# this tab's running (or last) leaderboard come back with it
WIDGETS = [
    "lb-k-max",
    "lb-search-text",
    "lb-search-tokens",
    "lb-search-window",
    "lb-eval-text",
    "lb-tokens",
    "lb-context",
    "lb-stride",
    "lb-metrics",
    "lb-random",
    "lb-half",
    "lb-every-block",
    "lb-ray-address",
]
state.keep_widgets(WIDGETS, context=ws.lm.fingerprint)
jobs.restore_widgets("leaderboard", context=ws.lm.fingerprint)
if any(k not in by_key for k in st.session_state.get("lb-metrics", [])):
    st.session_state["lb-metrics"] = [k for k in st.session_state["lb-metrics"] if k in by_key]
with st.form("leaderboard-settings"):
    c = st.columns(4)
    k_max = c[0].number_input("Largest k (K)", 1, L - 1, max(1, L // 4), help="k = 1..K blocks removed", key="lb-k-max")
    search_text = c[1].selectbox(
        "Search text",
        names,
        index=names.index("lcet10"),
        key="lb-search-text",
        help="the damage scan and greedy search run on it: not the evaluation text",
    )
    search_tokens = c[2].number_input("Search tokens", 16, 65536, 1024, step=128, key="lb-search-tokens")
    search_context = c[3].number_input("Search window", 8, 8192, 512, step=64, key="lb-search-window")
    c = st.columns(4)
    eval_text = c[0].selectbox("Held-out text", names, index=names.index(DEFAULT_EVALUATION_TEXT), key="lb-eval-text")
    eval_tokens = c[1].number_input("Tokens", 64, 65536, 4096, step=256, key="lb-tokens")
    context = c[2].number_input("Context", 16, 8192, 512, step=64, key="lb-context")
    stride = c[3].number_input("Stride", 1, 8192, 256, step=64, key="lb-stride")
    c = st.columns([3, 1, 1, 1])
    ready = [m.key for m in registry.metrics() if m.key == lb.DAMAGE_KEY or m.cached(ws)]
    metrics = c[0].multiselect(
        "Metrics",
        list(by_key),
        default=ready,
        format_func=lambda k: by_key[k].label,
        key="lb-metrics",
        help="measured damage and the metrics already computed for this text by default; "
        "others you add are computed first with their default settings",
    )
    n_random = c[1].number_input("Random samples", 0, 50, 5, key="lb-random")
    half = c[2].checkbox(
        "Half-block search",
        False,
        key="lb-half",
        help="also BlockPruner's greedy over attention / MLP halves, and the halves' damage table (twice the scans)",
    )
    every_block = c[3].checkbox(
        "Greedy: every block",
        False,
        key="lb-every-block",
        help="SLEB never removes the first or the last block, and greedy search follows it by "
        "default; tick to search every block",
    )
    ray_address = st.text_input(
        "Ray cluster address",
        "",
        placeholder="empty = in this process",
        key="lb-ray-address",
        help="host:port of a running Ray cluster (or 'auto'): the full board's damage scans "
        "and evaluations run on Ray actors there, one per model replica (one per GPU, or "
        "per node); the numbers are the in-process ones. See docs/cluster.md",
    )
    c = st.columns([1, 1, 4])
    submitted = c[0].form_submit_button("Estimate")
    start = c[1].form_submit_button("Start leaderboard", type="primary")  # in the form: starts what the fields say

try:
    settings = lb.LeaderboardSettings(
        k_max=int(k_max),
        search=SearchSettings(text=search_text, n_tokens=int(search_tokens), context=int(search_context)),
        evaluation=lb.default_eval_settings(
            text=eval_text, n_tokens=int(eval_tokens), context=int(context), stride=int(stride)
        ),
        metrics=tuple(metrics),
        half_blocks=bool(half),
        random_samples=int(n_random),
        greedy_candidates="all" if every_block else "sleb",
    )
    lb.validate(settings, L, ws.text, ws.lm.tokenizer)
    for note in lb.for_model(settings, ws.lm)[1]:  # what this model's family cannot have
        st.caption(note)
    cluster = Cluster(address=ray_address.strip())
    cluster.validate()
except (lb.LeaderboardError, DamageError, EvaluationError, TextError, ClusterError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

job_key = "leaderboard:" + cache.stable_hash(
    {"model": ws.lm.fingerprint, "text": ws.text.sha256, "calibration": ws.calibration.to_dict(), **settings.to_dict()}
)
quick = lb.quick_settings(settings)
quick_key = job_key + ":quick"
est_key = "_leaderboard_estimate"
if submitted or (start and st.session_state.get(est_key, {}).get("key") != job_key):
    with st.spinner("Timing a short forward of the model …"):
        from analysis.capture.estimate import forward_probe

        probe = forward_probe(ws.lm)
        st.session_state[est_key] = {
            "key": job_key,
            "estimate": lb.estimate(ws, settings, probe=probe),
            "quick": lb.estimate(ws, quick, probe=probe),
        }
est = st.session_state.get(est_key, {})
if est.get("key") == job_key:
    e, q = est["estimate"], est["quick"]
    st.info(
        f"Estimated time: about **{format_seconds(e['seconds'])}** for the full board (the work of "
        f"{e['evaluations_of_original']:.1f} evaluations of the original, ~{e['per_evaluation_s']:.0f} s each "
        f"here now); the quick answer first, in about **{format_seconds(q['seconds'])}**. Scans and "
        "evaluations already in the cache are skipped, so a stopped run resumes where it was."
    )
else:
    st.caption("Press **Estimate** to see how long it will take, or **Start leaderboard**.")

if start:
    ws_copy, settings_copy, quick_copy, cluster_copy = ws, settings, quick, cluster
    owner = jobs.owner()  # the kept result is this tab's (not shared with other tabs or users)
    e = est.get("estimate", {}) if est.get("key") == job_key else {}
    q = est.get("quick", {}) if est.get("key") == job_key else {}
    kept = {"context": ws.lm.fingerprint, "widgets": jobs.widget_values(WIDGETS)}  # found again after a reload
    # two jobs, run one after the other: the quick answer first, then the full board fills in
    jobs.start(
        quick_key,
        f"Leaderboard k=1..{settings.k_max}, quick answer",
        lambda job: lb.run(ws_copy, quick_copy, progress=job.report),
        meta={"tag": "leaderboard-quick", "estimate_s": q.get("seconds"), **kept},
    )
    jobs.start(
        job_key,
        f"Leaderboard k=1..{settings.k_max}, full board" + (" on Ray" if cluster.enabled else ""),
        lambda job: run_leaderboard(ws_copy, settings_copy, progress=job.report, cluster=cluster_copy, owner=owner),
        meta={"tag": "leaderboard", "estimate_s": e.get("seconds"), **kept},
    )
if jobs.get(job_key) is None:  # the settings changed since this tab's leaderboard started: it is still shown
    last = jobs.latest("leaderboard")
    if last is not None and last.is_active and last.meta.get("context") == ws.lm.fingerprint:
        st.caption(
            f"This tab's running leaderboard was started with other settings ({last.label}); "
            "press **Start leaderboard** to queue one with the settings above."
        )
        job_key, quick_key = last.key, last.key + ":quick"
quick_job = jobs.show(quick_key)
if quick_job is not None and quick_job.state == "cancelled" and jobs.cancel(job_key):
    st.rerun()  # Cancel on the quick answer stops the whole leaderboard (the full board queued behind it too)
if quick_job is not None and quick_job.is_active:
    st.stop()
job = jobs.show(job_key)
full_ok = job is not None and job.finished_ok
quick_ok = quick_job is not None and quick_job.finished_ok
if full_ok:
    result = job.result
elif quick_ok:
    result = quick_job.result
    st.info(
        "**Quick answer** — "
        + "; ".join(lb.quick_skipped(settings))
        + ". "
        + ("The full board is filling in." if job is not None and job.is_active else "")
    )
elif job is not None and job.is_active:
    st.stop()
else:
    result = lb.latest(ws, owner=jobs.owner())
if result is None:
    st.caption("No leaderboard for this model yet.")
    st.stop()
if not (full_ok or quick_ok):
    st.caption("Showing the last leaderboard finished for this model (its own settings).")
if result.cost:
    c = result.cost
    st.caption(
        f"Cost of this run: the work of {c['evaluations']:.1f} evaluations of the original "
        f"({c['scans_computed']} damage scans, {c['selections_computed']} of {c['selections']} distinct "
        f"selections evaluated; the rest came from the cache) in {format_seconds(result.seconds)}."
    )

s = result.settings
st.header("Perplexity against k")
figure_with_csv(lb.figure(result), lb.leaderboard_csv(result), "leaderboard.csv", key="lb-chart")
st.header("Winner at each k")
st.dataframe(result.winners(), hide_index=True)
st.caption(f"Greedy search (SLEB) searched {lb.greedy_candidates(result)}.")
st.header("Table")
st.dataframe(lb.table(result), width="stretch")

st.header("Send a selection to the prune page")
rows = result.rows
sendable = rows[rows["action"].map(lambda a: set(__import__("json").loads(a)) <= {"remove_blocks"})]
rule_labels = dict(zip(sendable["rule"], sendable["label"]))
# preselected: the removal rule (no random draw, no user-chosen selection: the rules winners() compares) with the
# lowest held-out perplexity at the largest k
top_k = int(sendable["k"].max())
ranked = sendable[(sendable["k"] == top_k) & (~sendable["kind"].isin(["random", "chosen"]))].sort_values("perplexity")
best_rule = ranked["rule"].iloc[0] if len(ranked) else next(iter(rule_labels))
rules = list(rule_labels)
c = st.columns([3, 1, 1, 1])
rule = c[0].selectbox("Rule", rules, index=rules.index(best_rule), format_func=lambda r: rule_labels[r], key="lb-rule")
ks = sorted(sendable.loc[sendable["rule"] == rule, "k"].unique())
k = c[1].selectbox("k", ks, index=len(ks) - 1, key="lb-k")
samples = sendable[(sendable["rule"] == rule) & (sendable["k"] == k)]
sample = (
    c[2].selectbox("Sample", list(samples["sample"]), key="lb-sample")
    if len(samples) > 1
    else int(samples["sample"].iloc[0])
)
chosen = samples[samples["sample"] == sample].iloc[0]
c[3].write("")
if c[3].button("Send to prune", type="primary", key="lb-send"):
    import json

    state.send_to_prune(json.loads(chosen["action"])["remove_blocks"], f"leaderboard: {rule_labels[rule]} (k={k})")
if len(ranked):  # otherwise nothing is preselected on merit: the first rule is shown
    st.caption(
        f"Preselected: **{rule_labels[best_rule]}**, the removal rule with the lowest perplexity at k = {top_k}."
    )
st.caption(
    f"Blocks: {chosen['blocks']} · perplexity {chosen['perplexity']:.2f} · KL {chosen['kl']:.4f} · "
    f"top-1 {chosen['top1']:.1%}. Half-block selections are not sent (the prune page removes whole blocks)."
)

st.header("Measured damage and the proxies")
corr = result.correlation
st.dataframe(corr.rename(columns={"label": "metric name"}), hide_index=True)
st.caption(
    "Spearman ρ between each metric (oriented so that low = redundant) and the measured damage of removing "
    "each block alone; +1 = the metric orders the blocks as their damage does."
)
damage = result.damage
wide = damage.pivot_table(index="block", columns="site", values="delta_nll")
fig = figures.curves(
    list(wide.index),
    {c: wide[c].tolist() for c in wide.columns},
    f"Damage of removing each {'block or half' if len(wide.columns) > 1 else 'block'} alone "
    f"(ΔNLL on {s['search']['text']})",
    figures.BLOCK_AXIS,
    "ΔNLL (nats)",
)
figure_with_csv(fig, lb.damage_csv(result), "damage.csv", key="lb-damage")
g = pd.DataFrame(result.greedy)
if len(g):
    fig = figures.curves(
        list(g["step"]),
        {"greedy (SLEB)": g["perplexity"].tolist()},
        "Greedy search on the search text: perplexity after each step",
        "step",
        "perplexity",
    )
    figure_with_csv(fig, lb.greedy_csv(result), "greedy.csv", key="lb-greedy")
    st.caption(
        "Removed in order: "
        + ", ".join(f"{b}" for b in g["block"])
        + f". Greedy search (SLEB) searched {lb.greedy_candidates(result)}."
    )
csv_download(lb.correlation_csv(result), "correlation.csv", key="lb-corr")
