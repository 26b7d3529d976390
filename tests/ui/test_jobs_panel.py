"""AppTest of the job panel and the sidebar's job list (components/jobs.py), on small work functions (no model)."""

from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from analysis import jobs as core

OWNER = "0123456789abcdef"


@pytest.fixture(autouse=True)
def no_inline_wait(monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_JOB_WAIT", "0")  # the panel as a browser sees it, not waited for


def panel_script():
    import streamlit as st

    from components import jobs

    def count(job):
        st.session_state["delivered"] = st.session_state.get("delivered", 0) + 1

    jobs.show(st.session_state["job_key"], on_done=count)
    with st.sidebar:
        jobs.sidebar()


def app(key: str) -> AppTest:
    at = AppTest.from_function(panel_script, default_timeout=60)
    at.session_state["job_key"] = key
    at.session_state["_jobs_owner"] = OWNER
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_running_job_shows_its_bar_elapsed_time_and_a_cancel_button_that_cancels():
    gate = threading.Event()

    def work(job):
        job.report(3, 10, "block 3")
        while not gate.wait(0.02):
            job.check()

    job = core.submit("ui-panel-run", "Rips persistence of 31 states", work, owner=OWNER)
    time.sleep(0.2)
    at = app("ui-panel-run")
    bars = at.get("progress")
    assert bars and abs(bars[0].proto.value - 30) <= 1  # 3 of 10 (the proto keeps percent)
    assert "block 3 — 3 of 10" in bars[0].proto.text
    assert any("elapsed" in c.value and "you may leave this page" in c.value for c in at.caption)
    assert "**Rips persistence of 31 states**" in [m.value for m in at.markdown]
    side = " ".join(c.value for c in at.sidebar.caption)
    assert "running · 30% · block 3" in side
    at.button(key="job-cancel-ui-panel-run").click().run()
    assert core.wait("ui-panel-run", timeout=5).state == core.CANCELLED
    at.run()
    assert any("cancelled after" in w.value and "Nothing was kept" in w.value for w in at.warning)
    assert not any("Background jobs" in h.value for h in at.sidebar.subheader) or at.sidebar.warning
    gate.set()
    assert job.state == core.CANCELLED


def test_a_job_without_a_count_shows_its_stage_with_a_spinner_and_no_bar():
    gate = threading.Event()

    def work(job):
        job.set_stage("Counting simplices")
        gate.wait(5)

    core.submit("ui-panel-stage", "Zigzag", work, owner=OWNER)
    time.sleep(0.2)
    at = app("ui-panel-stage")
    assert not at.get("progress")
    status = at.get("status")
    assert status and "Counting simplices" in status[0].proto.label and status[0].proto.icon == "spinner"
    gate.set()
    core.wait("ui-panel-stage", timeout=5)


def test_a_queued_job_says_where_it_waits():
    gate = threading.Event()
    core.submit("ui-panel-first", "first", lambda job: gate.wait(5), owner=OWNER)
    core.submit("ui-panel-second", "second", lambda job: 1, owner=OWNER)
    at = app("ui-panel-second")
    assert any("queued (next; one job at a time per session)" in c.value for c in at.caption)
    gate.set()
    assert core.wait("ui-panel-second", timeout=5).state == core.DONE


def test_a_failed_job_shows_its_message_never_a_traceback():
    """The user's error (a LayerScopeError): its one line, no traceback anywhere."""
    from analysis.errors import InputError

    def boom(job):
        raise InputError("the healing text is too short for one batch")

    core.wait(core.submit("ui-panel-fail", "Healing", boom, owner=OWNER).key, timeout=5)
    at = app("ui-panel-fail")
    errors = [e.value for e in at.error]
    assert errors == ["Healing failed: the healing text is too short for one batch"]
    assert "Traceback" not in " ".join(errors) and not at.exception and not at.expander


def test_a_bug_in_a_job_shows_its_type_and_the_traceback_in_an_expander():
    def boom(job):
        raise ZeroDivisionError("division by zero")

    core.wait(core.submit("ui-panel-bug", "Healing", boom, owner=OWNER).key, timeout=5)
    at = app("ui-panel-bug")
    assert [e.value for e in at.error] == ["Healing failed: ZeroDivisionError: division by zero"]
    assert any("Traceback" in e.label for e in at.expander)
    assert any("ZeroDivisionError" in c.value for c in at.code)


def test_a_finished_job_hands_its_result_once_and_is_announced_once_in_the_sidebar():
    gate = threading.Event()
    core.submit("ui-panel-done", "Zigzag of 120 windows", lambda job: gate.wait(5) and 7, owner=OWNER)
    at = app("ui-panel-done")  # seen running by this session
    assert at.sidebar.subheader[0].value == "Background jobs"
    gate.set()
    core.wait("ui-panel-done", timeout=5)
    at.run()
    assert at.session_state["delivered"] == 1
    assert any("Zigzag of 120 windows: finished in" in s.value for s in at.sidebar.success)
    assert any("finished in" in c.value for c in at.caption)
    at.run()
    assert at.session_state["delivered"] == 1  # once per session
    assert not at.sidebar.success  # announced once


def test_owner_is_kept_in_the_url_and_taken_from_it_after_a_reload():
    def script():
        import streamlit as st

        from components import jobs

        st.write(jobs.owner())

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    first = at.markdown[0].value
    assert len(first) == 16 and at.query_params["session"] in (first, [first])
    reloaded = AppTest.from_function(script, default_timeout=30)  # a new session on the same URL
    reloaded.query_params["session"] = first
    reloaded.run()
    assert reloaded.markdown[0].value == first
    bogus = AppTest.from_function(script, default_timeout=30)
    bogus.query_params["session"] = "<script>"
    bogus.run()
    assert bogus.markdown[0].value != "<script>" and len(bogus.markdown[0].value) == 16


def test_the_sidebar_lists_a_running_job_with_its_time_left_and_a_cancel_button_that_cancels():
    gate = threading.Event()

    def work(job):
        job.report(1, 4, "window 1/4")
        while not gate.wait(0.02):
            job.check()

    job = core.submit("ui-sidebar-cancel", "Leaderboard k=1..1", work, owner=OWNER, meta={"estimate_s": 600})
    time.sleep(0.2)
    at = app("ui-sidebar-cancel")
    assert any("left of the estimated 10 min 00 s" in c.value for c in at.caption)  # the panel
    assert "left of the estimated" in " ".join(c.value for c in at.sidebar.caption)  # the sidebar
    at.button(key=f"sidebar-job-cancel-{job.id}").click().run()
    assert core.wait("ui-sidebar-cancel", timeout=5).state == core.CANCELLED
    at.run()
    assert any("cancelled after" in w.value for w in at.warning)
    gate.set()
