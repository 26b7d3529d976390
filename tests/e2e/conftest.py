"""End-to-end harness: a real ``streamlit run`` on a free localhost port, driven by Debian's Chromium.

Chromium is launched by Playwright's Python package through ``executable_path`` (no Playwright browser download),
with ``--headless --no-sandbox --disable-gpu --disable-background-networking``. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: run `make browser` (make test does it)")
    return path


@pytest.fixture(scope="session")
def app_url(cache_dir):
    port = _free_port()
    env = dict(os.environ, LAYERSCOPE_CACHE=str(cache_dir), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.pop("LAYERSCOPE_JOB_WAIT", None)  # background jobs as a user gets them (not waited for inline)
    log = open(ROOT / "artifacts" / "streamlit-e2e.log", "w") if (ROOT / "artifacts").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}")
    else:
        proc.kill()
        pytest.fail("streamlit did not become healthy in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open_ready(context, url: str):
    """A tab on the app once its first run (which loads the default model) has finished."""
    tab = context.new_page()
    tab.set_default_timeout(int(os.environ.get("E2E_TIMEOUT_MS", 240_000)))
    tab.goto(url)
    tab.get_by_text("LlamaForCausalLM").first.wait_for(timeout=900_000)
    tab.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')"
        "?.getAttribute('data-test-script-state') === 'notRunning'",
        timeout=900_000,
    )
    return tab


@pytest.fixture(scope="module")
def page(browser, app_url, artifacts):
    """One browser tab per test module: state flows from test to test inside a module, and every module starts
    from a fresh Streamlit session (a new tab is a new session), so modules do not depend on their order."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    tab = _open_ready(context, app_url)
    yield tab
    context.close()


class UI:
    """Small helpers to drive Streamlit widgets from Playwright."""

    def __init__(self, page, artifacts: Path):
        self.page = page
        self.artifacts = artifacts

    def wait_idle(self, timeout: float = 900_000) -> None:
        """Wait until the script run triggered by the last action has finished (``data-test-script-state``)."""
        state = "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state')"
        try:  # the rerun may start a moment after the click
            self.page.wait_for_function(f"() => {state} === 'running'", timeout=3_000)
        except Exception:
            pass
        # idle means idle for a while: a run can trigger another (st.rerun, a page switch), and a widget filled
        # between the two is re-created by the second run and loses its value
        for _ in range(50):
            self.page.wait_for_function(f"() => {state} === 'notRunning'", timeout=timeout)
            self.page.wait_for_timeout(800)
            if self.page.evaluate(f"() => {state}") == "notRunning":
                break

    def nav(self, title: str) -> None:
        self.page.get_by_role("link", name=title).first.click()
        self.wait_idle()

    def button(self, label: str) -> None:
        self.page.get_by_role("button", name=label).first.click()
        self.wait_idle()

    def multiselect(self, label: str, options: list[str]) -> None:
        box = self.page.locator('[data-testid="stMultiSelect"]').filter(has_text=label).first
        for opt in options:
            box.locator("input").click()
            box.locator("input").fill(opt)
            self.page.get_by_role("option", name=opt, exact=True).first.click()
        self.page.keyboard.press("Escape")
        self.wait_idle()

    def fill(self, label: str, value: str) -> None:
        field = self.page.get_by_role("textbox", name=label, exact=True).first
        field.fill(value)
        field.press("Tab")

    def number(self, label: str, value) -> None:
        field = self.page.get_by_role("spinbutton", name=label, exact=True).first
        field.fill(str(value))
        field.press("Tab")

    def uncheck(self, label: str) -> None:
        box = self.page.get_by_role("checkbox", name=label, exact=True).first
        if box.is_checked():  # the input is hidden behind Streamlit's label, which takes the click
            box.locator("xpath=ancestor::label[1]").click()
            self.wait_idle()

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"e2e-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self) -> str:
        return self.page.locator('[data-testid="stMain"]').inner_text()


@pytest.fixture(scope="module")
def ui(page, artifacts) -> UI:
    return UI(page, artifacts)
