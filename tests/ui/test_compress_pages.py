"""AppTest of the compress page (views, bad input, apply, evaluation table, both exports) and the linear
replacement page, on the real model with 8 calibration windows and short evaluations."""

import json

import pytest

from analysis.capture.workspace import Calibration
from tests.ui.conftest import no_exceptions, open_page, texts

pytestmark = pytest.mark.slow


@pytest.fixture
def small_app(app):
    app.session_state["calibration"] = Calibration(n_windows=8, window_len=128)
    return app


def _by_label(widgets, label):
    return next(w for w in widgets if w.label == label)


def _evaluate_small(at):
    form = {n.label: n for n in at.number_input}
    form["Tokens"].set_value(512)
    form["Context"].set_value(256)
    form["Stride"].set_value(256)
    _by_label(at.checkbox, "Measure speed").uncheck()
    _by_label(at.button, "Apply and evaluate").click()
    at.run()
    no_exceptions(at)


def _export(at, out, form=None):
    _by_label(at.text_input, "Export folder").set_value(str(out))
    if form is not None:
        _by_label(at.radio, "Form").set_value(form)
    _by_label(at.button, "Export checkpoint").click()
    at.run()
    no_exceptions(at)


def test_compress_page_views_apply_evaluate_export(small_app, tmp_path):
    at = open_page(small_app, "pages/compress.py")
    no_exceptions(at)
    body = texts(at)
    assert "Gathered in" in body and "90 matrices" in body  # every MLP matrix of the 30 blocks
    assert len(at.get("plotly_chart")) == 2  # spectra of W and W·S, predicted loss against rank
    plan = at.dataframe[0].value
    assert list(plan["rank"].unique()) == [335] and len(plan) == 90
    at.radio(key="lr-scope").set_value("chosen blocks")
    at.run()
    at.multiselect(key="lr-blocks").set_value([3, 4])
    at.run()
    assert "6 matrices" in texts(at)
    _evaluate_small(at)
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == ["original", "compressed"]
    assert float(table["Perplexity"][1]) > float(table["Perplexity"][0])
    assert any("not positive definite" in str(w.value) for w in at.warning)  # 1024 tokens < 1536 inputs: damped
    out = tmp_path / "fact"
    _export(at, out)  # factorised is the first form offered
    assert any("the project's loader" in str(s.value) for s in at.success), texts(at)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["export"]["form"] == "factorised"
    assert recipe["compression"]["low_rank"]["ranks"]["model.layers.4.mlp.down_proj"] == 335
    assert recipe["parameters"]["factorised"] < recipe["parameters"]["original"]
    assert recipe["evaluation"]["compressed"]["perplexity"] > 0
    config = json.loads((out / "config.json").read_text())
    assert len(config["layerscope_factorised"]) == 6
    _export(at, tmp_path / "dense", form="dense")
    assert any("reloaded with plain" in str(s.value) for s in at.success)
    assert "layerscope_factorised" not in json.loads((tmp_path / "dense" / "config.json").read_text())


@pytest.mark.parametrize(
    "setup,message",
    [
        ({"lr-ratio": 1.0}, "strictly between 0 and 1"),
        ({"lr-ratio": 0.0}, "strictly between 0 and 1"),
        ({"lr-amount": "explicit rank", "lr-rank": 5000}, "rank 5000 is impossible for model.layers.0.mlp.gate_proj"),
    ],
)
def test_compress_page_refuses_bad_amounts(small_app, setup, message):
    at = open_page(small_app, "pages/compress.py")
    for key, value in setup.items():
        widget = next(w for w in list(at.number_input) + list(at.radio) if w.key == key)
        widget.set_value(value)
        at.run()
    no_exceptions(at)
    assert any(message in str(e.value) for e in at.error), texts(at)
    assert len(at.get("plotly_chart")) == 0


def test_compress_with_removal_is_one_variant(small_app):
    at = open_page(small_app, "pages/compress.py")
    at.radio(key="lr-scope").set_value("chosen blocks")
    at.run()
    at.multiselect(key="lr-blocks").set_value([5])
    at.multiselect(key="lr-remove").set_value([12, 13])
    at.run()
    _evaluate_small(at)
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == ["original", "changed"]
    assert "Original against SVD-LLM 20% mlp in 5 minus 12,13" in [s.value for s in at.subheader]


def test_replace_page_residuals_apply_and_export(small_app, tmp_path):
    at = open_page(small_app, "pages/replace.py")
    no_exceptions(at)
    assert len(at.get("plotly_chart")) == 1 and "Relative residual" in texts(at)
    at.slider(key="replace-k").set_value(1)
    at.run()
    _by_label(at.button, "Use these blocks").click()
    at.run()
    chosen = at.multiselect(key="replace-blocks").value
    assert len(chosen) == 1
    _evaluate_small(at)
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == ["original", "compressed"]
    assert "Fit residual of the replaced blocks" in texts(at)
    out = tmp_path / "lin"
    _export(at, out)
    assert any("the project's loader" in str(s.value) for s in at.success), texts(at)
    assert json.loads((out / "config.json").read_text())["layerscope_linear_blocks"] == chosen
