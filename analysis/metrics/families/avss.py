"""AVSS, the activation variance-sparsity score (Song et al., arXiv 2411.02117; METHODS.md §3).

Parameters (``default_params``; the command line sets them with ``--avss-site/--avss-eps/--avss-relative``):
``site`` (``mlp`` by default: on the residual stream almost no entry is below 1e-5, so the score divides by a
handful of entries; see :mod:`analysis.profiles.avss`), ``eps`` (None = 1e-5 absolute, 0.01 relative), ``relative``,
``share`` (0.25).

Suggestion (``suggest_rule``): a prefix of the blocks sorted by AVSS ascending — the ``k`` lowest, but never past
the sorted cumulative NAVSS ``share`` (the paper's 25 % rule). So ``k`` is the most blocks to take and the share is
the paper's cap; on a model whose AVSS is dominated by a few blocks (SmolLM2: one block holds most of the sum),
the share alone would select nearly every block, and ``k`` decides.
"""

from __future__ import annotations

import numpy as np

from analysis.metrics.base import (
    _REGISTRY,
    BlockMetric,
    ReportSection,
    register,
    register_group_estimate,
    register_group_writer,
    register_report_section,
)

DEFAULTS = {"site": "mlp", "eps": None, "relative": False, "share": 0.25}
#: a suggested block is flagged when another measure ranks it among the top quarter of the blocks by importance
IMPORTANT_SHARE = 0.25


def contradiction(suggested, scores, label: str, redundant_when: str = "low", top: int | None = None) -> str | None:
    """One caveat line when a block AVSS suggests removing is among the ``top`` most *important* blocks by another
    measure (``scores``, oriented by ``redundant_when``; default top: a quarter of the blocks), else None."""
    s = np.asarray(scores, dtype=float)
    L = len(s)
    top = top or max(1, int(L * IMPORTANT_SHARE))
    importance = np.where(np.isfinite(s), s if redundant_when == "low" else -s, -np.inf)
    order = sorted(range(L), key=lambda b: (-importance[b], b))  # most important first
    rank = {b: i + 1 for i, b in enumerate(order)}
    hit = [int(b) for b in suggested if 0 <= int(b) < L and np.isfinite(s[int(b)]) and rank[int(b)] <= top]
    if not hit:
        return None
    ranks = ", ".join(f"block {b}: rank {rank[b]}" for b in hit)
    return (
        f"Caveat: AVSS suggests removing block{'s' if len(hit) > 1 else ''} {', '.join(map(str, hit))}, which "
        f"{label} ranks among the {top} most important of {L} blocks ({ranks}; rank 1 = most important). The "
        "suggestion contradicts it: check the measured damage (leaderboard) before cutting."
    )


def contradictions(ws, suggested) -> list[str]:
    """The caveats for AVSS's ``suggested`` blocks against block influence and, when computed, measured damage
    (only what is already in the cache is read; nothing is computed)."""
    from analysis.metrics.families import baselines, measured_damage  # noqa: F401  (registers both)

    out = []
    for key in ("block_influence", "measured_damage"):
        metric = _REGISTRY.get(key)
        if metric is None or not metric.cached(ws):
            continue
        label = "block influence (ShortGPT)" if key == "block_influence" else "measured damage (ΔNLL)"
        line = contradiction(suggested, metric.scores(ws), label, metric.redundant_when)
        if line:
            out.append(line)
    return out


def _settings(params: dict):
    from analysis.profiles.avss import AVSSSettings

    return AVSSSettings.from_params(params)


def _compute(ws, params, progress):
    from analysis.profiles.avss import avss_result

    return avss_result(ws, _settings(params), progress=progress).table["avss"].to_numpy()


def _is_cached(ws, params) -> bool:
    from analysis.profiles.avss import has_avss

    return has_avss(ws, _settings(params))


def _suggest(ws, params, k, scores) -> list[int]:
    from analysis.profiles.avss import suggest_avss, table_from_scores

    return suggest_avss(table_from_scores(scores), share=float(params.get("share", 0.25)), k=int(k))


register(
    BlockMetric(
        key="avss",
        label="AVSS",
        redundant_when="low",
        group="avss",
        page="avss",
        order=30,
        description="AVSS_b = variance / sparsity of the block's activations at the chosen site (default: MLP hidden "
        "activation, the input of down_proj). Low = little varied, mostly small activity. The suggestion "
        "takes the k lowest, never past a sorted cumulative NAVSS of 25 %.",
        compute=_compute,
        is_cached=_is_cached,
        default_params=dict(DEFAULTS),
        suggest_rule=_suggest,
    )
)


