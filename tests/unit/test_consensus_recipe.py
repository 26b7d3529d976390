"""Consensus of suggestions and recipe validation (no model needed)."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.metrics import consensus
from analysis.workflow import recipe


def test_votes_consensus_and_overlap():
    suggested = {"a": [1, 2, 3], "b": [2, 3, 4], "c": [3, 9]}
    ranks = pd.DataFrame({"a": np.linspace(0, 1, 10), "b": np.linspace(0, 1, 10), "c": np.linspace(1, 0, 10)})
    assert list(consensus.votes(suggested, 10)) == [0, 1, 2, 3, 1, 0, 0, 0, 0, 1]
    assert consensus.consensus(suggested, ranks, 2) == [2, 3]
    top3 = consensus.consensus(suggested, ranks, 3)
    assert 2 in top3 and 3 in top3 and len(top3) == 3
    ov = consensus.pairwise_overlap(suggested)
    assert ov.loc["a", "b"] == pytest.approx(2 / 4) and ov.loc["a", "a"] == 1.0 and ov.loc["a", "c"] == 0.25
    assert np.allclose(ov.to_numpy(), ov.to_numpy().T)


def _minimal(**extra):
    return {"model": {"source": "default"}, "action": {"remove_blocks": [3]}, **extra}


def test_valid_recipe_passes():
    recipe.validate(_minimal(metrics={"linearity": {}}, evaluation={"settings": {"text": "asyoulik"}}))


@pytest.mark.parametrize(
    "bad,message",
    [
        (_minimal(colour="blue"), "unknown recipe key(s): colour"),
        ({"action": {}}, "names no model"),
        ({"model": {"path": "x"}}, "unknown key(s) in 'model': path"),
        (_minimal(metrics={"astrology": {}}), "unknown metric group(s) in 'metrics': astrology"),
        ({"model": {"source": "default"}, "action": {"delete_everything": True}}, "unknown action key(s)"),
        (_minimal(evaluation={"settings": {"tokenz": 5}}), "unknown evaluation setting(s): tokenz"),
        (_minimal(calibration={"text": "alice", "windowz": 3}), "unknown key(s) in 'calibration': windowz"),
    ],
)
def test_recipe_errors_are_clear(bad, message):
    with pytest.raises(recipe.RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipe.validate(bad)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(recipe.RecipeError, match="no such recipe file"):
        recipe.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(recipe.RecipeError, match="not valid JSON"):
        recipe.load(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text(json.dumps(_minimal()))
    assert recipe.load(tmp_path / "ok.json")["action"] == {"remove_blocks": [3]}


def test_uploaded_text_needs_its_file():
    r = _minimal(calibration={"text": {"name": "notes.txt", "source": "upload", "sha256": "0" * 64}})
    with pytest.raises(recipe.RecipeError, match="give its file"):
        recipe.text_of(r)


def test_the_demo_recipe_is_valid():
    from pathlib import Path

    recipe.load(Path(__file__).resolve().parents[2] / "analysis" / "recipes" / "demo.json")


def test_candidate_names():
    assert recipe.candidate_name({"remove_blocks": [1]}) == "pruned"
    assert recipe.candidate_name({"remove_blocks": [], "low_rank": {"ratio": 0.2}}) == "compressed"
    assert recipe.candidate_name({"remove_blocks": [1], "low_rank": {"ratio": 0.2}}) == "changed"
