"""Choices survive navigation: a keyed widget that a run does not draw (another page was open) gets its value back
(components.state.keep_widgets); the server configuration the background jobs need."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def page_script():
    import streamlit as st

    from components import state

    if st.session_state.get("on_page", True):  # False: "another page" is open, the widget is not drawn
        state.keep_widgets(["kept-blocks", "kept-method"], context=st.session_state.get("model", "a"))
        st.multiselect("Blocks", list(range(30)), key="kept-blocks")
        st.radio("Method", ["svd", "svd-llm"], index=1, key="kept-method")
    else:
        st.write("elsewhere")


def test_a_kept_widget_gets_its_value_back_after_another_page_was_shown():
    at = AppTest.from_function(page_script, default_timeout=30)
    at.run()
    at.multiselect(key="kept-blocks").set_value([12, 13]).run()
    at.radio(key="kept-method").set_value("svd").run()
    at.session_state["on_page"] = False
    at.run()
    at.run()  # the widgets' own state is gone now
    assert "kept-blocks" not in at.session_state or not at.multiselect
    at.session_state["on_page"] = True
    at.run()
    assert at.multiselect(key="kept-blocks").value == [12, 13]
    assert at.radio(key="kept-method").value == "svd"
    # another model: its pages start from their defaults
    at.session_state["on_page"] = False
    at.run()
    at.run()
    at.session_state["model"] = "b"
    at.session_state["on_page"] = True
    at.run()
    assert at.multiselect(key="kept-blocks").value == [] and at.radio(key="kept-method").value == "svd-llm"


def test_the_file_watcher_polls_the_app_source_only():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["fileWatcherType"] in ("poll", "none")  # no recursive inotify watch over .venv and cache/
    assert {"cache", "artifacts", "exports"} <= set(server["folderWatchBlacklist"])
    assert server["runOnSave"] is False


def test_no_full_garbage_collection_after_every_script_run():
    # a job panel refreshes every second; Streamlit's gc.collect(2) after each run (~1 s with the model loaded on a
    # busy 2-core machine, holding the GIL) starved the job's thread
    runner = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["runner"]
    assert runner["postScriptGC"] is False
