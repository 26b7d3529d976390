"""AppTest of the healing page on the bundled model: refuse the evaluation text, heal minus 12,13 as a job (waited
for inline), the healed variant in the session's variants with its gap closed; the panel of a running job."""

import pytest

from tests.ui.conftest import new_app, no_exceptions, open_page, texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cut_variant(lm, asyoulik):
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.changes.variant import Variant
    from analysis.evaluation.perplexity import EvalSettings, evaluate

    cut = remove_blocks(lm.model, [12, 13])
    settings = EvalSettings(n_tokens=256, context=128, stride=128, measure_speed=False, max_new_tokens=4)
    table = evaluate(lm.model, lm.tokenizer, asyoulik, settings, candidate=cut, original_key=lm.fingerprint)
    return Variant(
        name="minus 12,13",
        model=cut,
        action={"remove_blocks": [12, 13]},
        base_fingerprint=lm.fingerprint,
        evaluation=table,
        recipe={},
    )


def heal_app(variant):
    at = new_app()
    at.session_state["variants"] = [variant]
    return open_page(at, "pages/heal.py")


def small_settings(at):
    at.number_input(key="heal-steps").set_value(2)
    at.number_input(key="heal-batch").set_value(1)
    at.number_input(key="heal-window").set_value(32)
    at.run()


def test_heal_page_refuses_the_evaluation_text_and_heals_minus_12_13(lm, cut_variant):
    at = heal_app(cut_variant)
    no_exceptions(at)
    assert "Perplexity on **asyoulik**" in texts(at)
    at.selectbox(key="heal-text-name").set_value("asyoulik")
    at.run()
    assert any("the healing text is the evaluation text" in str(e.value) for e in at.error)
    assert [b for b in at.button if b.label == "Start healing"][0].disabled
    at.selectbox(key="heal-text-name").set_value("lcet10")
    small_settings(at)
    no_exceptions(at)
    assert "2 steps × 1 windows = 64 tokens" in texts(at)
    [b for b in at.button if b.label == "Start healing"][0].click()
    at.run()
    no_exceptions(at)
    names = [v.name for v in at.session_state["variants"]]
    assert "minus 12,13 · healed" in names
    healed = next(v for v in at.session_state["variants"] if v.name == "minus 12,13 · healed")
    assert healed.action["remove_blocks"] == [12, 13] and healed.action["heal"]["steps"] == 2
    assert healed.evaluation.settings == cut_variant.evaluation.settings
    assert len(healed.recipe["healing"]["curve"]) == 2
    assert [m for m in at.metric if m.label == "Gap closed"]
    assert "Export the adapter" in [b.label for b in at.button]
    # the cut variant is untouched and the variants table has the gap closed
    from components.variants import variants_frame

    frame = variants_frame(at.session_state["variants"])
    row = frame[frame.variant == "minus 12,13 · healed"].iloc[0]
    assert row["gap closed"] == pytest.approx(healed.recipe["healing"]["gap"]["gap_closed"])
    assert frame[frame.variant == "minus 12,13"]["gap closed"].isna().all()


def test_heal_page_without_a_variant_says_what_to_do(lm):
    at = open_page(new_app(), "pages/heal.py")
    no_exceptions(at)
    assert any("No variant to heal yet" in str(i.value) for i in at.info)


def test_a_running_heal_job_shows_its_panel_and_live_curve(lm, cut_variant, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_JOB_WAIT", "0")
    at = heal_app(cut_variant)
    small_settings(at)
    at.number_input(key="heal-steps").set_value(50)
    at.run()
    [b for b in at.button if b.label == "Start healing"][0].click()
    at.run()
    no_exceptions(at)
    assert "Cancel" in [b.label for b in at.button]
    body = texts(at)
    assert "you may leave this page" in body or "Preparing" in body or "queued" in body
    from analysis import jobs as core

    key = at.session_state["heal-job"]
    core.cancel(key)
    job = core.wait(key, timeout=600)
    assert job.state == core.CANCELLED
    at.run()
    no_exceptions(at)
    assert "Nothing was kept" in texts(at)
    assert [v.name for v in at.session_state["variants"]] == ["minus 12,13"]
