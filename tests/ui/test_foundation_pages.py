"""AppTest for the model, linearity and prune pages, including bad input in the page."""

import json

import pytest

from analysis.capture.workspace import Calibration
from tests.ui.conftest import no_exceptions, open_page, sidebar_app, texts

pytestmark = pytest.mark.slow


def test_model_page_shows_the_card(app):
    no_exceptions(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Blocks"] == "30" and metrics["Width"] == "576" and metrics["Parameters"] == "134.5 M"
    assert metrics["Windows × tokens"] == "32 × 128"


def test_linearity_page_draws_every_view(app):
    open_page(app, "pages/linearity.py")
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 4
    body = texts(app)
    assert "Linearity" in body and "Block influence" in body and "Angular distance" in body


def test_linearity_heatmap_refused_with_too_few_tokens(app):
    app.session_state["calibration"] = Calibration(n_windows=4, window_len=128)
    open_page(app, "pages/linearity.py")
    no_exceptions(app)
    assert any("not coloured" in str(w.value) and "1152" in str(w.value) for w in app.warning)
    assert len(app.get("plotly_chart")) == 2  # block influence and angular distance still shown


def _sidebar_with_model_page():
    """The sidebar and the model page in one script (see sidebar_app)."""
    import runpy

    from components import sidebar

    sidebar.render()
    runpy.run_path("pages/model.py")


def test_bad_model_path_keeps_the_previous_model(lm):
    at = sidebar_app(_sidebar_with_model_page)
    at.text_input(key="model-source").set_value("/nonexistent/model")
    [b for b in at.button if b.label == "Load model"][0].click()
    at.run()
    no_exceptions(at)
    assert any("no such file or folder" in str(e.value) for e in at.error)
    assert any("Still using the previous model" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Blocks"] == "30"


def test_model_too_big_for_memory_is_refused_and_the_previous_model_kept(lm, tmp_path, monkeypatch):
    """Loading it anyway would end with the server killed; the sidebar says why and what to do instead."""
    from analysis.model import loading
    from tests.families import tiny_model_dir

    folder = tiny_model_dir("llama", tmp_path / "tiny")
    at = sidebar_app(_sidebar_with_model_page)
    monkeypatch.setattr(loading, "available_bytes", lambda device: 1000)  # the bundled model is already loaded
    at.text_input(key="model-source").set_value(str(folder))
    [b for b in at.button if b.label == "Load model"][0].click()
    at.run()
    no_exceptions(at)
    assert any("free on cpu" in str(e.value) and "bfloat16" in str(e.value) for e in at.error), at.error
    assert any("Still using the previous model" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Blocks"] == "30"


def test_empty_pasted_text_is_refused_and_the_old_text_kept(lm):
    at = sidebar_app(_sidebar_with_model_page)
    at.radio(key="text-kind").set_value("Paste")
    at.run()
    [b for b in at.button if b.label == "Use this text"][0].click()
    at.run()
    no_exceptions(at)
    assert any("empty" in str(e.value) for e in at.error)
    assert "**alice**" in texts(at)


def test_text_too_short_for_the_windows_is_refused(lm):
    at = sidebar_app(_sidebar_with_model_page)
    at.radio(key="text-kind").set_value("Paste")
    at.run()
    at.text_area[0].set_value("Only a few words of text.")
    [b for b in at.button if b.label == "Use this text"][0].click()
    at.run()
    assert any("fewer than one window of 128" in str(e.value) for e in at.error), [e.value for e in at.error]
    assert "**alice**" in texts(at)


def test_prune_page_apply_evaluate_and_export(app, tmp_path):
    open_page(app, "pages/prune.py")
    app.multiselect(key="prune-blocks").set_value([12, 13])
    app.run()
    form = {n.label: n for n in app.number_input}
    form["Tokens"].set_value(1024)
    form["Context"].set_value(256)
    form["Stride"].set_value(128)
    app.checkbox[-1].uncheck()  # Measure speed off: keep the test quick
    [b for b in app.button if b.label == "Apply and evaluate"][0].click()
    app.run()
    no_exceptions(app)
    table = app.dataframe[-1].value
    assert list(table["model"]) == ["original", "pruned"]
    assert float(table["Perplexity"][1]) > float(table["Perplexity"][0])
    out = tmp_path / "exp"
    [t for t in app.text_input if t.label == "Export folder"][0].set_value(str(out))
    [b for b in app.button if b.label == "Export checkpoint"][0].click()
    app.run()
    no_exceptions(app)
    assert any("reloaded with plain" in str(s.value) for s in app.success)
    assert json.loads((out / "recipe.json").read_text())["removed_blocks"] == [12, 13]
    # a second export into the same, now non-empty folder asks for confirmation and keeps the files
    [b for b in app.button if b.label == "Export checkpoint"][0].click()
    app.run()
    assert any("not empty" in str(w.value) and "recipe.json" in str(w.value) for w in app.warning)
    assert (out / "model.safetensors").exists()
    [b for b in app.button if b.label == "Replace it"][0].click()  # LayerScope's own export: replaced when asked
    app.run()
    no_exceptions(app)
    assert any("reloaded with plain" in str(s.value) for s in app.success) and (out / "model.safetensors").exists()
    # a folder LayerScope did not write is refused, its content listed, nothing in it changed
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    [t for t in app.text_input if t.label == "Export folder"][0].set_value(str(notes))
    [b for b in app.button if b.label == "Export checkpoint"][0].click()
    app.run()
    no_exceptions(app)
    assert any("not written by LayerScope" in str(e.value) and "todo.txt" in str(e.value) for e in app.error)
    assert not [b for b in app.button if b.label == "Replace it"]
    assert sorted(p.name for p in notes.iterdir()) == ["sub", "todo.txt"]


def test_prune_page_refuses_removing_every_block(app):
    open_page(app, "pages/prune.py")
    app.multiselect(key="prune-blocks").set_value(list(range(30)))
    app.run()
    [b for b in app.button if b.label == "Apply and evaluate"][0].click()
    app.run()
    no_exceptions(app)
    assert any("cannot remove all 30 blocks" in str(e.value) for e in app.error)


def test_suggestion_is_sent_to_the_prune_page(app):
    open_page(app, "pages/linearity.py")
    send = [b for b in app.button if b.key == "send-lin-block_influence"][0]
    send.click()
    app.run()
    no_exceptions(app)
    chosen = app.multiselect(key="prune-blocks").value
    assert len(chosen) == 3 and "Block influence" in texts(app)
