"""Compress: low-rank truncation of the attention and MLP matrices (SVD, ASVD, SVD-LLM, NSVD), evaluated and exported."""

import streamlit as st

from analysis.changes import low_rank as cp
from components import state
from components.change import (
    apply_panel,
    evaluation_form,
    export_section,
    start_apply,
    variant_result,
)
from components.compress import (
    PROJECTION_HELP,
    also_remove,
    default_mlp,
    matrix_views,
    moe_note,
    plan_frame,
    plan_summary,
    projection_names,
    result_frame,
)
from components.widgets import csv_download, run_with_progress, workspace_caption

st.title("Compress: low-rank truncation")
st.caption(
    "Each chosen matrix W (m×n) becomes B·A of rank k, B: m×k, A: k×n. A parameter ratio ρ removed from a matrix "
    "gives k = ⌊(1−ρ)·m·n/(m+n)⌋; storing B·A saves memory only below the break-even rank m·n/(m+n). "
    "Methods (METHODS.md §6): **SVD** truncates W; **ASVD** (arXiv 2312.05821) truncates W·diag(mean|x|)^α; "
    "**SVD-LLM** (arXiv 2403.07378) truncates W·S with S = cholesky(X Xᵀ), so the truncated singular values "
    "are exactly the output error on the calibration tokens; **NSVD** (arXiv 2503.17101) spends k1 = share·k "
    "ranks as SVD-LLM and the rest on a plain SVD of the residual — the paper has no public code, so its "
    "equations here are **unverified**."
)
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
model = ws.lm.model
L = ws.n_blocks

st.header("1 · Method, matrices and amount")
state.keep_widgets(
    [
        "lr-method",
        "lr-alpha",
        "lr-k1",
        "lr-targets",
        "lr-scope",
        "lr-blocks",
        "lr-amount",
        "lr-ratio",
        "lr-rank",
        "lr-form",
        "lr-remove",
    ],
    context=ws.lm.fingerprint,
)  # the choices survive navigation
c = st.columns([2, 1, 1])
method = c[0].radio(
    "Method",
    cp.METHODS,
    format_func=lambda m: cp.LABELS[m],
    horizontal=True,
    key="lr-method",
    index=cp.METHODS.index("svd-llm"),
    help="\n\n".join(f"**{cp.LABELS[m]}**: {cp.DESCRIPTIONS[m]}" for m in cp.METHODS),
)
alpha = c[1].number_input(
    "ASVD α",
    0.0,
    4.0,
    0.5,
    step=0.1,
    key="lr-alpha",
    disabled=method != "asvd",
    help="S = diag(mean_t |x_j|)^α; the paper's default is 0.5",
)
k1_share = c[2].number_input(
    "NSVD k1 share",
    0.05,
    1.0,
    0.95,
    step=0.05,
    key="lr-k1",
    disabled=method != "nsvd",
    help="k1 = round(share·k) ranks of whitened truncation, k − k1 of plain SVD of the residual (unverified equations)",
)
leaves = projection_names(model)
if moe_note(model):
    st.info(moe_note(model))
c = st.columns([2, 1])
chosen_leaves = c[0].multiselect("Matrices", leaves, default=default_mlp(model), key="lr-targets", help=PROJECTION_HELP)
scope = c[1].radio("Blocks", ["all blocks", "chosen blocks"], horizontal=True, key="lr-scope")
blocks = None
if scope == "chosen blocks":
    blocks = st.multiselect("Blocks whose matrices to truncate (0-based)", list(range(L)), default=[0], key="lr-blocks")
c = st.columns([1, 1, 1, 1])
amount = c[0].radio(
    "Amount",
    ["parameter ratio", "explicit rank"],
    key="lr-amount",
    help="the same ratio (or rank) for every chosen matrix",
)
if amount == "parameter ratio":
    ratio = c[1].number_input(
        "Parameter ratio removed",
        0.0,
        1.0,
        0.2,
        step=0.05,
        key="lr-ratio",
        help="ρ in (0, 1): the share of each matrix's parameters removed",
    )
    rank = None
else:
    ratio = None
    rank = int(c[1].number_input("Rank", 1, 100_000, 128, step=16, key="lr-rank"))
form = c[2].radio(
    "Form in memory",
    cp.FORMS,
    index=1,
    key="lr-form",
    help="factorised: B·A modules (fewer parameters, as evaluated); dense: W' multiplied out (same size)",
)

if not chosen_leaves:
    st.error("Choose at least one matrix (e.g. the MLP's gate_proj, up_proj, down_proj).")
    st.stop()
if scope == "chosen blocks" and not blocks:
    st.error("Choose at least one block, or truncate in all blocks.")
    st.stop()
