"""In a real browser: long computations run as background jobs. A zigzag started and then the tab reloaded (a new
Streamlit session) is found again and finishes; leaving a change page during Apply keeps its selection and its
result (prune, replace, compress); the prune page marks a result stale when the selection changes; the export
folder field keeps its value across navigation."""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def fill_number(ui, label: str, value: str) -> None:
    field = ui.page.get_by_label(label, exact=True).first
    field.fill(value)
    field.press("Tab")


def small_evaluation(ui) -> None:
    for label, value in (("Tokens", "512"), ("Context", "256"), ("Stride", "256")):
        fill_number(ui, label, value)
    box = ui.page.get_by_role("checkbox", name="Measure speed", exact=True).first
    if box.is_checked():
        ui.page.get_by_text("Measure speed", exact=True).first.click()


def tags(ui, label: str) -> list[str]:
    box = ui.page.locator('[data-testid="stMultiSelect"]').filter(has_text=label).first
    box.wait_for()
    return [t.strip() for t in box.locator('[data-testid="stMultiSelectTagsContainer"] [data-tag]').all_inner_texts()]


def press_and_leave(ui, label: str, job_label: str) -> None:
    """Press a button that starts a job, see its panel (or its end), and leave for a light page at once."""
    ui.page.get_by_role("button", name=label).first.click()
    ui.page.get_by_text(job_label).first.wait_for(timeout=120_000)
    ui.nav("Model and text")
    assert "LlamaForCausalLM" in ui.page.locator('[data-testid="stSidebar"]').inner_text()


def test_a_zigzag_survives_a_reload_of_the_tab(ui):
    ui.wait_idle()
    ui.nav("Zigzag persistence")
    fill_number(ui, "Windows (points)", "150")
    ui.page.get_by_role("button", name="Compute zigzag").first.click()
    ui.page.get_by_text("Zigzag of 150 windows (k = 4, m = 3)").first.wait_for(timeout=120_000)
    body = ui.text()
    running = "runs in the background" in body
    ui.shot("jobs-01-zigzag-running")
    assert "session=" in ui.page.url
    ui.page.reload()  # a new Streamlit session: the job goes on in the server and the tab finds it again
    ui.page.get_by_text("LlamaForCausalLM").first.wait_for(timeout=600_000)
    ui.page.get_by_text("150 points × 31 states").first.wait_for(timeout=600_000)
    ui.wait_idle()
    assert "Traceback" not in ui.text()
    assert ui.page.get_by_label("Windows (points)", exact=True).first.input_value() == "150"
    ui.shot("jobs-02-zigzag-after-reload")
    assert running, "the zigzag had already finished before the reload: nothing was tested about a running job"


def test_leaving_the_prune_page_during_apply_keeps_selection_and_result(ui, tmp_path_factory):
    ui.nav("Prune and evaluate")
    ui.multiselect("Blocks to remove", ["12", "13"])
    small_evaluation(ui)
    press_and_leave(ui, "Apply and evaluate", "Apply and evaluate minus 12,13")
    ui.nav("Prune and evaluate")
    assert tags(ui, "Blocks to remove") == ["12", "13"]
    ui.page.get_by_text("Original against minus 12,13").first.wait_for(timeout=600_000)
    ui.wait_idle()
    assert "Result for the current selection: blocks 12, 13" in ui.text()
    out = tmp_path_factory.mktemp("e2e-jobs") / "minus-12-13"
    ui.fill("Export folder", str(out))
    ui.button("Export checkpoint")
    ui.page.get_by_text("reloaded with plain").first.wait_for()
    ui.nav("Model and text")
    ui.nav("Prune and evaluate")
    ui.page.get_by_text("Original against minus 12,13").first.wait_for()
    assert ui.page.get_by_role("textbox", name="Export folder", exact=True).first.input_value() == str(out)
    ui.multiselect("Blocks to remove", ["14"])  # the selection changes: the shown result is now stale
    ui.page.get_by_text("Stale result").first.wait_for()
    assert "belong to blocks 12, 13" in ui.text() and "(12, 13, 14)" in ui.text()
    ui.shot("jobs-03-prune-stale")


def test_leaving_the_replace_page_during_apply_keeps_selection_and_result(ui):
    ui.nav("Replace blocks (linear)")
    ui.page.get_by_text("Least-squares fit residual").first.wait_for()
    ui.multiselect("Blocks to replace by linear maps", ["11"])
    small_evaluation(ui)
    press_and_leave(ui, "Apply and evaluate", "Apply and evaluate linear 11")
    ui.nav("Replace blocks (linear)")
    assert tags(ui, "Blocks to replace by linear maps") == ["11"]
    ui.page.get_by_text("Original against linear 11").first.wait_for(timeout=600_000)
    ui.wait_idle()
    assert "Fit residual of the replaced blocks: block 11" in ui.text()
    ui.shot("jobs-04-replace-after-navigation")


def test_leaving_the_compress_page_during_apply_keeps_selection_and_result(ui):
    ui.nav("Compress (low rank)")
    ui.page.get_by_text("Singular values of model.layers.0.mlp.gate_proj").first.wait_for()
    ui.page.get_by_text("chosen blocks", exact=True).first.click()
    ui.wait_idle()
    ui.multiselect("Blocks whose matrices to truncate", ["5"])
    small_evaluation(ui)
    press_and_leave(ui, "Apply and evaluate", "Apply and evaluate SVD-LLM 20% mlp in 0,5")
    ui.nav("Compress (low rank)")
    assert tags(ui, "Blocks whose matrices to truncate") == ["0", "5"]
    ui.page.get_by_text("Original against SVD-LLM 20% mlp in 0,5").first.wait_for(timeout=600_000)
    ui.wait_idle()
    ui.shot("jobs-05-compress-after-navigation")
    ui.nav("Variants")
    body = ui.text()
    assert "minus 12,13" in body and "linear 11" in body and "SVD-LLM 20% mlp in 0,5" in body


def test_leaving_the_replace_page_during_replaceme_keeps_the_run_and_both_results(ui):
    """ReplaceMe and the plain removal of the same run are two queued jobs; the method, the run and both results are
    there after leaving the page while they run."""
    ui.nav("Replace blocks (linear)")
    ui.page.get_by_text("a run removed, one map folded into the block before it").first.click()
    ui.wait_idle()
    ui.page.get_by_text("Best run of 2 by this rule").first.wait_for()
    start = ui.page.get_by_label("Start block l", exact=False).first.input_value()
    small_evaluation(ui)
    press_and_leave(ui, "Apply and evaluate", "Apply and evaluate ReplaceMe")
    ui.nav("Replace blocks (linear)")
    ui.page.get_by_text("Beside plain removal of the same run").first.wait_for(timeout=600_000)
    ui.wait_idle()
    body = ui.text()
    run = f"{start}, {int(start) + 1}"
    assert f"Result for the current run: blocks {run}" in body and "with ReplaceMe" in body, body[:2000]
    assert ui.page.get_by_label("Start block l", exact=False).first.input_value() == start
    assert "Traceback" not in body
    ui.shot("jobs-06-replaceme-after-navigation")
