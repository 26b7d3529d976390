"""The page list, grouped as the loop it serves: inspect → choose → change → re-evaluate → export."""

from __future__ import annotations

import streamlit as st

PAGES = {
    "Model": [
        ("pages/model.py", "Model and text", ":material/memory:", True),
    ],
    "Inspect": [
        ("pages/linearity.py", "Linearity and baselines", ":material/grid_on:", False),
        ("pages/avss.py", "AVSS", ":material/equalizer:", False),
        ("pages/intrinsic_dimension.py", "Intrinsic dimension", ":material/stacked_line_chart:", False),
        ("pages/projections.py", "Token projections", ":material/scatter_plot:", False),
        ("pages/persistence.py", "Persistence barcodes", ":material/bar_chart:", False),
        ("pages/zigzag.py", "Zigzag persistence", ":material/timeline:", False),
    ],
    "Decide": [
        ("pages/overview.py", "Overview", ":material/join_inner:", False),
        ("pages/leaderboard.py", "Leaderboard", ":material/leaderboard:", False),
    ],
    "Change": [
        ("pages/prune.py", "Prune and evaluate", ":material/content_cut:", False),
        ("pages/compress.py", "Compress (low rank)", ":material/compress:", False),
        ("pages/replace.py", "Replace blocks (linear)", ":material/linear_scale:", False),
        ("pages/heal.py", "Heal after the cut", ":material/healing:", False),
    ],
    "Compare and share": [
        ("pages/variants.py", "Variants", ":material/compare:", False),
        ("pages/recipe.py", "Recipe and report", ":material/description:", False),
    ],
}


def pages() -> dict[str, list]:
    return {
        group: [st.Page(path, title=title, icon=icon, default=default) for path, title, icon, default in items]
        for group, items in PAGES.items()
    }
