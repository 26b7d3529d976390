"""LayerScope: look inside a causal language model layer by layer, and make it smaller.

Entry point: the shared sidebar and the navigation over ``pages/``. Run with ``make run`` or
``streamlit run app.py``; ``make demo`` (``-- --present``) opens the guided presentation instead.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from components import navigation, presentation, sidebar  # noqa: E402

st.set_page_config(page_title="LayerScope", page_icon=":material/biotech:", layout="wide")
if presentation.options().present:
    st.navigation([st.Page("pages/presentation.py", title="LayerScope", default=True)], position="hidden").run()
else:
    from analysis.model.architecture import ModelLoadError

    page = st.navigation(navigation.pages(), expanded=True)  # every page listed, none behind "View more"
    # the sidebar after st.navigation: its widgets' ids include the active page's hash, which on a fresh server's
    # first run is only settled once the navigation is known (before, the first form submission of the first
    # session was lost)
    sidebar.render()
    try:
        page.run()
    except ModelLoadError as exc:  # e.g. a results-only folder asked to compute something new
        st.error(str(exc))
