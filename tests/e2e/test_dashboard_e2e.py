"""Defaults and the report in a real browser (issue 13): the AVSS page's default suggestion is a useful few blocks,
the report is written where the user says, has coloured, legended, unclipped figures (checked on the rendered file in
Chromium, screenshot in artifacts/), and is never overwritten without the tick."""

import re

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _number(ui, label: str, value: str) -> None:
    field = ui.page.get_by_role("spinbutton", name=label).first
    field.fill(value)
    field.press("Tab")


def _small_evaluation(ui, speed: bool) -> None:
    ui.number("Tokens", 512)
    ui.number("Context", 256)
    ui.number("Stride", 128)
    if not speed:
        ui.uncheck("Measure speed")
    ui.button("Apply and evaluate")


def test_small_calibration(ui):
    ui.wait_idle()
    _number(ui, "Windows N", "8")
    _number(ui, "Tokens per window T", "64")
    ui.button("Use this text")
    ui.page.get_by_text("8 × 64 tokens").first.wait_for()


def test_default_avss_suggestion_is_not_most_of_the_model(ui):
    ui.nav("AVSS")
    ui.page.get_by_text("AVSS per block").first.wait_for()
    ui.page.locator(".js-plotly-plot").nth(4).wait_for()
    body = ui.text()
    m = re.search(r"Remove blocks\s+([\d, ]+)\s+\((\d+) of (\d+)\)", body)
    assert m, body[:2000]
    chosen, total = int(m.group(2)), int(m.group(3))
    assert total == 30 and 1 <= chosen <= total // 4  # a handful of blocks, not 29 of 30
    assert "would take" in body  # the paper's share rule is named with its caveat
    ui.shot("30-avss-default")


def test_rips_persistence_and_baselines_for_the_report(ui):
    ui.nav("Persistence barcodes")
    _number(ui, "Subsample (farthest points)", "60")
    ui.wait_idle()
    assert "left out by default" in ui.text()  # the attention sink is left out, and the page says so
    ui.button("Compute diagrams")
    ui.page.get_by_text("Betti curves of").first.wait_for()
    ui.nav("Linearity and baselines")  # block influence and angular distance: two more metrics in the report
    ui.page.get_by_text("Suggested blocks to remove").first.wait_for()


def test_two_variants(ui):
    ui.nav("Prune and evaluate")
    ui.multiselect("Blocks to remove", ["12", "13"])
    _small_evaluation(ui, speed=True)
    ui.page.get_by_text("Original against minus 12,13").wait_for()
    assert "interleaved" in ui.text()  # both rows timed in the same run, with the spread
    ui.shot("31-evaluated-interleaved")
    ui.multiselect("Blocks to remove", ["20"])
    _small_evaluation(ui, speed=False)
    ui.page.get_by_text("Original against minus 12,13,20").wait_for()


def test_report_is_coloured_legended_unclipped_and_never_overwritten(ui, browser, tmp_path_factory):
    target = tmp_path_factory.mktemp("e2e-report") / "stakeholders.html"
    ui.nav("Recipe and report")
    ui.fill("Write to (an .html file)", str(target))
    ui.wait_idle()
    ui.button("Write report")
    ui.page.get_by_text("Report written to").wait_for()
    assert target.is_file()
    first = target.read_text()

    tab = browser.new_page(viewport={"width": 1300, "height": 1000})
    tab.goto(f"file://{target}")
    tab.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    tab.wait_for_timeout(2000)
    summary = tab.locator("p.summary").inner_text()
    assert "remove blocks 12, 13, 20" in summary and "It costs quality" in summary and "It saves" in summary
    html = tab.content()
    for section in (
        "Per-layer persistence (Vietoris–Rips)",
        "Variants: quality against cost",
        "Generations side by side",
        "Where the metrics agree",
    ):
        assert section in html, section
    # coloured: the line traces use several real colours, none of Streamlit's black placeholders
    strokes = tab.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot path.js-line')]
                               .map(p => getComputedStyle(p).stroke)""")
    colours = {s for s in strokes if s and s != "none"}
    assert len(colours) >= 3, colours
    assert not any(re.fullmatch(r"rgb\(0, 0, [0-9]\)", c) for c in colours), colours
    # legended: every figure with more than one visible series draws a legend
    missing = tab.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].filter(el => {
        const named = (el.data || []).filter(t => t.showlegend !== false && t.name);
        return named.length > 1 && !el.querySelector('.legend');
      }).map(el => el.layout.title && el.layout.title.text)""")
    assert not missing, missing
    # unclipped: every axis label lies inside its figure
    clipped = tab.evaluate("""() => {
        const out = [];
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
          const box = el.getBoundingClientRect();
          for (const t of el.querySelectorAll('.xtick text, .ytick text, .g-xtitle text, .g-ytitle text')) {
            const r = t.getBoundingClientRect();
            if (r.width && (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1
                            || r.bottom > box.bottom + 1)) out.push(t.textContent);
          }
        }
        return out; }""")
    assert not clipped, clipped
    tab.set_viewport_size({"width": 1300, "height": 1000})
    tab.screenshot(path=str(ui.artifacts / "e2e-32-report-top.png"), full_page=False)
    agree = tab.get_by_text("Where the metrics agree").first
    agree.scroll_into_view_if_needed()
    tab.screenshot(path=str(ui.artifacts / "e2e-33-report-agreement.png"), full_page=False)
    tab.get_by_text("Variants: quality against cost").first.scroll_into_view_if_needed()
    tab.screenshot(path=str(ui.artifacts / "e2e-34-report-variants.png"), full_page=False)
    tab.close()

    # a second write to the same file is refused until the tick
    ui.button("Write report")
    ui.page.get_by_text("Not written").first.wait_for()
    assert target.read_text() == first
    ui.shot("35-report-refused")
