"""Tables and charts of the variants kept in a session."""

from __future__ import annotations

import pandas as pd

from analysis.changes.variant import describe_action
from analysis.plots import quality_cost_figure  # noqa: F401 (shared with the report)


def variants_frame(variants) -> pd.DataFrame:
    """One row for the original and one per variant (metrics from each variant's evaluation)."""
    rows = []
    for i, v in enumerate(variants):
        ev = v.evaluation
        if ev is None:
            continue
        if not rows:
            rows.append(_row("original", "—", ev.original))
        rows.append(_row(v.name, describe_action(v.action), ev.candidate, gap_closed(v)))
    return pd.DataFrame(rows)


def healing_gap(variant) -> dict:
    """The perplexities of original, cut and healed and the gap closed, as measured when ``variant`` was healed (the
    cut and the healed variant evaluated with the same settings); empty for a variant that was not healed."""
    if not variant.action.get("heal"):
        return {}
    return (variant.recipe.get("healing") or {}).get("gap") or {}


def gap_closed(variant) -> float | None:
    """(ppl_cut − ppl_healed) / (ppl_cut − ppl_original) of a healed variant (None for the others)."""
    return healing_gap(variant).get("gap_closed")


def _row(name: str, change: str, r, gap: float | None = None) -> dict:
    return {
        "variant": name,
        "change": change,
        "perplexity": r.perplexity,
        "recovery": r.recovery,
        "gap closed": gap,
        "KL to original": r.kl_to_original,
        "top-1 agreement": r.top1_agreement,
        "parameters": r.parameters,
        "weights MiB": r.weight_bytes / 2**20,
        "prefill tokens/s": r.prefill_tokens_per_s,
        "decode ms/token": r.decode_ms_per_token,
        "peak memory MiB": None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20,
    }
