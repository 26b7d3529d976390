"""In a real browser: compress two blocks' MLPs with SVD-LLM, evaluate, export factorised and reload; then replace a
block by a linear map on the linear-replacement page and evaluate it."""

import json

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def fill_number(ui, label: str, value: str) -> None:
    field = ui.page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Tab")
    ui.wait_idle()


def tall_shot(ui, name: str, height: int = 5200):
    """Streamlit scrolls inside its main block: grow the viewport to capture the whole page."""
    size = ui.page.viewport_size
    ui.page.set_viewport_size({"width": size["width"], "height": height})
    ui.page.wait_for_timeout(1500)
    try:
        return ui.shot(name)
    finally:
        ui.page.set_viewport_size(size)
        ui.page.wait_for_timeout(300)


def small_evaluation(ui) -> None:
    for label, value in (("Tokens", "512"), ("Context", "256"), ("Stride", "256")):
        field = ui.page.get_by_label(label, exact=True).first
        field.fill(value)
        field.press("Tab")
    ui.page.get_by_text("Measure speed", exact=True).first.click()


def test_compress_evaluate_export(ui, tmp_path_factory):
    ui.wait_idle()
    ui.nav("Compress (low rank)")
    ui.page.get_by_text("Singular values of model.layers.0.mlp.gate_proj").first.wait_for()
    assert "90 matrices" in ui.text()
    ui.page.get_by_text("chosen blocks", exact=True).first.click()
    ui.wait_idle()
    ui.multiselect("Blocks whose matrices to truncate", ["4"])
    ui.page.get_by_text("6 matrices").first.wait_for()
    tall_shot(ui, "compress-01-before")
    small_evaluation(ui)
    ui.button("Apply and evaluate")
    ui.page.get_by_text("Original against SVD-LLM 20% mlp in 0,4").first.wait_for()
    body = ui.text()
    assert "compressed" in body and "Perplexity" in body
    out = tmp_path_factory.mktemp("e2e-compress") / "svdllm"
    ui.fill("Export folder", str(out))
    ui.button("Export checkpoint")
    ui.page.get_by_text("the project's loader").first.wait_for()
    tall_shot(ui, "compress-02-evaluated-exported")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["export"]["form"] == "factorised"
    assert sorted(recipe["compression"]["low_rank"]["ranks"]) == sorted(
        f"model.layers.{b}.mlp.{p}_proj" for b in (0, 4) for p in ("gate", "up", "down")
    )
    from analysis.model.checkpoint import load_checkpoint

    model = load_checkpoint(out)
    assert type(model.model.layers[4].mlp.down_proj).__name__ == "FactorisedLinear"


def test_replace_a_block_by_a_linear_map(ui):
    ui.nav("Replace blocks (linear)")
    ui.page.get_by_text("Least-squares fit residual").first.wait_for()
    ui.multiselect("Blocks to replace by linear maps", ["12"])
    small_evaluation(ui)
    ui.button("Apply and evaluate")
    ui.page.get_by_text("Original against linear 12").first.wait_for()
    assert "Fit residual of the replaced blocks: block 12" in ui.text()
    tall_shot(ui, "replace-01-evaluated")
    ui.nav("Variants")
    body = ui.text()
    assert "SVD-LLM 20% mlp in 0,4" in body and "linear 12" in body
    ui.shot("compress-03-variants")
