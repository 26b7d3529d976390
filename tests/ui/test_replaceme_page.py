"""AppTest of the replace page's ReplaceMe method on the real model: the formula renders (no stray emphasis), the
run is chosen by its score, ReplaceMe is evaluated beside plain removal of the same run, and the export reloads
with plain AutoModelForCausalLM."""

import json

import pytest
from markdown_it import MarkdownIt

from analysis.capture.workspace import Calibration
from tests.ui.conftest import no_exceptions, open_page, texts
from tests.ui.test_compress_pages import _by_label, _evaluate_small, _export

pytestmark = pytest.mark.slow


def emphasis_in(markdown: str) -> bool:
    """True when CommonMark would italicise part of ``markdown`` (e.g. ``‖_F … H_(`` pairs); bold is intended."""
    html = MarkdownIt("commonmark").render(markdown)
    return "<em>" in html


def test_emphasis_check_catches_half_italic_formulas():
    assert emphasis_in("‖H_b W + c − H_(b+1)‖_F / ‖H_(b+1) − mean‖_F")
    assert not emphasis_in("`‖H_b W + c − H_(b+1)‖_F / ‖H_(b+1) − mean‖_F`")
    from components.replaceme import WHERE

    assert not emphasis_in(WHERE)


def test_replaceme_method_choose_evaluate_beside_removal_export(app, tmp_path):
    app.session_state["calibration"] = Calibration(n_windows=8, window_len=128)
    at = open_page(app, "pages/replace.py")
    at.radio(key="replace-method").set_value("replaceme")
    at.run()
    no_exceptions(at)
    assert len(at.get("latex")) == 1 and "arg" in at.get("latex")[0].value
    for caption in at.caption:
        assert not emphasis_in(caption.value), caption.value
    at.number_input(key="rm-n").set_value(2)
    at.run()
    assert at.selectbox(key="rm-by").value == "angular"  # the ReplaceMe authors' rule is the default
    best = texts(at).split("Best run of 2 by this rule: `[")[1].split(",")[0]
    assert "ReplaceMe authors' rule: last-token angular distance" in texts(at)
    _by_label(at.button, "Use this run").click()
    at.run()
    start = at.number_input(key="rm-start").value
    assert start == int(best) and start >= 1
    assert len(at.get("plotly_chart")) == 1
    _evaluate_small(at)
    assert not at.error, [e.value for e in at.error]
    # AppTest keeps no key on a plain st.dataframe (only on selectable ones): the table is found by its columns
    beside = next(d.value for d in at.dataframe if "model" in d.value.columns and "perplexity" in d.value.columns)
    assert list(beside["model"]) == ["original", f"remove [{start}, {start + 2})", f"ReplaceMe [{start}, {start + 2})"]
    ppl = list(beside["perplexity"])
    assert ppl[0] < ppl[1] and ppl[0] < ppl[2]
    assert "Map folded into `model.layers." in texts(at)
    out = tmp_path / "rm"
    _export(at, out)
    assert any("reloaded with plain" in str(s.value) for s in at.success), texts(at)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 28 and not any(k.startswith("layerscope") for k in config)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["action"]["replaceme"]["start"] == start
    assert recipe["action"]["replaceme"]["chosen_by"]["label"] == "ReplaceMe authors' rule: last-token angular distance"
    assert recipe["compression"]["replaceme"]["fold_into"] == f"model.layers.{start - 1}.mlp.down_proj"
    # leave for the prune page and come back: the method, the run and the result are still there
    open_page(at, "pages/prune.py")
    at.run()  # a second run without the replace page: Streamlit has dropped its widgets' state by now
    open_page(at, "pages/replace.py")
    no_exceptions(at)
    assert at.radio(key="replace-method").value == "replaceme"
    assert at.number_input(key="rm-n").value == 2 and at.number_input(key="rm-start").value == start
    assert f"Result for the current run: blocks {start}, {start + 1}" in texts(at)
    assert any("perplexity" in d.value.columns and "model" in d.value.columns for d in at.dataframe)
