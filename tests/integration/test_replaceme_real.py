"""ReplaceMe on the bundled SmolLM2-135M (calibration: alice, 32 windows of 128 tokens): the run chosen by the
authors' rule and by LayerScope's all-token cosine, ReplaceMe against plain removal of the same run on held-out
text, and the plain export."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.changes import replaceme as rm
from analysis.changes.export import export_checkpoint, verify_export
from analysis.changes.low_rank import record_of
from analysis.changes.variant import apply_actions
from analysis.evaluation.perplexity import EvalSettings, evaluate
from analysis.workflow.recipe import variant_recipe

pytestmark = pytest.mark.slow


def test_the_authors_rule_picks_3_4_at_n_1_and_ours_14_15(ws):
    """mts-ai/ReplaceMe's rule (last-token angular distance, l ≥ 1) against LayerScope's all-token cosine."""
    from analysis.search import replaceme_rows

    start, score = replaceme_rows.choose_run(ws, 1)  # the default: the authors' rule
    assert (start, round(score, 4)) == (3, 0.0711)  # measured d(3, 1) = 0.0711
    assert replaceme_rows.choose_run(ws, 1, by="cosine")[0] == 14  # measured 0.0250
    # the authors' start is argmin over l ≥ 1 of Gromov et al.'s d(l, n) (here l = 0 would not win anyway)
    from analysis.metrics.families.baselines import baseline_results

    D = baseline_results(ws)["angular"]
    assert min(range(1, 30), key=lambda l: D[l, 0]) == 3
    rule = replaceme_rows.replaceme_rule(ws, 1)["replaceme"]
    assert rule["start"] == 3 and rule["chosen_by"]["label"] == "ReplaceMe authors' rule: last-token angular distance"
    # at n = 2 both rules pick [14, 16)
    assert replaceme_rows.choose_run(ws, 2)[0] == replaceme_rows.choose_run(ws, 2, by="cosine")[0] == 14


def test_replaceme_beats_removal_of_the_same_run_and_exports_plain(lm, ws, asyoulik, tmp_path):
    D = rm.run_distances(ws)
    start, score = rm.best_start(D, 2)
    assert start == 14 and 0 < score < 0.1  # measured: [14, 16), cosine distance 0.0446
    action = {"replaceme": {"start": start, "n": 2}}
    model = apply_actions(lm.model, action, ws)
    rec = record_of(model)["replaceme"]
    assert rec["fold_into"] == f"model.layers.{start - 1}.mlp.down_proj" and rec["tokens"] == 4096
    assert rec["fit_residual"] < rec["removal_residual"]  # measured 0.527 against 0.883
    assert rec["removal_cosine_distance"] == pytest.approx(score, rel=1e-3)
    settings = EvalSettings(
        text="asyoulik", n_tokens=1024, context=256, stride=256, measure_speed=False, max_new_tokens=1
    )
    removed = apply_actions(lm.model, {"remove_blocks": [start, start + 1]}, ws)
    t_rm = evaluate(
        lm.model,
        lm.tokenizer,
        asyoulik,
        settings,
        candidate=model,
        candidate_name="compressed",
        original_key=lm.fingerprint,
    )
    t_cut = evaluate(
        lm.model,
        lm.tokenizer,
        asyoulik,
        settings,
        candidate=removed,
        candidate_name="pruned",
        original_key=lm.fingerprint,
    )
    assert t_rm.original.perplexity < t_rm.candidate.perplexity < t_cut.candidate.perplexity
    assert t_rm.candidate.kl_to_original < t_cut.candidate.kl_to_original
    assert t_rm.candidate.parameters == t_cut.candidate.parameters  # the map costs no parameter
    # export: plain Llama with 28 blocks, plain AutoModelForCausalLM reload, same logits
    recipe = variant_recipe(ws, action, evaluation=t_rm.to_dict(), model=model)
    out = export_checkpoint(model, lm.tokenizer, tmp_path / "rm", recipe)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 28 and not any(k.startswith("layerscope") for k in config)
    check = verify_export(out, model, lm.tokenizer)
    assert check["ok"] and check["blocks"] == 28 and check["max_abs_logit_diff"] < 1e-4, check
    assert (
        json.loads((out / "recipe.json").read_text())["compression"]["replaceme"]["calibration"]["sha256"]
        == ws.text.sha256
    )
    # the original is untouched
    assert len(lm.model.model.layers) == 30
    assert not torch.equal(
        lm.model.model.layers[start - 1].mlp.down_proj.weight, model.model.layers[start - 1].mlp.down_proj.weight
    )
