"""Settings and selections survive navigation and a reload of the tab (a new Streamlit session on the same URL,
``?session=``): they are kept on the server per tab (components.state.tab_store), and the jobs belong to the tab."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import APP, no_exceptions, open_page, texts


def kept_script():
    import streamlit as st

    from components import state

    state.keep_widgets(["tab-k", "tab-text"], context="model-a")
    st.number_input("k", 1, 30, 7, key="tab-k")
    st.selectbox("Text", ["alice", "lcet10"], key="tab-text")


def reloaded(script, session: str) -> AppTest:
    """A new session (a reloaded tab) on the same URL."""
    at = AppTest.from_function(script, default_timeout=30)
    at.query_params["session"] = session
    at.run()
    return at


def test_kept_widgets_survive_a_reload_of_the_tab_and_only_of_that_tab():
    at = AppTest.from_function(kept_script, default_timeout=30)
    at.run()
    session = at.query_params["session"]
    session = session[0] if isinstance(session, list) else session
    at.number_input(key="tab-k").set_value(1).run()
    at.selectbox(key="tab-text").set_value("lcet10").run()
    again = reloaded(kept_script, session)
    assert again.number_input(key="tab-k").value == 1 and again.selectbox(key="tab-text").value == "lcet10"
    other = AppTest.from_function(kept_script, default_timeout=30)  # another tab: its own defaults
    other.run()
    assert other.number_input(key="tab-k").value == 7 and other.selectbox(key="tab-text").value == "alice"


def _session(at: AppTest) -> str:
    s = at.query_params["session"]
    return s[0] if isinstance(s, list) else s


def _reload_app(session: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=900)
    at.query_params["session"] = session
    at.run()
    return at


@pytest.mark.slow
def test_leaderboard_settings_survive_navigation_and_reload(app):
    open_page(app, "pages/leaderboard.py")
    app.number_input(key="lb-k-max").set_value(1)
    app.number_input(key="lb-random").set_value(2)
    app.multiselect(key="lb-metrics").set_value(["measured_damage"])
    [b for b in app.button if b.label == "Estimate"][0].click()
    app.run()
    no_exceptions(app)
    open_page(app, "pages/model.py")
    open_page(app, "pages/leaderboard.py")
    assert app.number_input(key="lb-k-max").value == 1 and app.number_input(key="lb-random").value == 2
    again = open_page(_reload_app(_session(app)), "pages/leaderboard.py")
    no_exceptions(again)
    assert again.number_input(key="lb-k-max").value == 1 and again.number_input(key="lb-random").value == 2
    assert again.multiselect(key="lb-metrics").value == ["measured_damage"]


@pytest.mark.slow
def test_prune_selection_and_its_result_survive_a_reload(app):
    open_page(app, "pages/prune.py")
    app.multiselect(key="prune-blocks").set_value([20, 21]).run()
    assert "Estimated time of the evaluation with these settings: about" in texts(app)
    # a form's values are taken when it is submitted: set them and press Apply in one run
    for key, v in (("eval-prune-tokens", 256), ("eval-prune-context", 128), ("eval-prune-stride", 128)):
        app.number_input(key=key).set_value(v)
    app.checkbox(key="eval-prune-speed").uncheck()
    [b for b in app.button if b.label == "Apply and evaluate"][0].click()
    app.run()  # waited for inline (LAYERSCOPE_JOB_WAIT)
    no_exceptions(app)
    assert "Result for the current selection: blocks 20, 21" in texts(app)
    again = open_page(_reload_app(_session(app)), "pages/prune.py")
    no_exceptions(again)
    assert again.multiselect(key="prune-blocks").value == [20, 21]
    body = texts(again)
    assert "Result for the current selection: blocks 20, 21" in body and "Stale result" not in body
    assert again.number_input(key="eval-prune-tokens").value == 256
