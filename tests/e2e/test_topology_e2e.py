"""In a real browser: open the zigzag page, compute with small settings, send the 0.9 suggestion to the prune page
and see the blocks selected there; open the persistence page and compute its diagrams."""

import pytest

from analysis.profiles import topology as topo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = topo.ZigzagSettings(n_windows=120, window_len=32)


def fill_number(ui, label: str, value: str) -> None:
    """Type into a number input (exact label: ``ui.fill`` would also match the widget's "Help for ..." button)."""
    field = ui.page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Tab")


def tall_shot(ui, name: str, height: int = 4600):
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so grow the viewport for it."""
    size = ui.page.viewport_size
    ui.page.set_viewport_size({"width": size["width"], "height": height})
    ui.page.wait_for_timeout(1500)  # plotly redraws at the new size
    try:
        return ui.shot(name)
    finally:
        ui.page.set_viewport_size(size)
        ui.page.wait_for_timeout(300)


def test_zigzag_suggestion_reaches_the_prune_page(ui, lm, alice):
    ui.wait_idle()
    ui.nav("Zigzag persistence")
    ui.page.get_by_text("Press Compute zigzag").first.wait_for()
    fill_number(ui, "Windows (points)", "120")
    ui.button("Compute zigzag")
    ui.page.get_by_text("120 points × 31 states").first.wait_for()
    ui.page.get_by_text("Zigzag barcode: ").first.wait_for()
    assert ui.page.locator(".js-plotly-plot").count() >= 5
    body = ui.text()
    assert "Traceback" not in body and "k scanned from 1 to 15" in body
    tall_shot(ui, "10-zigzag")

    # the server wrote the result into the session cache this process reads too
    expected = topo.describe_zigzag(topo.compute_zigzag(lm, alice, SMALL)).suggestions[0.9]["blocks"]
    assert expected
    assert f"remove blocks {', '.join(map(str, expected))}" in body.replace("`", "")
    ui.button("Send to prune page")
    ui.page.get_by_text("Selection from").first.wait_for()
    body = ui.text()
    assert "Zigzag persistence" in body and "Prune and evaluate" in body
    box = ui.page.locator('[data-testid="stMultiSelect"]').filter(has_text="Blocks to remove").first
    tags = box.locator('[data-testid="stMultiSelectTagsContainer"] [data-tag]')
    tags.first.wait_for()  # on a loaded machine the tags can appear a moment after the page's text
    ui.page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=\"stMultiSelectTagsContainer\"] [data-tag]').length >= n",
        arg=len(expected),
    )
    chosen = tags.all_inner_texts()
    assert [int(t.strip()) for t in chosen] == expected
    ui.shot("11-prune-from-zigzag")


def test_persistence_page_draws_barcodes(ui):
    ui.nav("Persistence barcodes")
    ui.page.get_by_text("last token", exact=True).first.click()
    ui.wait_idle()
    fill_number(ui, "Windows (last-token cloud)", "120")
    ui.wait_idle()
    ui.button("Compute diagrams")
    ui.page.get_by_text("Barcode of h15").first.wait_for()
    assert ui.page.locator(".js-plotly-plot").count() >= 6
    assert "Traceback" not in ui.text()
    tall_shot(ui, "12-persistence")
