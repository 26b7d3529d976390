"""Intrinsic dimension per hidden state (METHODS.md §4): the ``id`` group of ``python -m analysis metrics``.

The ID is a property of a hidden state, not of a block, so this module registers no per-block metric (a score
such as "ID change across the block" has no published meaning as a redundancy measure). It registers a group
writer: ``--metrics id`` writes ``DIR/states.csv``, one row per hidden state ``h_0 … h_L``, with
``state, depth`` and per estimator ``id_<e>`` (the estimate on each state's whole scale-normalised, deduplicated
all-token cloud: what dadapy / scikit-dimension return for it), ``id_<e>_subset_mean, id_<e>_std, id_<e>_min,
id_<e>_max`` (over 4 disjoint subsets: the spread), ``n_points, n_distinct, subset_size, scale``; and the
settings, the peak and the final ID (whole cloud) in ``run.json``.
A state that cannot be estimated has empty cells and its reason in ``run.json`` (never a made-up number).
"""

from __future__ import annotations

import numpy as np

from analysis.metrics.base import (
    ReportSection,
    register_group_estimate,
    register_group_writer,
    register_report_section,
)


def write_states_csv(ws, out_dir, progress, params: dict | None = None):
    from analysis.cache import write_csv
    from analysis.profiles.intrinsic_dimension import IDSettings, id_profile_result

    settings = IDSettings(**(params or {}))
    prof = id_profile_result(ws, settings, progress=progress)
    write_csv(out_dir / "states.csv", prof.csv_frame())
    peak, final = prof.peak("twonn"), prof.final("twonn")
    info = {
        "headline": "each estimator on the whole distinct cloud of the state",
        "band": f"spread over {prof.subset_size_text()}",
        "n_subsets": settings.n_subsets,
        "max_points": settings.max_points,
        "seed": settings.seed,
        "estimators": {
            "twonn": "Facco et al. 2017, linear fit through the origin, top 10% of ratios discarded",
            "gride": f"Denti et al. 2022, neighbours of order {settings.gride_k} and {2 * settings.gride_k}",
            "corr": "Grassberger-Procaccia correlation dimension between the 0.1% and 5% quantiles of pairwise "
            "distances (not the 'correlators' of arXiv 2503.22547, whose definition could not be checked)",
        },
        "normalisation": "each state's cloud divided by its median pairwise distance; exact duplicates removed",
        "width": prof.width,
        "peak_state_twonn": None if peak is None else {"state": peak[0], "id": peak[1]},
        "final_id_twonn": None if final is None else {"state": final[0], "id": final[1]},
        "shape_twonn": prof.shape("twonn"),
        "errors": {str(k): v for k, v in prof.errors.items()},
    }
    return {}, {"intrinsic_dimension": info}


register_group_writer("id", write_states_csv)


def estimate_seconds(ws, probe: dict | None = None) -> float:
    """Seconds of the ``id`` group on the default settings when not cached: one state's estimates (the whole cloud
    and its subsets, :func:`analysis.profiles.intrinsic_dimension.state_id`) timed now on a random cloud of the
    workspace's size, times the states (the capture is counted apart)."""
    from analysis.capture.estimate import median_seconds
    from analysis.profiles.intrinsic_dimension import IDSettings, has_id_profile, state_id

    settings = IDSettings()
    if has_id_profile(ws, settings):
        return 0.0
    n = ws.n_cloud_tokens() if settings.max_points is None else min(ws.n_cloud_tokens(), settings.max_points)
    cloud = np.random.default_rng(0).standard_normal((n, ws.lm.width), dtype=np.float32)
    return ws.n_states * median_seconds(lambda: state_id(cloud, settings), repeats=1)


register_group_estimate("id", estimate_seconds)


def _report(ws) -> list:
    import plotly.graph_objects as go

    from analysis.profiles.intrinsic_dimension import (
        IDSettings,
        has_id_profile,
        id_profile_result,
    )

    settings = IDSettings()
    if not has_id_profile(ws, settings):
        return []
    prof = id_profile_result(ws, settings)
    fig = go.Figure()
    for est, label in (("twonn", "TwoNN"), ("gride", "GRIDE"), ("corr", "correlation dimension")):
        v = prof.valid(est)
        if v.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=v["state"],
                y=v[f"id_{est}"],
                name=label,
                mode="lines+markers",
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=(v[f"id_{est}_max"] - v[f"id_{est}"]).clip(lower=0),
                    arrayminus=(v[f"id_{est}"] - v[f"id_{est}_min"]).clip(lower=0),
                    visible=True,
                ),
            )
        )
    fig.update_layout(
        title="Intrinsic dimension against depth",
        xaxis_title="hidden state h_s",
        yaxis_title="intrinsic dimension",
        height=400,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return [
        (
            "figure",
            fig,
            f"{prof.shape('twonn')} (TwoNN, whole cloud). Points: each estimator on the whole "
            f"distinct cloud of the state; error bars: the range over {prof.subset_size_text()} "
            f"(smaller samples read higher); width {prof.width}. Correlation dimension is the closest standard estimator to "
            "the seed paper's unverified 'correlators'.",
        )
    ]


register_report_section(ReportSection("intrinsic_dimension", "Intrinsic dimension profile", _report, order=40))
