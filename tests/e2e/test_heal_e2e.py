"""In a real browser: prune minus 12,13, start a short healing job on the heal page, leave for another page and come
back, see it finish (loss curve, gap closed) and the healed variant beside the cut one in the variants table."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def fill_number(ui, label: str, value: str) -> None:
    field = ui.page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Tab")
    ui.wait_idle()


def test_heal_minus_12_13_in_the_background(ui):
    ui.wait_idle()
    ui.nav("Prune and evaluate")
    ui.multiselect("Blocks to remove", ["12", "13"])
    for label, value in (("Tokens", "256"), ("Context", "128"), ("Stride", "128")):
        field = ui.page.get_by_label(label, exact=True).first
        field.fill(value)
        field.press("Tab")
    box = ui.page.get_by_role("checkbox", name="Measure speed", exact=True).first
    if box.is_checked():
        ui.page.get_by_text("Measure speed", exact=True).first.click()
    ui.button("Apply and evaluate")
    ui.page.get_by_text("Original against minus 12,13").first.wait_for(timeout=900_000)
    ui.wait_idle()

    ui.nav("Heal after the cut")
    ui.page.get_by_text("Perplexity on asyoulik").first.wait_for()
    for label, value in (("Steps", "3"), ("Batch size (windows)", "1"), ("Window length (tokens)", "32")):
        fill_number(ui, label, value)
    ui.page.get_by_text("3 steps × 1 windows = 96 tokens").first.wait_for()
    ui.shot("heal-01-settings")
    ui.page.get_by_role("button", name="Start healing").first.click()
    ui.page.get_by_text("Heal minus 12,13").first.wait_for(timeout=120_000)
    ui.shot("heal-02-running")
    ui.nav("Model and text")  # leave while it runs
    assert "LlamaForCausalLM" in ui.page.locator('[data-testid="stSidebar"]').inner_text()
    ui.nav("Heal after the cut")
    ui.page.get_by_text("Gap closed").first.wait_for(timeout=900_000)
    ui.wait_idle()
    body = ui.text()
    assert "Original against minus 12,13 · healed" in body and "Traceback" not in body
    ui.shot("heal-03-finished")
    ui.nav("Variants")
    body = ui.text()
    assert "minus 12,13 · healed" in body and "gap closed" in body
    ui.shot("heal-04-variants")
