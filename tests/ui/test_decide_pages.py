"""AppTest for the overview, variants, recipe/report pages and presentation mode."""

import json

import pytest

from tests.ui.conftest import ROOT, no_exceptions, open_page, texts

pytestmark = pytest.mark.slow
SMALL = {"Tokens": 512, "Context": 256, "Stride": 128}


def _apply(app, blocks):
    open_page(app, "pages/prune.py")
    app.multiselect(key="prune-blocks").set_value(blocks)
    app.run()
    for n in app.number_input:
        if n.label in SMALL:
            n.set_value(SMALL[n.label])
    [c for c in app.checkbox if c.label == "Measure speed"][0].uncheck()
    [b for b in app.button if b.label == "Apply and evaluate"][0].click()
    app.run()
    no_exceptions(app)


def test_overview_sends_the_consensus_to_prune(app, ws):
    from analysis.metrics.families.baselines import baseline_results
    from analysis.metrics.families.linearity import linearity_results

    linearity_results(ws), baseline_results(ws)
    open_page(app, "pages/overview.py")
    no_exceptions(app)
    assert len(app.get("plotly_chart")) >= 3  # ranks heatmap, votes, overlap
    tables = [d.value for d in app.dataframe if "suggested blocks" in d.value.columns]
    assert tables and "CONSENSUS" in tables[0]["metric"].tolist()
    [b for b in app.button if b.label == "Send to prune"][0].click()
    app.run()
    no_exceptions(app)
    assert len(app.multiselect(key="prune-blocks").value) == 3 and "consensus" in texts(app)


def test_two_variants_compared_and_reported(app, tmp_path):
    _apply(app, [12, 13])
    _apply(app, [20])
    open_page(app, "pages/variants.py")
    no_exceptions(app)
    frame = app.dataframe[0].value
    assert list(frame["variant"]) == ["original", "minus 12,13", "minus 20"]
    assert "weights MiB" in frame.columns and "weights MB" not in frame.columns
    assert len(app.get("plotly_chart")) == 1
    open_page(app, "pages/recipe.py")
    no_exceptions(app)
    target = tmp_path / "chosen" / "my-report.html"  # the user chooses where the report goes
    app.text_input(key="report-path").set_value(str(target))
    app.button(key="report-write").click()
    app.run()
    no_exceptions(app)
    path = app.session_state["last-report"]
    assert path == str(target.resolve())
    html = open(path).read()
    assert "Change: minus 12,13" in html and "Change: minus 20" in html
    assert 'class="summary"' in html and "It saves" in html and "perplexity on asyoulik goes from" in html
    assert "Variants: quality against cost" in html and "Generations side by side" in html
    assert html.count("* plotly.js v") == 1  # plotly.js embedded once
    # a second write to the same file is refused until the user ticks "Replace it if it exists"
    first = target.read_text()
    app.button(key="report-write").click()
    app.run()
    no_exceptions(app)
    assert any("Not written" in e.value and "exists" in e.value for e in app.error)
    assert target.read_text() == first
    app.checkbox(key="report-overwrite").check()
    app.button(key="report-write").click()
    app.run()
    no_exceptions(app)
    assert "Change: minus 20" in target.read_text()
    assert app.checkbox(key="report-overwrite").value is False  # the next write asks again
    # a file LayerScope did not write (it does not begin with LayerScope's marker) is never replaced, even ticked
    target.write_text("<html>keep me: a LayerScope report I edited by hand</html>")
    app.checkbox(key="report-overwrite").check()
    app.button(key="report-write").click()
    app.run()
    no_exceptions(app)
    assert any("not written by LayerScope" in e.value for e in app.error)
    assert target.read_text() == "<html>keep me: a LayerScope report I edited by hand</html>"


def test_presentation_mode_reads_a_precomputed_recipe(tmp_path, monkeypatch, lm):
    from streamlit.testing.v1 import AppTest

    recipe = {
        "layerscope": 1,
        "name": "demo",
        "model": {"source": "default"},
        "calibration": {"text": "alice", "windows": 32, "window_len": 128},
        "action": {"remove_blocks": [13, 14]},
        "evaluation": {
            "settings": {"prompt": "Alice"},
            "original": {"perplexity": 20.0, "parameters": 100, "weight_bytes": 400, "generation": "a"},
            "pruned": {
                "perplexity": 25.0,
                "parameters": 90,
                "weight_bytes": 360,
                "recovery": 0.8,
                "top1_agreement": 0.7,
                "generation": "b",
            },
        },
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    monkeypatch.setenv("LAYERSCOPE_PRESENT", "1")
    monkeypatch.setenv("LAYERSCOPE_RECIPE", str(tmp_path / "recipe.json"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.run()
    no_exceptions(at)
    assert at.title[0].value == "What the model is" and not at.sidebar.children
    seen = []
    for _ in range(3):
        [b for b in at.button if "Next" in b.label][0].click()
        at.run()
        no_exceptions(at)
        seen.append(at.title[0].value)
    assert seen == ["Where it is redundant", "What we removed", "What it costs and saves"]
    assert {m.label for m in at.metric} >= {"Parameters", "Perplexity", "Recovery"}
    assert not at.text_input and not at.multiselect  # no editing controls
