"""UI pieces of the compress and linear-replacement pages: block pickers, the matrix table, spectra and loss curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis.changes import low_rank as cp
from components import figures, state
from components.widgets import figure_with_csv

PROJECTION_HELP = (
    "Llama-like: attention q_proj, k_proj, v_proj, o_proj; MLP gate_proj, up_proj, down_proj. "
    "Other families offer their own (GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; OPT: fc1, fc2 …); "
    "every linear layer inside the blocks is offered"
)


def _block0_names(model) -> list[tuple[str, str]]:
    """``(name to offer, qualified name)`` of the linears of block 0: the leaf (``down_proj``), or the name inside
    the block (``mlp.c_proj``) where two linears share a leaf (GPT-2's two ``c_proj``)."""
    names = cp.target_linears(model, "all", [0])
    prefix = names[0].rsplit(".", 1)[0] if names else ""
    prefix = prefix[: prefix.index(".0.") + 3] if ".0." in prefix else ""
    leaves = [n.rsplit(".", 1)[-1] for n in names]
    out = []
    for n, leaf in zip(names, leaves):
        out.append((leaf if leaves.count(leaf) == 1 or not n.startswith(prefix) else n[len(prefix) :], n))
    return out


def projection_names(model) -> list[str]:
    """Names of the linears inside block 0, attention first (e.g. q_proj … down_proj)."""
    pairs = _block0_names(model)
    order = {"attn": 0, "mlp": 1}
    return [offer for offer, _ in sorted(pairs, key=lambda p: order.get(cp.group_of(p[1], model), 2))]


def default_mlp(model) -> list[str]:
    """The MLP's linears of block 0; the attention's where the feed-forward is a mixture of experts (its experts
    are fused 3-D tensors, not linear layers)."""
    pairs = _block0_names(model)
    mlp = [offer for offer, n in pairs if cp.group_of(n, model) == "mlp"]
    return mlp or [offer for offer, n in pairs if cp.group_of(n, model) == "attn"]


def moe_note(model) -> str | None:
    """One line for a mixture of experts (what low rank cannot touch), ``None`` otherwise."""
    moe = cp.moe_blocks(model)
    if not moe:
        return None
    return (
        f"{len(moe)} of the blocks have a mixture-of-experts feed-forward: its experts are fused 3-D tensors, "
        "not linear layers, so low rank applies to the attention (and any dense-MLP) matrices only."
    )


def also_remove(ws, key: str, exclude: list[int] | None = None) -> list[int]:
    """A picker for blocks to remove as well (depth pruning), with the prune page's selection one click away."""
    L = ws.n_blocks
    widget = f"{key}-remove"
    prune = st.session_state.get(state.PRUNE_SELECTION) or []
    cols = st.columns([3, 2], vertical_alignment="bottom")
    if prune and cols[1].button(
        "Use the prune page's selection",
        key=f"{key}-use-prune",
        width="stretch",
        help=f"blocks {', '.join(map(str, prune))}",
    ):
        st.session_state[widget] = [b for b in prune if b not in (exclude or [])]
    chosen = cols[0].multiselect(
        "Also remove blocks (depth pruning, 0-based)",
        list(range(L)),
        key=widget,
        help="applied after the change; indices refer to the original model",
    )
    return sorted(chosen)


def plan_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def plan_summary(ws, frame: pd.DataFrame) -> str:
    before, after = int(frame["parameters before"].sum()), int(frame["parameters after (factorised)"].sum())
    total = ws.lm.n_parameters()
    return (
        f"{len(frame)} matrices: {before:,} → {after:,} parameters stored factorised ({1 - after / before:.1%} of "
        f"these matrices, {(before - after) / total:.1%} of the model's {total:,}). A dense export keeps every "
        "matrix's size (the point is then the quality, not the file)."
    )


@st.cache_data(max_entries=24, show_spinner=False)
def _views(
    fingerprint: str, text_sha: str, n_windows: int, window_len: int, name: str, alpha: float, k1_share: float, _ws
) -> dict:
    """Spectra and predicted-loss curves of one matrix (cached per matrix and options)."""
    stats, _ = cp.calibration_stats(_ws.lm, _ws.text, n_windows, window_len, [cp.group_of(name)], names=[name])
    model = _ws.lm.model
    sp = cp.matrix_spectra(model, stats, name, alpha=alpha)
    curves = cp.loss_curves(model, stats, name, alpha=alpha, k1_share=k1_share)
    return {
        "weight": sp.weight.numpy(),
        "whitened": sp.whitened.numpy(),
        "asvd": sp.asvd_scaled.numpy(),
        "damping": sp.damping,
        "curves": {m: (c.ranks.numpy(), c.relative.numpy(), c.damping) for m, c in curves.items()},
    }


def matrix_views(ws, name: str, rank: int, alpha: float, k1_share: float) -> None:
    """Singular values of W and W·S, and the predicted loss against rank of every method, for one matrix."""
    c = ws.calibration
    data = _views(ws.lm.fingerprint, ws.text.sha256, c.n_windows, c.window_len, name, float(alpha), float(k1_share), ws)
    m, n = cp.linear_shape(ws.lm.model, name)
    k = np.arange(1, len(data["weight"]) + 1)
    marks = {f"rank {rank}": rank, f"break-even {cp.break_even_rank(m, n):.0f}": cp.break_even_rank(m, n)}
    series = {
        "W": data["weight"] / data["weight"][0],
        "W·S (SVD-LLM whitening)": data["whitened"] / data["whitened"][0],
        f"W·diag(mean|x|)^{alpha:g} (ASVD)": data["asvd"] / data["asvd"][0],
    }
    fig = figures.lines(
        {label: (k, v) for label, v in series.items()},
        f"Singular values of {name} ({m}×{n}), each divided by its largest",
        "index i",
        "σ_i / σ_1",
        log_y=True,
        vlines=marks,
    )
    frame = pd.DataFrame(
        {"index": k, "sigma_W": data["weight"], "sigma_WS_whitened": data["whitened"], "sigma_WS_asvd": data["asvd"]}
    )
    figure_with_csv(fig, frame, "singular_values.csv", key="lr-spectra")
    if data["damping"] > 0:
        st.caption(
            f"X Xᵀ of this input is not positive definite on the calibration tokens: the whitening added "
            f"λ = {data['damping']:.3g} to its diagonal (reported per matrix after applying)."
        )
    st.caption(
        "A flat tail of W (plain SVD) does not mean little is lost: what matters is the output W·X on real "
        "inputs, which W·S measures. For SVD-LLM the truncated singular values of W·S are exactly the loss."
    )
    curves = {
        cp.LABELS[mth] + (" (unverified)" if mth == "nsvd" else ""): (r, v) for mth, (r, v, _) in data["curves"].items()
    }
    fig = figures.lines(
        curves,
        f"Predicted ‖WX − W'X‖_F / ‖WX‖_F of {name} on the calibration tokens",
        "rank k",
        "relative output error",
        log_y=True,
        vlines=marks,
    )
    rows = [
        {"method": mth, "rank": int(r_), "relative_loss": float(v_)}
        for mth, (r, v, _) in data["curves"].items()
        for r_, v_ in zip(r, v)
    ]
    figure_with_csv(fig, pd.DataFrame(rows), "predicted_loss.csv", key="lr-loss")
    at = {cp.LABELS[mth]: float(np.interp(rank, r, v)) for mth, (r, v, _) in data["curves"].items()}
    st.caption(
        "At rank "
        + str(rank)
        + ": "
        + ", ".join(f"{k_} {v:.3f}" for k_, v in at.items())
        + ". Computed from the statistics, not by running the model; the NSVD curve is sampled at 48 ranks."
    )


def result_frame(record: dict) -> pd.DataFrame:
    """The per-matrix table of an applied low-rank change."""
    rows = []
    for r in record.get("matrices", []):
        rows.append(
            {
                "matrix": r["name"],
                "shape": f"{r['out_features']}×{r['in_features']}",
                "rank": r["rank"],
                "parameters before": r["params_before"],
                "parameters factorised": r["factorised_params"],
                "predicted ‖WX − W'X‖ / ‖WX‖": r["relative_loss"],
                "damping λ": r["damping"],
            }
        )
    return pd.DataFrame(rows)


def residual_figure(residuals: np.ndarray, chosen: list[int]):
    blocks = list(range(len(residuals)))
    return figures.bars(
        blocks,
        residuals,
        "Least-squares fit residual of h_b → h_(b+1) per block (low = nearly linear)",
        figures.BLOCK_AXIS,
        "relative residual",
        highlight=chosen,
        highlight_label="chosen to replace",
    )
