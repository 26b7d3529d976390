"""The ReplaceMe method of the replace page: choose the run, fit and fold the map, evaluate it beside plain removal of
the same run, export a plain checkpoint."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.changes import replaceme as rm
from analysis.changes.low_rank import CompressionError, record_of
from analysis.metrics import registry
from analysis.search import replaceme_rows
from components import figures, state
from components.change import (
    apply_panel,
    evaluation_form,
    export_section,
    result_marker,
    start_apply,
    variant_result,
)
from components.compress import also_remove
from components.widgets import figure_with_csv, run_with_progress

# the formula, rendered by KaTeX (no markdown emphasis can leak out of it)
FIT_LATEX = (
    r"T = \arg\min_{T}\;\lVert M\,T - (L - Y)\rVert_F^2 = (M^{\top}M + \lambda I)^{-1} M^{\top}(L - Y),"
    r"\qquad W' = T^{\top} W,\quad b' = T^{\top} b"
)
WHERE = (
    "M: the output of the feed-forward output projection of block l−1 (Llama's down_proj, GPT-2's c_proj …); "
    "Y = h(l−1) − M: the rest of that block's output; L = h(l+n−1): the output of the last removed block; "
    "λ = relative ridge · tr(MᵀM)/d (the authors' alpha is this λ itself, absolute; 0 by default in both). "
    "Block l−1 then outputs Y + M·T, which is what the run produced, and the run is removed: "
    "the checkpoint is the same architecture with n fewer blocks."
)


def _choices(ws) -> list[str]:
    keys = [replaceme_rows.AUTHORS, replaceme_rows.OURS]  # the authors' rule first: the default
    for m in registry.metrics():
        if m.cached(ws) and m.key not in keys:
            keys.append(m.key)
    return keys


def _label(key: str) -> str:
    if key in replaceme_rows.RULES:
        return replaceme_rows.RULES[key]
    try:
        m = registry.get(key)
    except KeyError:
        return key
    return f"{replaceme_rows.rule_label(key)} ({m.direction_text})"


def page(ws) -> None:
    L = ws.n_blocks
    st.caption(
        "Shopkhoev et al., ReplaceMe (NeurIPS 2025, arXiv 2505.02819): the run of n blocks [l, l+n) is removed "
        "and one linear map T, fitted on the calibration tokens, is folded into the feed-forward output "
        "projection of block l−1. The fit (least squares from moments streamed in float64; or the cosine "
        "variant, Adam on the mean cosine distance starting from the least-squares map):"
    )
    st.latex(FIT_LATEX)
    st.caption(WHERE)

    st.header("1 · Which run?")
    if L < 3:
        st.error(f"ReplaceMe needs a block before the run and one after it: this model has only {L} blocks.")
        st.stop()
    state.keep_widgets(
        ["rm-n", "rm-by", "rm-start", "rm-method", "rm-ridge", "rm-steps", "rm-lr", "rm-compare", "replaceme-remove"],
        context=ws.lm.fingerprint,
    )  # the choices survive navigation
    c = st.columns([1, 3])
    n = int(c[0].number_input("Blocks in the run (n)", 1, L - 2, min(2, L - 2), key="rm-n"))
    by = c[1].selectbox(
        "Choose the start by",
        _choices(ws),
        format_func=_label,
        key="rm-by",
        help="low = replace first. The ReplaceMe authors' rule (the default): "
        f"{replaceme_rows.RULE_DETAILS[replaceme_rows.AUTHORS]}. LayerScope's all-token cosine: "
        f"{replaceme_rows.RULE_DETAILS[replaceme_rows.OURS]}. Block metrics are listed once they "
        "are computed (prune page); their score is summed over the run (LayerScope's rule).",
    )
    try:
        S = run_with_progress("Scoring every run", lambda p: replaceme_rows.run_scores(ws, by, progress=p))
        best, score = rm.best_start(S, n)
    except (CompressionError, ValueError) as exc:
        st.error(str(exc))
        st.stop()
    starts = list(range(1, L - n + 1))
    frame = pd.DataFrame({"start": starts, "end": [s + n for s in starts], "score": [S[s, n - 1] for s in starts]})
    cols = st.columns([3, 1])
    cols[0].markdown(
        f"Best run of {n} by this rule: `[{best}, {best + n})` (score {score:.4f}; {replaceme_rows.rule_label(by)})"
    )
    if cols[1].button("Use this run", key="rm-use"):
        st.session_state["rm-start"] = best
    if "rm-start" not in st.session_state or not 1 <= st.session_state["rm-start"] <= L - n:
        st.session_state["rm-start"] = best
    start = int(st.number_input("Start block l (the run is [l, l+n), 0-based; l ≥ 1)", 1, L - n, key="rm-start"))
    run = list(range(start, start + n))
    figure_with_csv(
        figures.bars(
            starts,
            frame["score"],
            f"Score of each run of {n} block{'s' if n > 1 else ''} by its start l (low = replace first)",
            "start block l",
            "score",
            highlight=[start],
        ),
        frame,
        f"replaceme_runs_n{n}.csv",
        key="rm-runs",
    )

    c = st.columns([2, 1, 1, 1])
    method = c[0].radio("Fit", list(rm.METHODS), format_func=lambda m: rm.LABELS[m], key="rm-method")
    ridge = float(
        c[1].number_input(
            "Relative ridge λ/(tr(MᵀM)/d)",
            0.0,
            10.0,
            0.0,
            step=0.001,
            format="%.3f",
            key="rm-ridge",
            help="relative to the mean diagonal of MᵀM; the authors' alpha is the absolute λ (the recipe records both)",
        )
    )
    cosine = {}
    if method == "cosine":
        cosine["steps"] = int(c[2].number_input("Adam steps", 1, 5000, rm.COSINE_DEFAULTS["steps"], key="rm-steps"))
        cosine["lr"] = float(
            c[3].number_input("Learning rate", 1e-6, 1.0, rm.COSINE_DEFAULTS["lr"], format="%.0e", key="rm-lr")
        )
        st.caption(
            f"Mini-batches of {rm.COSINE_DEFAULTS['batch_tokens']} tokens (seed {rm.COSINE_DEFAULTS['seed']}) "
            f"from at most the first {rm.COSINE_DEFAULTS['max_tokens']:,} calibration tokens; whichever of "
            "the start (least squares) and the end has the lower cosine distance on them is kept."
        )

    st.header("2 · Evaluate against the original and against removing the same run")
    removed = also_remove(ws, "replaceme", exclude=run + [start - 1])
    compare = st.checkbox(f"Also evaluate plain removal of [{start}, {start + n})", True, key="rm-compare")
    settings = evaluation_form("replaceme")
    value = {
        "start": start,
        "n": n,
        "method": method,
        **({"relative_ridge": ridge} if ridge else {}),
        **({"cosine": cosine} if cosine else {}),
        "chosen_by": (
            replaceme_rows.chosen_by(by, score)
            if start == best
            else {"rule": "given", "label": f"chosen by hand (the {_label(by)} picks [{best}, {best + n}))"}
        ),
    }
    tag = f"[{start}, {start + n})"
    extra = f" minus {','.join(map(str, removed))}" if removed else ""
    if settings is not None:  # background jobs (queued one after the other): the page may be left or reloaded
        action = {"replaceme": value, **({"remove_blocks": removed} if removed else {})}
        job = start_apply(ws, "replaceme", action, settings, name=f"ReplaceMe {method} {tag}{extra}")
        if job is not None and compare:
            start_apply(
                ws,
                "replaceme-removal",
                {"remove_blocks": sorted(set(run) | set(removed))},
                settings,
                name=f"remove {tag}{extra}",
            )
    job = apply_panel(ws, "replaceme")
    if compare:  # its panel while it runs; once done, the table beside ReplaceMe below reads its variant
        apply_panel(ws, "replaceme-removal")
    variant = state.latest_variant("replaceme")
    if variant is None:
        if job is None or not job.is_active:
            st.caption("Nothing applied yet: choose the run and press **Apply and evaluate**.")
        st.stop()
    result_marker(variant, "replaceme", run, what="run", evaluated=rm.removes(variant.action["replaceme"]))
    variant_result(ws, variant)
    rec = record_of(variant.model).get("replaceme") or {}
    if rec:
        st.caption(
            f"Run chosen by: {(rec.get('chosen_by') or {}).get('label', 'not recorded')}. "
            f"Map folded into `{rec['fold_into']}`; on the {rec['tokens']:,} calibration tokens the fit leaves "
            f"{rec['fit_residual']:.3f} of ‖L − Y‖ unexplained, plain removal {rec['removal_residual']:.3f} "
            f"(relative residuals). Plain removal's mean cosine distance to L: "
            f"{rec['removal_cosine_distance']:.4f}"
            + (
                f"; the cosine fit: {min(rec['cosine']['cosine_distance_start'], rec['cosine']['cosine_distance_end']):.4f}"
                f" ({rec['cosine']['kept']} of {rec['cosine']['steps']} Adam steps kept)"
                if rec.get("cosine")
                else ""
            )
            + "."
        )
    _beside_removal(ws, variant)

    st.header("3 · Export")
    st.caption(
        "The map lives inside block l−1's feed-forward output projection and the run is gone, so the folder is "
        "a plain checkpoint: plain AutoModelForCausalLM reloads it, and the reload is compared with the "
        "in-memory model."
    )
    export_section(ws, variant, key="replaceme", forms=("dense",))


def _beside_removal(ws, variant) -> None:
    """Perplexity, KL and top-1 of the original, plain removal of the run and ReplaceMe, on the same text."""
    run = rm.removes(variant.action["replaceme"])
    removed = sorted(set(variant.removed_blocks))
    other = next(
        (
            v
            for v in reversed(state.variants())
            if set(v.action) == {"remove_blocks"}
            and sorted(v.action["remove_blocks"]) == removed
            and v.evaluation is not None
            and v.evaluation.settings == variant.evaluation.settings
        ),
        None,
    )
    if other is None:
        return
    rows = [
        {"model": "original", **variant.evaluation.original.to_dict()},
        {"model": f"remove [{run[0]}, {run[-1] + 1})", **other.evaluation.candidate.to_dict()},
        {"model": f"ReplaceMe [{run[0]}, {run[-1] + 1})", **variant.evaluation.candidate.to_dict()},
    ]
    frame = pd.DataFrame(rows)
    keep = [
        c
        for c in ("model", "perplexity", "nll", "kl_to_original", "top1_agreement", "parameters")
        if c in frame.columns
    ]
    st.subheader("Beside plain removal of the same run")
    st.dataframe(frame[keep], hide_index=True, key="rm-beside")
    a, b = other.evaluation.candidate.perplexity, variant.evaluation.candidate.perplexity
    st.caption(
        f"Same held-out text and tokens: perplexity {a:.3f} with the run removed, {b:.3f} with ReplaceMe "
        f"({'lower' if b < a else 'not lower'}), original {variant.evaluation.original.perplexity:.3f}."
    )
