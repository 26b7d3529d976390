"""Stopping the server while a background job is inside torch: no "terminate called without an active exception"
(an abort, exit status -6, from a daemon worker thread ended by the interpreter's exit in the middle of C++ code).
The jobs are cancelled (at their next module forward) and joined at exit (analysis/jobs.py)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_server_during_a_job_exits_cleanly(sig, browser, cache_dir, artifacts):
    port = _free_port()
    env = dict(os.environ, LAYERSCOPE_CACHE=str(cache_dir), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.pop("LAYERSCOPE_JOB_WAIT", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "localhost",
            "--server.port",
            str(port),
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(600_000)
        tab.goto(url)
        tab.get_by_text("LlamaForCausalLM").first.wait_for()
        tab.get_by_role("link", name="Leaderboard").first.click()
        tab.get_by_role("button", name="Start leaderboard").first.click()  # the default board: minutes of work
        tab.get_by_text("runs in the background").first.wait_for()
        time.sleep(2)
        tab.screenshot(path=str(artifacts / f"e2e-stop-{sig.name}-job-running.png"))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        context.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode(errors="replace")
    assert "terminate called" not in err, err[-3000:]
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
