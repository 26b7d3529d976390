"""In a real browser (issue 12 and 13): a folder that is not a causal LM and one with a damaged checkpoint are each
refused with their message while the loaded model stays in use; an export into a folder LayerScope did not write is
refused and the folder left as it was; a LayerScope export is replaced only after confirming."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    import transformers as tf

    root = tmp_path_factory.mktemp("bad-models")
    bert = root / "tiny-bert"
    tf.BertForMaskedLM(
        tf.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(bert)
    damaged = root / "damaged-llama"
    tf.LlamaForCausalLM(
        tf.LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    ).save_pretrained(damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated, as by an interrupted copy
    return {"bert": bert, "damaged": damaged, "weights": weights}


def _load(ui, source: str) -> str:
    ui.fill("Model", source)
    ui.button("Load model")
    sidebar = ui.page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Still using the previous model").wait_for()
    return sidebar.inner_text()


def _default_model_still_shown(ui) -> None:
    """The model card still shows the bundled model (its details table is a canvas, so the blocks metric is read)
    and the sidebar still names its architecture."""
    body = ui.text()
    assert "Model card" in body and "Blocks\n\n30" in body, body[:1500]
    assert "LlamaForCausalLM" in ui.page.locator('[data-testid="stSidebar"]').inner_text()


def test_a_folder_that_is_not_a_causal_lm_is_refused_and_the_model_stays(ui, bad_models):
    ui.wait_idle()
    side = _load(ui, str(bad_models["bert"]))
    assert "'bert' model (BertForMaskedLM)" in side and "encoder (masked language model)" in side
    assert "Still using the previous model: default" in side
    _default_model_still_shown(ui)
    ui.shot("trust-01-bert-refused")


def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_model_stays(ui, bad_models):
    side = _load(ui, str(bad_models["damaged"]))
    assert "model.safetensors is damaged" in side and "truncated" in side and str(bad_models["damaged"]) in side
    assert "Still using the previous model: default" in side
    _default_model_still_shown(ui)
    ui.shot("trust-02-damaged-refused")


def test_replacing_a_folder_layerscope_did_not_write_is_refused(ui, tmp_path_factory):
    ui.nav("Prune and evaluate")
    ui.multiselect("Blocks to remove", ["12"])
    ui.number("Tokens", 512)
    ui.number("Context", 256)
    ui.number("Stride", 128)
    ui.uncheck("Measure speed")
    ui.button("Apply and evaluate")
    ui.page.get_by_text("Original against minus 12").wait_for()
    root = tmp_path_factory.mktemp("e2e-destinations")
    notes = root / "notes"
    (notes / "drafts").mkdir(parents=True)
    (notes / "todo.txt").write_text("precious")
    ui.fill("Export folder", str(notes))
    ui.button("Export checkpoint")
    ui.page.get_by_text("was not written by LayerScope").wait_for()
    body = ui.text()
    assert "never replaced" in body and "todo.txt" in body and "drafts/" in body
    assert ui.page.get_by_role("button", name="Replace it").count() == 0
    assert sorted(p.name for p in notes.iterdir()) == ["drafts", "todo.txt"]
    assert (notes / "todo.txt").read_text() == "precious"
    ui.shot("trust-03-foreign-folder-refused")
    # LayerScope's own export: asked first, replaced only when confirmed
    ours = root / "export"
    ui.fill("Export folder", str(ours))
    ui.button("Export checkpoint")
    ui.page.get_by_text("reloaded with plain").wait_for()
    first = (ours / "model.safetensors").stat().st_mtime_ns
    ui.button("Export checkpoint")
    ui.page.get_by_text("it holds a LayerScope export").wait_for()
    assert (ours / "model.safetensors").stat().st_mtime_ns == first
    ui.shot("trust-04-asks-before-replacing")
    ui.button("Replace it")
    ui.page.get_by_text("reloaded with plain").wait_for()
    assert (ours / "model.safetensors").stat().st_mtime_ns != first
    assert (ours / ".layerscope.json").is_file()
