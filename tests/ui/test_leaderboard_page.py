"""AppTest of the leaderboard page: a small board (K = 1) computed as a job, its chart and tables, one selection
sent to the prune page."""

import pytest

from tests.ui.conftest import no_exceptions, open_page, texts

pytestmark = pytest.mark.slow
SMALL = {
    "Largest k (K)": 1,
    "Search tokens": 128,
    "Search window": 64,
    "Tokens": 256,
    "Context": 128,
    "Stride": 64,
    "Random samples": 2,
}


def test_leaderboard_page_runs_a_small_board_and_sends_to_prune(app):
    open_page(app, "pages/leaderboard.py")
    no_exceptions(app)
    assert "Leaderboard" in app.title[0].value
    for n in app.number_input:
        if n.label in SMALL:
            n.set_value(SMALL[n.label])
    box = [m for m in app.multiselect if m.label == "Metrics"][0]
    # the default is the cached metrics plus measured damage: other tests may have cached some; keep this board small
    assert "measured_damage" in box.value  # metric keys (plain data: kept per tab, restored after a reload)
    box.set_value(["measured_damage"])
    [b for b in app.button if b.label == "Estimate"][0].click()
    app.run()
    no_exceptions(app)
    assert "Estimated time: about" in texts(app)
    [b for b in app.button if b.label == "Start leaderboard"][0].click()
    app.run()  # the job is waited for inline in AppTest (LAYERSCOPE_JOB_WAIT)
    no_exceptions(app)
    assert len(app.get("plotly_chart")) >= 3  # leaderboard, damage, greedy
    # SLEB's candidate set by default, and the page says which set was searched
    assert "Greedy search (SLEB) searched SLEB's candidates: every block but the first and the last" in texts(app)
    # the ReplaceMe row names the rule that chose its run
    labels = {str(i) for d in app.dataframe for i in d.value.index}
    assert "Replace (ReplaceMe; run by the ReplaceMe authors' rule: last-token angular distance)" in labels, labels
    winners = [d.value for d in app.dataframe if "winner" in d.value.columns][0]
    assert list(winners["k"]) == [1]
    corr = [d.value for d in app.dataframe if "spearman" in d.value.columns]
    assert corr  # (empty: no proxy metric chosen)
    assert "Preselected: **" in texts(app) and app.selectbox(key="lb-rule").value != "reverse"  # the best removal
    app.selectbox(key="lb-rule").set_value("reverse")
    app.run()
    [b for b in app.button if b.label == "Send to prune"][0].click()
    app.run()
    no_exceptions(app)
    assert app.multiselect(key="prune-blocks").value == [28]
    assert "leaderboard: Reverse order (k=1)" in texts(app)


def test_leaderboard_page_refuses_the_evaluation_text_as_search_text(app):
    open_page(app, "pages/leaderboard.py")
    box = [s for s in app.selectbox if s.label == "Search text"][0]
    box.set_value("asyoulik")
    [b for b in app.button if b.label == "Estimate"][0].click()
    app.run()
    no_exceptions(app)
    assert any("tune on the test" in str(e.value) for e in app.error)


def test_leaderboard_page_refuses_a_bad_ray_address_in_one_line(app):
    open_page(app, "pages/leaderboard.py")
    box = [t for t in app.text_input if t.label == "Ray cluster address"][0]
    assert box.value == ""  # empty: in this process
    box.set_value("head node:6379")
    [b for b in app.button if b.label == "Estimate"][0].click()
    app.run()
    no_exceptions(app)
    assert any("a Ray address is host:port" in str(e.value) for e in app.error)
