"""LayerScope analysis: every computation behind the dashboard, importable without Streamlit.

Run ``python -m analysis --help`` for the command line, which shares its code paths and its on-disk cache
(``cache/``) with the dashboard.
"""
