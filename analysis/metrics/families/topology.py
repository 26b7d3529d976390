"""Zigzag persistence across layers (Gardinazzi et al., arXiv 2410.11042) as a per-block redundancy score.

The score of block ``b`` is the averaged inter-layer persistence ``Z̄_1`` of the state it produces, ``h_(b+1)``,
computed with the default zigzag settings on the workspace's text: the last-token clouds of the first 500 windows of
32 tokens, k = 4, m = 3, α = 0 (:class:`analysis.profiles.topology.ZigzagSettings`; the workspace's own windows are not
used). High = the block's output shares its loops with the other layers = redundant.

The suggestion is the paper's rule, not "the k best": every block whose output state has ``Z̄_1 >= 0.9 · max``
(the maximum over all states, the embeddings and the last state included; the last state, the final-norm output
of Llama-style models, is never suggested). ``k`` is used as a cap: when more than ``k`` blocks pass the rule, the
``k`` with the highest ``Z̄_1`` are kept (ties to the lower block); ``k <= 0`` means no cap.
"""

from __future__ import annotations

import numpy as np

from analysis.metrics.base import (
    BlockMetric,
    ReportSection,
    register,
    register_group_estimate,
    register_group_writer,
    register_report_section,
)

DEFAULTS = {"windows": 500, "window_len": 32, "k": 4, "m": 3, "alpha": 0.0, "fraction": 0.9}


def _settings(params: dict):
    from analysis.profiles.topology import ZigzagSettings

    return ZigzagSettings(
        n_windows=int(params["windows"]),
        window_len=int(params["window_len"]),
        k=int(params["k"]),
        max_dim=int(params["m"]),
    )


def zigzag_result(ws, params: dict | None = None, progress=None):
    """The cached zigzag of the workspace's model and text with the default settings (computed if missing)."""
    from analysis.profiles.topology import compute_zigzag

    params = {**DEFAULTS, **(params or {})}
    return compute_zigzag(ws.lm, ws.text, _settings(params), progress=progress, allow_large=True)


def _view(ws, params, progress=None):
    from analysis.profiles.topology import describe_zigzag

    params = {**DEFAULTS, **(params or {})}
    result = zigzag_result(ws, params, progress)
    return describe_zigzag(result, p=1, alpha=float(params["alpha"]), fractions=(float(params["fraction"]),))


def _scores(ws, params, progress):
    return per_block(_view(ws, params, progress).zbar)


def _cached(ws, params) -> bool:
    from analysis.profiles.topology import zigzag_is_cached

    return zigzag_is_cached(ws.lm, ws.text, _settings({**DEFAULTS, **params}))


def _rule(ws, params, k, scores) -> list[int]:
    view = _view(ws, params)
    blocks = list(view.suggestions[float({**DEFAULTS, **params}["fraction"])]["blocks"])
    if k is not None and k > 0 and len(blocks) > k:
        z = view.zbar
        blocks = sorted(blocks, key=lambda b: (-z[b + 1], b))[:k]
    return sorted(blocks)


register(
    BlockMetric(
        key="zigzag_persistence",
        label="Zigzag persistence Z̄_1",
        redundant_when="high",
        group="topology",
        page="zigzag",
        order=40,
        default_params=dict(DEFAULTS),
        description="Averaged inter-layer persistence Z̄_1 of the block's output state (zigzag persistence of the "
        "last-token kNN clique complexes, 500 windows x 32 tokens, k = 4, m = 3, α = 0; Gardinazzi et al.). "
        "High = its loops persist across the layers. Suggestion: Z̄_1 >= 0.9 · max (k = a cap).",
        compute=_scores,
        is_cached=_cached,
        suggest_rule=_rule,
    )
)


def _write_topology_files(ws, out_dir, progress):
    """``zigzag_bars.csv`` and ``zigzag_layers.csv`` of the default zigzag (as ``python -m analysis topology``)."""
    from analysis.cache import write_csv
    from analysis.profiles.topology import describe_zigzag, zigzag_layers_frame

    result = zigzag_result(ws, None, progress)
    view = describe_zigzag(result)
    write_csv(
        out_dir / "zigzag_bars.csv", view.bars[["dim", "birth_index", "death_index", "birth_layer", "death_layer"]]
    )
    write_csv(out_dir / "zigzag_layers.csv", zigzag_layers_frame(result, view))
    return {}, {
        "zigzag": {
            **result.settings.to_dict(),
            "alpha": 0.0,
            "suggested_blocks": {f"{f:g}": s["blocks"] for f, s in view.suggestions.items()},
            "n_simplices": result.info["n_simplices"],
            "seconds": result.info.get("seconds"),
        }
    }


