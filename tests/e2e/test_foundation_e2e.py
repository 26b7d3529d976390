"""The whole loop in a real browser: load the default model, see the heatmap, prune two blocks, export, reload."""

import json

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_open_app_and_model_card(ui):
    ui.wait_idle()
    ui.page.get_by_text("Model card").wait_for()
    body = ui.text()
    assert "Blocks" in body and "30" in body and "576" in body
    ui.shot("01-model")


def test_linearity_heatmap(ui):
    ui.nav("Linearity and baselines")
    ui.page.get_by_text("Linearity from h_i (row) to h_j (column)").first.wait_for()
    assert ui.page.locator(".js-plotly-plot").count() >= 4
    ui.shot("02-linearity")


def test_prune_two_blocks_evaluate_export_reload(ui, tmp_path_factory):
    ui.nav("Prune and evaluate")
    ui.multiselect("Blocks to remove", ["12", "13"])
    ui.button("Apply and evaluate")
    ui.page.get_by_text("Original against minus 12,13").wait_for()
    ui.page.get_by_text("Greedy generation").first.wait_for()  # the result is drawn element by element
    body = ui.text()
    assert "original" in body and "pruned" in body and "Perplexity" in body
    ui.shot("03-evaluated")
    out = tmp_path_factory.mktemp("e2e-export") / "pruned"
    ui.fill("Export folder", str(out))
    ui.button("Export checkpoint")
    ui.page.get_by_text("reloaded with plain").wait_for()
    ui.shot("04-exported")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["removed_blocks"] == [12, 13]
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 28
