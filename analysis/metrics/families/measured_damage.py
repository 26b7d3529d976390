"""Measured damage: the increase in mean NLL on the search text when the block alone is removed."""

from __future__ import annotations

from analysis.metrics.base import (
    BlockMetric,
    register,
    register_group_estimate,
)

DEFAULT_PARAMS = {"search_text": "lcet10", "search_tokens": 1024, "search_context": 512}


def search_settings(params: dict):
    from analysis.metrics.damage import SearchSettings

    p = {**DEFAULT_PARAMS, **(params or {})}
    return SearchSettings(text=p["search_text"], n_tokens=int(p["search_tokens"]), context=int(p["search_context"]))


def _compute(ws, params, progress):
    from analysis.metrics.damage import single_block_damage

    return single_block_damage(ws.lm, search_settings(params), progress=progress)


def _cached(ws, params) -> bool:
    from analysis.metrics.damage import scan_is_cached

    return scan_is_cached(ws.lm, search_settings(params), None, "block")


register(
    BlockMetric(
        key="measured_damage",
        label="Measured damage",
        redundant_when="low",
        group="damage",
        page="leaderboard",
        order=90,
        default_params=dict(DEFAULT_PARAMS),
        description="ΔNLL_b = mean NLL of the model without block b − the original's, on the search text (first 1024 "
        "tokens of lcet10, windows of 512): what removing the block alone really costs. Low = safe to remove.",
        compute=_compute,
        is_cached=_cached,
    )
)


def estimate_seconds(ws, probe: dict | None = None) -> float:
    """Seconds of the single-block damage scan on the default search settings when not cached: its forward work
    (:func:`analysis.metrics.damage.scan_work` and the reference pass) at the rate of a forward timed now."""
    from analysis.capture.estimate import forward_probe, work_model
    from analysis.metrics.damage import reference_work, scan_work

    if _cached(ws, None):
        return 0.0
    probe = probe or forward_probe(ws.lm)
    wm, search = work_model(ws.lm.model), search_settings({})
    return (scan_work(wm, search, ws.n_blocks, "block") + reference_work(wm, search)) * probe["seconds_per_work"]


register_group_estimate("damage", estimate_seconds)
