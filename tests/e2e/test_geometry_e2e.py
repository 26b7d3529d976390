"""AVSS, intrinsic dimension and projections in a real browser, on small calibration windows (8 × 64 tokens)."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _select(ui, label: str, option: str) -> None:
    box = ui.page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.click()
    ui.page.get_by_role("option", name=option).first.click()
    ui.wait_idle()


def _number(ui, label: str, value: str) -> None:
    """Fill a number input (``ui.fill`` would hit the input's help button, whose label contains the same text)."""
    field = ui.page.get_by_role("spinbutton", name=label).first
    field.fill(value)
    field.press("Tab")


def _tall_shot(ui, name: str, height: int = 4200) -> None:
    """A screenshot of the whole page: Streamlit scrolls an inner container, so grow the viewport instead."""
    size = ui.page.viewport_size
    ui.page.set_viewport_size({"width": size["width"], "height": height})
    ui.page.wait_for_timeout(1500)  # plotly re-lays out its charts
    ui.shot(name)
    ui.page.set_viewport_size(size)


def test_small_calibration(ui):
    ui.wait_idle()
    _number(ui, "Windows N", "8")
    _number(ui, "Tokens per window T", "64")
    ui.button("Use this text")
    ui.page.get_by_text("8 × 64 tokens").first.wait_for()


def test_avss_page(ui):
    ui.nav("AVSS")
    ui.page.get_by_text("AVSS per block").first.wait_for()
    ui.page.locator(".js-plotly-plot").nth(4).wait_for()  # five charts (rendered after the text, under load)
    body = ui.text()
    assert "Remove blocks" in body and "Send to prune" in body
    ui.shot("10-avss-mlp")
    _select(ui, "Activation site", "block output (residual stream)")
    ui.page.get_by_text("Sparsity is near zero").first.wait_for()
    assert "30 of 30 blocks" in ui.text()
    ui.shot("11-avss-residual")
    _tall_shot(ui, "11b-avss-residual-whole")
    ui.button("Use relative threshold ε · RMS(a)")
    ui.page.get_by_text("RMS(a) (per token)").first.wait_for()  # the rerun with the relative threshold is shown
    ui.wait_idle()
    assert "Sparsity is near zero" not in ui.text()
    ui.shot("12-avss-relative")
    _tall_shot(ui, "12b-avss-relative-whole")


def test_intrinsic_dimension_page(ui):
    ui.nav("Intrinsic dimension")
    ui.page.get_by_text("could not be checked").first.wait_for()
    _number(ui, "Points per state", "512")
    ui.button("Compute ID profile")
    ui.page.get_by_text("ID against scale (GRIDE sweep)").first.wait_for()
    ui.page.locator(".js-plotly-plot").nth(1).wait_for()
    body = ui.text()
    assert "Peak" in body and "Final ID" in body and "576" in body
    ui.shot("13-intrinsic-dimension")
    _tall_shot(ui, "13b-id-whole", height=2600)


def test_projections_page(ui):
    ui.nav("Token projections")
    ui.page.get_by_text("Explained variance").first.wait_for()
    ui.page.locator(".js-plotly-plot").first.wait_for()
    assert "hidden by default" in ui.text()  # the attention sink is left out without asking
    ui.shot("14-projections-pca")
