"""Block influence (ShortGPT) and angular distance (Gromov et al.): the baselines users expect."""

from __future__ import annotations

import numpy as np

from analysis.methods import baselines
from analysis.metrics.base import BlockMetric, ReportSection, register, register_report_section

BI_ABOVE_ONE = (
    "BI = 1 − mean cos can exceed 1: then the mean cosine is negative, the block's output points on "
    "average away from its input (for the last block, its output is read after the final norm, as "
    "Hugging Face returns the last hidden state)."
)


def block_influence_note(bi) -> str:
    """:data:`BI_ABOVE_ONE` naming the blocks whose BI is above 1, or "" when none is."""
    above = [b for b, v in enumerate(np.asarray(bi, dtype=float)) if v > 1.0]
    if not above:
        return ""
    return (
        f"Block{'s' if len(above) > 1 else ''} {', '.join(map(str, above))}: "
        + ", ".join(f"BI {float(bi[b]):.3f}" for b in above)
        + ". "
        + BI_ABOVE_ONE
    )


def baseline_results(ws, progress=None) -> dict:
    """Block influence per block (all tokens) and the angular-distance matrix (last token), cached."""

    def compute():
        cap = ws.capture()
        bi = baselines.block_influence(cap.reader(), exclude_first=ws.calibration.exclude_first, progress=progress)
        last = np.stack([cap.last_token_cloud(s) for s in range(ws.n_states)])
        D = baselines.angular_distance_matrix(last)
        return {"block_influence": bi, "angular": D}, {"windows": int(last.shape[1])}

    arrays, data, outcome = ws.result("baselines", {"v": 1}, compute)
    return {**arrays, **data, "outcome": outcome}


def _cached(ws, params) -> bool:
    return ws.has_result("baselines", {"v": 1})


def _best_range(ws, params, k, scores) -> list[int]:
    if k <= 0:
        return []
    start, end, _ = baselines.best_range_of_size(baseline_results(ws)["angular"], k)
    return list(range(start, end))


register(
    BlockMetric(
        key="block_influence",
        label="Block influence",
        redundant_when="low",
        group="linearity",
        page="linearity",
        order=20,
        description="BI_b = 1 − mean cos(h_b, h_{b+1}) over all tokens (ShortGPT). Low = the block barely turns "
        "the residual stream; above 1 = the mean cosine is negative (the output points away from the input).",
        compute=lambda ws, p, progress: baseline_results(ws, progress)["block_influence"],
        is_cached=_cached,
    )
)

register(
    BlockMetric(
        key="angular_distance",
        label="Angular distance",
        redundant_when="low",
        group="linearity",
        page="linearity",
        order=21,
        description="d(b, 1) = arccos(cos(h_b, h_{b+1}))/π on the last token of each window (Gromov et al.). The "
        "suggestion is the contiguous range [l, l+k) with the smallest d(l, k).",
        compute=lambda ws, p, progress: baseline_results(ws, progress)["angular"][:, 0],
        is_cached=_cached,
        suggest_rule=_best_range,
    )
)


def _report(ws) -> list:
    import pandas as pd

    from analysis import plots

    if not ws.has_result("baselines", {"v": 1}):
        return []
    res = baseline_results(ws)
    L = len(res["block_influence"])
    best = pd.DataFrame(baselines.best_ranges(res["angular"]), columns=["size", "start", "end", "distance"])
    best.insert(1, "range", [f"[{s}, {e})" for s, e in zip(best.start, best.end)])
    return [
        (
            "figure",
            plots.bars(
                list(range(L)), res["block_influence"], "Block influence (low = redundant)", plots.BLOCK_AXIS, "BI"
            ),
            " ".join(
                filter(
                    None,
                    [
                        "BI_b = 1 − mean cos(h_b, h_(b+1)) over all tokens (ShortGPT).",
                        block_influence_note(res["block_influence"]),
                    ],
                )
            ),
        ),
        (
            "figure",
            plots.heatmap(
                res["angular"],
                list(range(1, L + 1)),
                list(range(L)),
                "Angular distance d(l, n)",
                "block size n",
                "start block l",
                colorscale="Viridis_r",
            ),
            "arccos(cos(h_l, h_(l+n)))/π on the last token of each window (Gromov et al.).",
        ),
        ("table", best[["size", "range", "distance"]], "Best range [start, end) of every size."),
    ]


register_report_section(ReportSection("baselines", "Block influence and angular distance", _report, order=20))