register_group_writer("topology", _write_topology_files)


def estimate_seconds(ws, probe: dict | None = None) -> float:
    """Seconds of the ``topology`` group (the default zigzag) when not cached, from its simplex count
    (:func:`analysis.profiles.topology.zigzag_estimate`). The count needs the last-token clouds: as the
    ``topology`` command does, their capture and the count are made before the estimate (and cached for the
    zigzag), so the seconds are Dionysus's alone."""
    from analysis.profiles.topology import zigzag_estimate

    if _cached(ws, {}):
        return 0.0
    return float(zigzag_estimate(ws.lm, ws.text, _settings(dict(DEFAULTS))).seconds)


register_group_estimate("topology", estimate_seconds)


def per_block(zbar: np.ndarray) -> np.ndarray:
    """Per-block scores from a per-state ``Z̄`` (block ``b`` gets the value of state ``b + 1``)."""
    return np.asarray(zbar, dtype=float)[1:]


def _report(ws) -> list:
    from analysis import plots

    if not _cached(ws, {}):
        return []
    view = _view(ws, {})
    n = len(view.zbar)
    s = view.suggestions[DEFAULTS["fraction"]]
    betti = {f"β{d}": view.betti[i] for i, d in enumerate(view.dims)}
    return [
        (
            "figure",
            plots.curves(
                list(range(n)),
                {"Z̄_1": view.zbar},
                "Averaged inter-layer persistence Z̄_1 (α = 0)",
                "hidden state h_s",
                "Z̄_1",
                highlight=[b + 1 for b in s["blocks"]],
            ),
            f"Zigzag persistence (Gardinazzi et al., arXiv 2410.11042) on the last token of {DEFAULTS['windows']} windows "
            f"of {DEFAULTS['window_len']} tokens, k = {DEFAULTS['k']}, m = {DEFAULTS['m']}. The 0.9·max rule removes "
            f"blocks {', '.join(map(str, s['blocks']))} (state s ↔ block s − 1).",
        ),
        ("figure", plots.curves(list(range(n)), betti, "Betti numbers per hidden state", "hidden state h_s", "β"), ""),
    ]


register_report_section(ReportSection("zigzag", "Zigzag persistence across layers", _report, order=50))


#: Bars of each dimension whose windows the report lists.
REPORT_TOP_BARS = 3


def _representatives_report(ws) -> list:
    """The windows of the longest H1 bars (and the longest finite H0 cluster) at each bar's middle layer, if the
    representatives of the default zigzag were computed (the zigzag page's button); never computes."""
    from analysis.profiles.topology import (
        representatives_are_cached,
        zigzag_representatives,
    )

    settings = _settings(DEFAULTS)
    if not representatives_are_cached(ws.lm, ws.text, settings):
        return []
    reps = zigzag_representatives(ws.lm, ws.text, settings)
    items = [
        (
            "text",
            "Each point of the zigzag is one window of text (its last token's hidden state). A long "
            "H1 bar is a ring of windows, each among the k nearest neighbours of the next, around a hole "
            "that lasts from layer to layer; an H0 bar is a cluster cut off from the rest. Listed: the "
            "windows of the longest bars at each bar's middle layer (Dionysus' apex representative, "
            "checked to be a loop of that layer's graph), with the layers in which each window is part "
            "of the bar; the window's last token is in ⟦ ⟧.",
            "",
        )
    ]
    h1 = reps.bars[reps.bars["dim"] == 1].head(REPORT_TOP_BARS)
    h0 = reps.bars[(reps.bars["dim"] == 0) & (reps.bars["death_layer"] < reps.bars["death_layer"].max())].head(1)
    for _, b in list(h1.iterrows()) + list(h0.iterrows()):
        layers = reps.layers(int(b["bar"]))
        if not layers:
            continue
        mid = layers[len(layers) // 2]
        w = reps.windows(int(b["bar"]), mid)
        if int(b["dim"]) == 0:
            w = w[w["role"] == "cluster"].head(20)
        table = w[["window", "layers", "text"]].rename(columns={"layers": "part of the bar in"})
        items.append(
            (
                "table",
                table,
                f"{reps.describe(int(b['bar']))}; windows at h{mid}"
                + (" (first 20 of the cluster)" if int(b["dim"]) == 0 else ""),
            )
        )
    return items


register_report_section(
    ReportSection(
        "zigzag_representatives", "What the longest zigzag features are made of", _representatives_report, order=51
    )
)
