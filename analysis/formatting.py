"""One way to write each kind of number, for the pages, the command line and the report alike.

Durations: :func:`format_seconds` (``0.4 s``, ``12 s``, ``3 min 20 s``, ``1 h 05 min``).
"""

from __future__ import annotations


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
