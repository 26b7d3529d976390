"""Issue 6 on the real model: recipe round trip (CLI run → dashboard), report, overview, results-only folders."""

import json
from pathlib import Path

import pytest

from analysis.model.loading import ModelSpec, ResultsOnlyModel, load_model
from tests.cli import cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMALL_EVAL = {
    "text": "asyoulik",
    "n_tokens": 1024,
    "context": 256,
    "stride": 128,
    "measure_speed": False,
    "max_new_tokens": 12,
}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, ws):
    ws.capture()  # shared capture: the run command finds it in the session cache
    d = tmp_path_factory.mktemp("recipe")
    recipe = {
        "layerscope": 1,
        "name": "minus 12,13",
        "model": {"source": "default"},
        "calibration": {"text": "alice", "windows": 32, "window_len": 128},
        "metrics": {"linearity": {}},
        "action": {"remove_blocks": [12, 13]},
        "evaluation": {"settings": SMALL_EVAL},
        "export": {"form": "dense"},
    }
    (d / "recipe.json").write_text(json.dumps(recipe))
    cli("run", d / "recipe.json", "--out", d / "out")
    return d / "out"


def test_run_reproduces_a_recipe_headless(recipe_run):
    done = json.loads((recipe_run / "recipe.json").read_text())
    assert done["removed_blocks"] == [12, 13] and done["name"] == "minus 12,13"
    ev = done["evaluation"]
    assert ev["pruned"]["perplexity"] > ev["original"]["perplexity"] > 1
    assert done["export"]["reload_check"]["ok"] and (recipe_run / "checkpoint" / "model.safetensors").is_file()
    assert (recipe_run / "layers.csv").is_file() and (recipe_run / "linearity.csv").is_file()
    html = (recipe_run / "report.html").read_text()
    assert "Linearity between layers" in html and "Change: minus 12,13" in html and "plotly" in html.lower()
    assert "<script src=" not in html  # plotly.js is inline, not loaded from a CDN: the report opens offline


def test_the_dashboard_restores_the_recipe_with_the_same_numbers(recipe_run):
    from streamlit.testing.v1 import AppTest

    done = json.loads((recipe_run / "recipe.json").read_text())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.run()
    at.switch_page("pages/recipe.py")
    at.session_state["pending-recipe"] = done
    at.run()
    [b for b in at.button if b.label == "Apply and evaluate the recipe's change"][0].click()
    at.run()
    assert not at.exception, [str(e.value)[:2000] for e in at.exception]
    variant = at.session_state["variants"][-1]
    assert variant.evaluation.candidate.perplexity == pytest.approx(
        done["evaluation"]["pruned"]["perplexity"], rel=1e-6
    )
    assert variant.evaluation.original.perplexity == pytest.approx(
        done["evaluation"]["original"]["perplexity"], rel=1e-6
    )


def test_report_command_from_the_recipe(recipe_run, tmp_path):
    cli("report", "--recipe", recipe_run / "recipe.json", "--out", tmp_path / "r.html")
    assert "Where the metrics agree" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    "recipe,message",
    [
        ({"model": {"source": "default"}, "colour": "blue"}, "unknown recipe key(s): colour"),
        ({"model": {"source": "/nonexistent/model"}}, "no such file or folder"),
        ({"action": {"remove_blocks": [1]}}, "names no model"),
    ],
)
def test_bad_recipes_get_a_clear_message(tmp_path, recipe, message):
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    proc = cli("run", tmp_path / "r.json", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_overview_command_writes_consensus(tmp_path, ws):
    from analysis.metrics.families.linearity import linearity_results

    linearity_results(ws)
    cli("overview", "--k", "3", "--out", tmp_path)
    s = json.loads((tmp_path / "suggestions.json").read_text())
    assert len(s["consensus"]) == 3 and set(s["metrics"]) >= {"linearity", "block_influence"}
    assert sum(s["votes"]) >= 3 * len(s["metrics"]) - 3


def test_results_folder_opens_without_the_weights(tmp_path, ws):
    cli("metrics", "--out", tmp_path)
    lm = load_model(ModelSpec(source=str(tmp_path)))
    assert isinstance(lm, ResultsOnlyModel) and lm.fingerprint == ws.lm.fingerprint and lm.n_blocks == 30
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.session_state["model_spec"] = ModelSpec(source=str(tmp_path))
    at.run()
    at.switch_page("pages/linearity.py")
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 4
    # something not in the cache cannot be computed without the weights: a message, not a traceback
    at.switch_page("pages/prune.py")
    at.run()
    at.multiselect(key="prune-blocks").set_value([3])
    at.run()
    [b for b in at.button if b.label == "Apply and evaluate"][0].click()
    at.run()
    assert not at.exception
    assert any("results computed elsewhere" in str(e.value) for e in at.error)
