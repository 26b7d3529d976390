"""The leaderboard in a real browser: a small board (K = 2) started as a background job, its chart, and one rule's
selection sent to the prune page."""

import re

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_small_leaderboard_and_send_to_prune(ui):
    ui.wait_idle()
    ui.nav("Leaderboard")
    ui.page.get_by_text("Leaderboard: which blocks to cut").first.wait_for()
    for label, value in [
        ("Largest k (K)", 2),
        ("Search tokens", 128),
        ("Search window", 64),
        ("Tokens", 256),
        ("Context", 128),
        ("Stride", 64),
        ("Random samples", 2),
    ]:
        ui.number(label, value)
    ui.button("Estimate")
    ui.page.get_by_text("Estimated time").first.wait_for()
    ui.button("Start leaderboard")
    ui.page.get_by_text("Winner at each k").first.wait_for(timeout=1_500_000)
    ui.wait_idle()
    ui.page.locator(".js-plotly-plot").first.wait_for()
    ui.shot("40-leaderboard")
    body = ui.text()
    assert "Greedy search (SLEB)" in body and "Reverse order" in body
    # the page preselects the best removal rule at the largest k (which rule that is depends on the metrics other
    # tests cached on this server; a long dropdown does not draw every option, so the test does not pick one)
    m = re.search(r"Preselected: (.+?), the removal rule with the lowest perplexity at k = (\d+)", body)
    assert m, body[-3000:]
    label, k = m.group(1), m.group(2)
    ui.button("Send to prune")
    ui.page.get_by_text("Selection from").first.wait_for()
    body = ui.text()
    assert f"leaderboard: {label} (k={k})" in body, body[:1500]
    ui.shot("41-leaderboard-to-prune")
