"""In a real browser: the dashboard's state survives a reload of the tab (docs/dashboard-state.md).

A leaderboard started with small settings and the tab reloaded while it runs: the page shows the running job with
its progress and the settings it was started with, and then its result. Cancel in the job panel: the job ends
"cancelled" and the settings stay. The prune page's selection survives a reload."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = [
    ("Largest k (K)", 1),
    ("Search tokens", 128),
    ("Search window", 64),
    ("Tokens", 256),
    ("Context", 128),
    ("Stride", 64),
    ("Random samples", 2),
]


def value(ui, label: str) -> str:
    return ui.page.get_by_role("spinbutton", name=label, exact=True).first.input_value()


def reload(ui) -> None:
    assert "session=" in ui.page.url  # the tab's id: what finds its jobs and settings again
    ui.page.reload()  # a new Streamlit session
    ui.page.get_by_text("LlamaForCausalLM").first.wait_for(timeout=600_000)


def main(ui):
    return ui.page.locator('[data-testid="stMain"]')


def no_traceback(ui) -> None:
    """Fails with the traceback's text (opened from its expander) when the page shows one."""
    if "Traceback" in ui.text():
        main(ui).get_by_text("Traceback").first.click()
        ui.wait_idle()
        pytest.fail("the page shows a traceback:\n" + ui.text()[-4000:])


def test_a_running_leaderboard_is_found_again_after_a_reload_with_its_settings(ui):
    ui.wait_idle()
    ui.nav("Leaderboard")
    ui.page.get_by_text("Leaderboard: which blocks to cut").first.wait_for()
    for label, v in SMALL:
        ui.number(label, v)
    # no Estimate first: Start takes what the fields say (it started k = 1..7 while the field said 1)
    main(ui).get_by_role("button", name="Start leaderboard").first.click()
    ui.page.get_by_text("Leaderboard k=1..1").first.wait_for(timeout=120_000)
    running = "runs in the background" in ui.text()
    ui.shot("state-01-leaderboard-running")
    reload(ui)
    ui.page.get_by_text("Leaderboard: which blocks to cut").first.wait_for()
    ui.page.get_by_text("Leaderboard k=1..1").first.wait_for()
    ui.wait_idle()
    assert [value(ui, label) for label, _ in SMALL] == [str(v) for _, v in SMALL]
    body = ui.text()
    if "Winner at each k" not in body:  # still running: the panel with its progress, found again
        assert "Leaderboard k=1..1" in body and "elapsed" in body and "No leaderboard" not in body, body[-2000:]
        assert main(ui).get_by_role("button", name="Cancel").count() == 1
        assert main(ui).locator('[data-testid="stProgress"]').count() >= 1 or "Working" in body
        ui.shot("state-02-leaderboard-after-reload-running")
    ui.page.get_by_text("Winner at each k").first.wait_for(timeout=1_500_000)
    ui.wait_idle()
    no_traceback(ui)
    assert value(ui, "Largest k (K)") == "1"
    ui.shot("state-03-leaderboard-after-reload-finished")
    assert running, "the leaderboard had finished before the reload: nothing was tested about a running job"


def test_cancel_in_the_job_panel_cancels_and_keeps_the_settings(ui):
    ui.number("Largest k (K)", 3)
    ui.number("Random samples", 3)
    main(ui).get_by_role("button", name="Start leaderboard").first.click()
    ui.page.get_by_text("Leaderboard k=1..3").first.wait_for(timeout=120_000)
    ui.shot("state-04-leaderboard-before-cancel")
    main(ui).get_by_role("button", name="Cancel").first.click()
    ui.page.get_by_text("Nothing was kept").first.wait_for(timeout=300_000)
    ui.wait_idle()
    body = ui.text()
    assert "Leaderboard k=1..3, quick answer: cancelled" in body, body[-2000:]
    assert "Leaderboard k=1..3, full board: cancelled" in body, body[-2000:]  # the board queued behind it too
    assert value(ui, "Largest k (K)") == "3" and value(ui, "Random samples") == "3"
    ui.shot("state-05-leaderboard-cancelled")
    reload(ui)  # after a reload too
    ui.page.get_by_text("Nothing was kept").first.wait_for(timeout=120_000)
    assert value(ui, "Largest k (K)") == "3"


def test_the_prune_selection_survives_a_reload(ui):
    ui.nav("Prune and evaluate")
    box = ui.page.locator('[data-testid="stMultiSelect"]').filter(has_text="Blocks to remove").first
    for opt in ("12", "13"):
        box.locator("input").click()
        box.locator("input").fill(opt)
        ui.page.get_by_role("option", name=opt, exact=True).first.click()
    ui.page.keyboard.press("Escape")
    ui.wait_idle()
    ui.page.get_by_text("Estimated time of the evaluation").first.wait_for()
    reload(ui)
    ui.page.get_by_text("Prune and evaluate").first.wait_for()
    ui.wait_idle()
    box = ui.page.locator('[data-testid="stMultiSelect"]').filter(has_text="Blocks to remove").first
    tags = [t.strip() for t in box.locator('[data-testid="stMultiSelectTagsContainer"] [data-tag]').all_inner_texts()]
    assert tags == ["12", "13"], tags
    assert "Stale result" not in ui.text()
    ui.shot("state-06-prune-after-reload")
