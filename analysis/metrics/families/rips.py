"""The report's section on per-layer Vietoris–Rips persistence (no per-block metric: the Persistence barcodes page
draws no suggestion, so this module only registers a report section).

Whatever diagrams were computed for this workspace (on the page or by ``python -m analysis topology``) are found by
their cache entries; nothing is computed to write the report. When several settings were computed, the most recent
complete one is shown.
"""

from __future__ import annotations

import json

from analysis.metrics.base import ReportSection, register_report_section


def cached_settings(ws) -> list:
    """Persistence settings with every state's diagrams cached for ``ws``, most recently written first."""
    from analysis import cache
    from analysis.profiles.topology import PersistenceSettings, persistence_is_cached

    root = cache.cache_root() / "persistence"
    if not root.is_dir():
        return []
    key = ws.key()
    found: dict[tuple, tuple[float, PersistenceSettings]] = {}
    for meta in root.glob("*/meta.json"):
        try:
            params = json.loads(meta.read_text())["params"]
            mtime = meta.stat().st_mtime
        except (OSError, ValueError, KeyError):
            continue
        if params.get("cloud") == "all":
            if any(params.get(k) != v for k, v in key.items()):
                continue
            s = PersistenceSettings(
                cloud="all",
                metric=params["metric"],
                n_points=int(params["n_points"]),
                max_dim=int(params["max_dim"]),
                seed=int(params["seed"]),
                drop_first=int(params.get("drop_first", 0)),
            )
        elif params.get("cloud") == "last":
            if params.get("model") != ws.lm.fingerprint or params.get("text") != ws.text.sha256:
                continue
            s = PersistenceSettings(
                cloud="last",
                metric=params["metric"],
                n_points=int(params["n_points"]),
                max_dim=int(params["max_dim"]),
                seed=int(params["seed"]),
                last_windows=int(params["windows"]),
                last_window_len=int(params["window_len"]),
            )
        else:
            continue
        ident = tuple(sorted(s.to_dict().items()))
        if ident not in found or found[ident][0] < mtime:
            found[ident] = (mtime, s)
    ordered = [s for _, s in sorted(found.values(), key=lambda t: -t[0])]
    return [s for s in ordered if persistence_is_cached(ws, s)]


def _report(ws) -> list:
    from analysis import plots
    from analysis.profiles import topology as topo

    settings = cached_settings(ws)
    if not settings:
        return []
    s = settings[0]
    res = topo.layer_persistence(ws, s)  # every state is cached: this only reads
    summary = topo.persistence_summary(res)
    dims = list(range(s.max_dim + 1))
    mid = ws.n_states // 2
    dgms = res.diagrams[mid]
    what = (
        "all tokens of the calibration windows"
        + (", the first position of each window left out (attention sink)" if s.drop_first else "")
        if s.cloud == "all"
        else f"the last token of {s.last_windows} windows of {s.last_window_len} tokens"
    )
    settings_text = (
        f"Cloud: {what}; {s.metric} distance; farthest-point subsample of {s.n_points} points; "
        f"homology up to H{s.max_dim}; every cloud divided by its median pairwise distance."
    )
    items = [
        (
            "figure",
            plots.per_dimension_curves(
                summary,
                "total_persistence_h",
                dims,
                "Total persistence (sum of finite lifetimes) per hidden state",
                "total persistence",
            ),
            settings_text,
        ),
        (
            "figure",
            plots.per_dimension_curves(
                summary, "entropy_h", dims, "Persistent entropy (nats) per hidden state", "entropy"
            ),
            "",
        ),
        ("figure", plots.persistence_barcode(dgms, f"Barcode of h{mid}"), ""),
        ("figure", plots.persistence_diagram(dgms, f"Persistence diagram of h{mid}"), ""),
        (
            "figure",
            plots.betti_curves(topo.betti_curves(dgms), f"Betti curves of h{mid}"),
            "Lifetimes in units of the state's median pairwise distance (Gardinazzi et al., arXiv 2410.11042, per-layer "
            "view).",
        ),
    ]
    if len(settings) > 1:
        items.append(("text", f"{len(settings) - 1} other setting(s) are cached too; the most recent is shown.", ""))
    return items


register_report_section(ReportSection("rips", "Per-layer persistence (Vietoris–Rips)", _report, order=45))
