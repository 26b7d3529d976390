"""One way to write each kind of number, for the pages, the command line and the report alike, and the words for a
measured change, so no claim is larger than the numbers.

* Durations: :func:`format_seconds` (``0.4 s``, ``12 s``, ``3 min 20 s``, ``1 h 05 min``).
* perplexity: two decimals (``12.34``); ms/token: one decimal (``432.6``); tokens/s: thousands separated, no
  decimals (``1,234``); shares: percent with one decimal (``45.3%``); ratios (recovery): three decimals; KL:
  four decimals; bytes: MiB with one decimal.
* A missing value (``None`` or NaN) is ``—``.
* A speed change (:func:`speed_change`) is claimed only when the measured ranges (min–max over the timing rounds) do
  not overlap; otherwise it is "no measurable change". Without ranges, the medians are shown and no change is
  claimed either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MISSING = "—"
NO_CHANGE = "no measurable change"


def format_seconds(s: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 20 s``, ``1 h 05 min`` (a negative duration is 0)."""
    s = max(0.0, float(s))
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m:02d} min"


def _missing(v) -> bool:
    if v is None:
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def perplexity(v) -> str:
    """``12.34``."""
    return MISSING if _missing(v) else f"{float(v):,.2f}"


def ms(v) -> str:
    """Milliseconds, one decimal: ``432.6``."""
    return MISSING if _missing(v) else f"{float(v):,.1f}"


def ms_per_token(v) -> str:
    """``432.6 ms/token``."""
    return MISSING if _missing(v) else f"{ms(v)} ms/token"


def tokens_per_s(v) -> str:
    """``1,234``."""
    return MISSING if _missing(v) else f"{float(v):,.0f}"


def ratio(v) -> str:
    """A ratio such as recovery (original perplexity / changed perplexity; 1 = no loss): ``0.934``."""
    return MISSING if _missing(v) else f"{float(v):.3f}"


def kl(v) -> str:
    """A KL divergence in nats per token: ``0.0123``."""
    return MISSING if _missing(v) else f"{float(v):.4f}"


def percent(v, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage: ``0.4531`` → ``45.3%`` (``digits`` decimals)."""
    return MISSING if _missing(v) else f"{float(v):.{int(digits)}%}"


def mib(n_bytes, digits: int = 1) -> str:
    """``123.4 MiB``."""
    return MISSING if _missing(n_bytes) else f"{float(n_bytes) / 2**20:,.{int(digits)}f} MiB"


def count(v) -> str:
    """An integer with thousands separators: ``134,515,008``."""
    return MISSING if _missing(v) else f"{int(v):,}"


def with_range(median, spread: Mapping | None, fmt=ms) -> str:
    """``432.6 (420.1–440.0)``: the median and the min–max of the rounds, when there is more than one round."""
    text = fmt(median)
    if spread and int(spread.get("n", 0)) > 1:
        text += f" ({fmt(spread['min'])}–{fmt(spread['max'])})"
    return text


def ranges_overlap(a: Mapping, b: Mapping) -> bool:
    """Whether the ranges ``[a.min, a.max]`` and ``[b.min, b.max]`` share a point."""
    return not (float(a["max"]) < float(b["min"]) or float(b["max"]) < float(a["min"]))


def speed_change(original: Mapping | None, changed: Mapping | None, lower_is_better: bool = True) -> str:
    """``"faster"``, ``"slower"`` or :data:`NO_CHANGE` for two timing spreads (``{median, min, max, n}``).

    Faster or slower only when the ranges do not overlap; ranges of one round each (or none) never support a
    claim. ``lower_is_better``: ms/token (True) or tokens/s (False)."""
    if not original or not changed or min(int(original.get("n", 0)), int(changed.get("n", 0))) < 2:
        return NO_CHANGE
    if ranges_overlap(original, changed):
        return NO_CHANGE
    changed_lower = float(changed["max"]) < float(original["min"])
    return "faster" if changed_lower == lower_is_better else "slower"


def speed_sentence(
    what: str,
    original_median,
    changed_median,
    original: Mapping | None,
    changed: Mapping | None,
    unit: str = "ms per token",
    lower_is_better: bool = True,
    fmt=ms,
) -> str:
    """``decoding 432.6 → 419.3 ms per token (ranges 420.1–445.0 and 410.2–430.3 overlap): no measurable change``;
    ``… : faster`` / ``slower`` only when the ranges are apart."""
    verdict = speed_change(original, changed, lower_is_better)
    text = f"{what} {fmt(original_median)} → {fmt(changed_median)} {unit}"
    have = bool(original and changed and min(int(original.get("n", 0)), int(changed.get("n", 0))) > 1)
    if have:
        rel = "overlap" if ranges_overlap(original, changed) else "do not overlap"
        text += (
            f" (medians; ranges {fmt(original['min'])}–{fmt(original['max'])} and "
            f"{fmt(changed['min'])}–{fmt(changed['max'])} {rel})"
        )
    else:
        text += " (medians; no ranges measured)"
    return f"{text}: {verdict}"
