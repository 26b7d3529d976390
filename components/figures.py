"""Plotly figure builders for the pages.

The generic builders live in :mod:`analysis.plots` so that the HTML report (written by the dashboard and by
``python -m analysis report``) draws the same figures; page-specific builders go here.
"""

from analysis.plots import BASE, BLOCK_AXIS, HIGHLIGHT, bars, curves, heatmap, lines, state_labels  # noqa: F401
