"""Decide and share in a real browser: two metrics, the overview's consensus to the prune page, two variants,
their comparison, and the HTML report opened in the browser."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _evaluate_small(ui):
    ui.number("Tokens", 512)
    ui.number("Context", 256)
    ui.number("Stride", 128)
    ui.uncheck("Measure speed")
    ui.button("Apply and evaluate")


def test_consensus_two_variants_compare_and_report(ui, browser, tmp_path_factory):
    ui.wait_idle()
    ui.nav("Linearity and baselines")  # computes linearity and the baselines (four registered metrics)
    ui.page.get_by_text("Suggested blocks to remove").wait_for()
    ui.nav("Overview")
    ui.page.get_by_text("CONSENSUS").first.wait_for()
    ui.shot("20-overview")
    ui.button("Send to prune")
    ui.page.get_by_text("Selection from").first.wait_for()
    assert "consensus" in ui.text()
    _evaluate_small(ui)
    ui.page.get_by_text("Original against").first.wait_for()
    ui.multiselect("Blocks to remove", ["21"])
    _evaluate_small(ui)
    ui.nav("Variants")
    body = ui.text()
    assert body.count("minus ") >= 2 and "original" in body
    ui.shot("21-variants")
    ui.nav("Recipe and report")
    path = tmp_path_factory.mktemp("e2e-decide-report") / "report.html"  # the user chooses where it goes
    ui.fill("Write to (an .html file)", str(path))
    ui.wait_idle()
    ui.button("Write report")
    ui.page.get_by_text("Report written to").wait_for()
    assert path.is_file()
    tab = browser.new_page(viewport={"width": 1300, "height": 1000})
    tab.goto(f"file://{path}")
    tab.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert "Where the metrics agree" in tab.content()
    tab.screenshot(path=str(ui.artifacts / "e2e-22-report.png"), full_page=False)
    tab.close()
