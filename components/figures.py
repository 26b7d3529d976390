"""Plotly figure builders for the pages.

The generic builders live in :mod:`analysis.plots` so that the HTML report (written by the dashboard and by
``python -m analysis report``) draws the same figures; page-specific builders go here.
"""

from analysis.plots import (  # noqa: F401
    BASE,
    BLOCK_AXIS,
    HIGHLIGHT,
    bars,
    comparison_curves,
    curves,
    heatmap,
    lines,
    state_labels,
)
