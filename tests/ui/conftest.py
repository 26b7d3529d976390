"""AppTest helpers: every page of the dashboard runs in-process on the real bundled model."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=900)
    at.run()
    return at


def sidebar_app(script) -> AppTest:
    """An AppTest of a script that draws the sidebar itself.

    Streamlit 1.67's AppTest drops the entry point's sidebar on every rerun of an ``st.navigation`` app (a plain
    reproduction: a radio in the sidebar of a one-page navigation app is gone after ``at.run()`` a second time), so
    interactions with the sidebar are tested on a script that renders it directly; the real browser test covers
    the assembled app.
    """
    import os

    at = AppTest.from_function(script, default_timeout=900)
    os.chdir(ROOT)
    at.run()
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    return at


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [str(e.value)[:3000] for e in at.exception]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(map(str, parts))


@pytest.fixture(autouse=True)
def jobs_wait_inline(monkeypatch):
    """Pages start their long computations as background jobs (components/jobs.py); in AppTest a page waits for
    its job inline, so a test sees the result in the run that started it (tests of the panel itself set 0)."""
    monkeypatch.setenv("LAYERSCOPE_JOB_WAIT", "900")


@pytest.fixture
def app(lm):  # the session model fixture makes sure the conversion happened once
    return new_app()