def write_avss_columns(ws, out_dir, progress, params: dict | None = None):
    """``avss_variance`` and ``avss_sparsity`` columns for layers.csv; the site and settings for run.json."""
    from analysis.profiles.avss import NEAR_ZERO_SPARSITY, avss_result, is_moe, site_label

    settings = _settings({**DEFAULTS, **(params or {})})
    res = avss_result(ws, settings, progress=progress)
    t = res.table
    share = float((params or {}).get("share", DEFAULTS["share"]))
    info = {
        "site": settings.site,
        "site_label": site_label(settings.site, is_moe(ws.lm)),
        "eps": settings.eps,
        "relative": settings.relative,
        "threshold": "|a| < eps * RMS(a) per token" if settings.relative else "|a| < eps",
        "ddof": settings.ddof,
        "share": share,
        "suggested_by_share": res.suggest(share=share),
        "near_zero_sparsity_blocks": res.near_zero,
        "near_zero_threshold": NEAR_ZERO_SPARSITY,
        "zero_sparsity_blocks": [int(b) for b in t.loc[t["sparsity_zero"], "block"]],
        "zero_sparsity_note": "where no entry is below the threshold, avss = variance * n_entries (a lower bound)",
        "tokens_per_block": int(t["n_tokens"].iloc[0]),
    }
    return ({"avss_variance": t["variance"].to_numpy(), "avss_sparsity": t["sparsity"].to_numpy()}, {"avss": info})


register_group_writer("avss", write_avss_columns)


def _report(ws) -> list:
    from analysis import plots
    from analysis.profiles.avss import (
        NEAR_ZERO_SPARSITY,
        avss_result,
        has_avss,
        is_moe,
        site_label,
    )

    settings = _settings(DEFAULTS)
    if not has_avss(ws, settings):
        return []
    res = avss_result(ws, settings)
    t = res.table
    blocks = t["block"].tolist()
    k = max(1, ws.n_blocks // 8)
    picked = res.suggest(share=DEFAULTS["share"], k=k)
    curve = res.curve()
    where = site_label(settings.site, is_moe(ws.lm))
    bars = plots.bars(
        blocks,
        t["avss"],
        f"AVSS per block at the {where} (log scale; low = redundant)",
        plots.BLOCK_AXIS,
        "AVSS",
        highlight=picked,
        hover_fmt=".4g",
    )
    plots.set_log_axis(bars, t["avss"].tolist())  # one block holds most of the sum: linear bars hide the rest
    by_share = res.suggest(share=DEFAULTS["share"])
    caveats = [("text", line, "") for line in contradictions(ws, picked)]
    return [
        (
            "figure",
            bars,
            f"AVSS = variance / sparsity (|a| < {settings.eps}); suggested: {', '.join(map(str, picked))} (k = {k}, "
            f"never past a sorted cumulative share of {DEFAULTS['share']:.0%}). Blocks with raw sparsity below "
            f"{NEAR_ZERO_SPARSITY:g}: {', '.join(map(str, res.near_zero)) or 'none'}.",
        ),
        *caveats,
        (
            "figure",
            plots.curves(
                list(range(1, len(curve) + 1)),
                {"cumulative NAVSS": curve["cumulative_navss"]},
                "Cumulative normalised AVSS over blocks sorted by AVSS",
                "blocks taken",
                "cumulative share",
            ),
            f"The paper's rule keeps the lowest blocks while this stays ≤ 25 %: here {len(by_share)} of {len(blocks)} "
            "blocks, hence the cap k.",
        ),
    ]


register_report_section(ReportSection("avss", "Activation variance and sparsity (AVSS)", _report, order=30))


def estimate_seconds(ws, probe: dict | None = None) -> float:
    """Seconds of AVSS on the default settings when not cached: one forward of the calibration windows with the
    site's hooks, at the rate of a forward timed now."""
    from analysis.capture.estimate import forward_probe, work_model

    if _is_cached(ws, dict(DEFAULTS)):
        return 0.0
    probe = probe or forward_probe(ws.lm)
    c = ws.calibration
    return c.n_windows * c.window_len * work_model(ws.lm.model).per_token() * probe["seconds_per_work"]


register_group_estimate("avss", estimate_seconds)
