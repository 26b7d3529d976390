"""Presentation mode: a guided sequence for stakeholders, drawn only from precomputed results.

Started with ``make demo`` (or ``streamlit run app.py -- --present --recipe PATH``). It reads a completed recipe
(its evaluation included) and whatever the cache holds for its model and text; nothing is computed while
presenting, the type is larger, and there are no editing controls.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

DEFAULT_RECIPE = Path("exports/demo/recipe.json")
CSS = """
<style>
html, body, [class*="st-"] { font-size: 1.18rem; }
h1 { font-size: 3.0rem !important; } h2 { font-size: 2.1rem !important; }
[data-testid="stMetricValue"] { font-size: 2.8rem; }
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] { display: none; }
</style>
"""


def options() -> argparse.Namespace:
    """``--present`` and ``--recipe`` from the script arguments (after ``--``) or the environment."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--present", action="store_true")
    p.add_argument("--recipe", default=None)
    args, _ = p.parse_known_args(sys.argv[1:])
    args.present = args.present or os.environ.get("LAYERSCOPE_PRESENT", "") not in ("", "0")
    args.recipe = args.recipe or os.environ.get("LAYERSCOPE_RECIPE") or str(DEFAULT_RECIPE)
    return args


def style() -> None:
    st.markdown(CSS, unsafe_allow_html=True)
