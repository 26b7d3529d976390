"""LayerScope: look inside a causal language model layer by layer, and make it smaller.

Entry point: the shared sidebar and the navigation over ``pages/``. Run with ``make run`` or
``streamlit run app.py``.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from components import navigation, sidebar  # noqa: E402

st.set_page_config(page_title="LayerScope", page_icon=":material/biotech:", layout="wide")
sidebar.render()
page = st.navigation(navigation.pages())
page.run()