try:
    names, _ = cp.resolve_targets(model, list(chosen_leaves), blocks)
    plan, warnings = cp.plan_ranks(model, names, ratio=ratio, rank=rank)
except cp.CompressionError as exc:
    st.error(str(exc))
    st.stop()
for w in warnings[:5]:
    st.warning(w)
if len(warnings) > 5:
    st.warning(f"… and {len(warnings) - 5} more matrices whose rank saves no parameters.")

st.header("2 · Calibration statistics")
c = ws.calibration
groups = sorted({cp.group_of(n, model) for n in names})
st.caption(
    f"X Xᵀ and mean |x| of the input of every {' and '.join(groups)} matrix in all {L} blocks, gathered in one "
    f"streamed pass over the first {c.n_windows} windows of {c.window_len} tokens of **{ws.text.label}**, "
    "cached on disk and shared by every method (and by `python -m analysis compress`)."
)
fresh = not cp.stats_cached(ws.lm, ws.text, c.n_windows, c.window_len, groups)
try:
    _, info = run_with_progress(
        "Gathering calibration statistics",
        lambda p: cp.calibration_stats(ws.lm, ws.text, c.n_windows, c.window_len, groups, names=[names[0]], progress=p),
    )
except ValueError as exc:
    st.error(str(exc))
    st.stop()
if fresh:
    st.success(f"Gathered in {info['seconds']:.1f} s on {info['tokens']:,} tokens; cached for every method.")

st.header("3 · Before applying")
frame = plan_frame(cp.matrix_rows(model, plan))
st.markdown(plan_summary(ws, frame))
st.dataframe(
    frame.style.format(
        {
            "saved": "{:.1%}",
            "parameters before": "{:,}",
            "break-even rank": "{:.1f}",
            "parameters after (factorised)": "{:,}",
        }
    ),
    hide_index=True,
    height=260,
)
csv_download(frame, "matrices.csv", key="lr-plan-csv")
name = st.selectbox("Matrix to look at", list(plan), key="lr-matrix")
matrix_views(ws, name, plan[name], alpha, k1_share)

st.header("4 · Apply and evaluate")
removed = also_remove(ws, "lr")
st.caption(
    "Apply the truncation (and the removal) to a copy of the model, then compare it with the original on a "
    "held-out text: the same table as the prune page, so depth pruning and rank truncation can be combined "
    "and compared (every applied change is kept under **Variants**)."
)
settings = evaluation_form("compress")
if settings is not None:
    value = {
        "method": method,
        "targets": "mlp" if sorted(chosen_leaves) == sorted(default_mlp(model)) else list(chosen_leaves),
        "blocks": blocks,
        "form": form,
        "calibration": {"text": ws.text.name, "windows": c.n_windows, "window_len": c.window_len},
    }
    if ratio is not None:
        value["ratio"] = float(ratio)
    else:
        value["rank"] = rank
    if method == "asvd":
        value["alpha"] = float(alpha)
    if method == "nsvd":
        value["k1_share"] = float(k1_share)
    action = {"low_rank": value}
    if removed:
        action["remove_blocks"] = removed
    amount_text = f"{ratio:.0%}" if ratio is not None else f"rank {rank}"
    where = "" if blocks is None else " in " + ",".join(map(str, blocks))
    label = "mlp" if value["targets"] == "mlp" else "+".join(chosen_leaves)
    variant_name = f"{cp.LABELS[method]} {amount_text} {label}{where}" + (
        f" minus {','.join(map(str, removed))}" if removed else ""
    )
    start_apply(ws, "compress", action, settings, name=variant_name)
job = apply_panel(ws, "compress")  # a background job: this page may be left (or reloaded) while it runs
variant = state.latest_variant("low_rank")
if variant is None:
    if job is None or not job.is_active:
        st.caption("Nothing applied yet: choose the settings above and press **Apply and evaluate**.")
    st.stop()
variant_result(ws, variant)
record = cp.record_of(variant.model).get("low_rank") or {}
params = variant.recipe.get("parameters") or {}
if params:
    st.caption(
        f"Parameters: original {params['original']:,}; this variant {params.get('factorised', 0):,} with "
        "every low-rank matrix stored as B·A."
    )
with st.expander(f"The {len(record.get('matrices', []))} truncated matrices"):
    result = result_frame(record)
    st.dataframe(result, hide_index=True)
    csv_download(result, "truncated_matrices.csv", key="lr-result-csv")

st.header("5 · Export")
export_section(ws, variant, key="compress", forms=("factorised", "dense"))
st.caption(
    "recipe.json beside the checkpoint records the method and options, the rank of every matrix (by its name "
    "in the original model), the predicted losses and damping, the calibration text's sha256 and the "
    "evaluation."
)
