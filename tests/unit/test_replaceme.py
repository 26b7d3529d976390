"""analysis.changes.replaceme on tiny random-weight models: known answers for the fit and the fold, exact recovery of a run
that is the identity, the plain export, the refusals, and the choice of the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    GPT2LMHeadModel,
    MixtralConfig,
    OPTConfig,
)

from analysis.changes import replaceme as rm
from analysis.changes.export import export_checkpoint, verify_export
from analysis.changes.low_rank import CompressionError, record_of
from analysis.changes.variant import Variant, apply_actions, describe_action, removed_by
from analysis.search import replaceme_rows
from analysis.workflow.recipe import validate, variant_recipe
from tests.unit.test_compression import logits, tiny, workspace


def _zero_run(model, blocks, gpt2: bool = False) -> None:
    """Make blocks exactly the identity: their attention and MLP output projections return zeros."""
    layers = model.transformer.h if gpt2 else model.model.layers
    with torch.no_grad():
        for b in blocks:
            projs = (
                [layers[b].attn.c_proj, layers[b].mlp.c_proj]
                if gpt2
                else [layers[b].self_attn.o_proj, layers[b].mlp.down_proj]
            )
            for p in projs:
                p.weight.zero_()
                if getattr(p, "bias", None) is not None:
                    p.bias.zero_()


def test_least_squares_recovers_a_known_map_from_streamed_moments():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(600, 12, generator=g, dtype=torch.float64)
    Y = torch.randn(600, 12, generator=g, dtype=torch.float64)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    L = Y + M @ A
    st = rm.RunStats(1, 1, torch.zeros(12, 12, dtype=torch.float64), torch.zeros(12, 12, dtype=torch.float64))
    for m, y, l in zip(M.split(100), Y.split(100), L.split(100)):
        R = l - y
        st.MtM += m.T @ m
        st.MtR += m.T @ R
        st.r_sq += float((R * R).sum())
    T = rm.fit_lstsq(st)
    assert torch.allclose(T, A, atol=1e-9)
    assert rm.fit_residual(st, T) < 1e-6
    # an unexplained part: the residual is its share of ‖L − Y‖, ridge shrinks T and costs residual
    noise = torch.randn(600, 12, generator=g, dtype=torch.float64)
    R = M @ A + noise
    st2 = rm.RunStats(1, 1, M.T @ M, M.T @ R, r_sq=float((R * R).sum()))
    T2 = rm.fit_lstsq(st2)
    direct = float(torch.linalg.matrix_norm(M @ T2 - R) / torch.linalg.matrix_norm(R))
    assert rm.fit_residual(st2, T2) == pytest.approx(direct, rel=1e-6)
    T3 = rm.fit_lstsq(st2, relative_ridge=1.0)
    assert torch.linalg.matrix_norm(T3) < torch.linalg.matrix_norm(T2)
    assert rm.fit_residual(st2, T3) > rm.fit_residual(st2, T2)
    # the ridge is relative: λ = relative_ridge · tr(MᵀM)/d; the authors' alpha is that absolute λ
    lam = rm.absolute_ridge(st2, 1.0)
    assert lam == pytest.approx(float(torch.trace(M.T @ M)) / 12)
    authors = torch.linalg.inv(M.T @ M + lam * torch.eye(12, dtype=torch.float64)) @ (M.T @ R)
    assert torch.allclose(T3, authors, atol=1e-9)
    # older recipes call it "ridge": read as relative_ridge; both at once is refused
    assert rm.ReplaceMeSpec.from_value({"start": 2, "n": 1, "ridge": 0.5}).relative_ridge == 0.5
    with pytest.raises(CompressionError, match="relative_ridge only"):
        rm.ReplaceMeSpec.from_value({"start": 2, "n": 1, "ridge": 0.5, "relative_ridge": 0.5})
    # the recipe schema knows both names and the rule that chose the run
    from analysis.workflow import recipe_schema

    model = {"source": "default"}
    recipe_schema.check(
        {
            "model": model,
            "action": {
                "replaceme": {
                    "start": 2,
                    "n": 1,
                    "relative_ridge": 0.5,
                    "chosen_by": {
                        "rule": "angular",
                        "label": "ReplaceMe authors' rule: last-token angular distance",
                        "score": 0.07,
                    },
                }
            },
        }
    )
    recipe_schema.check({"model": model, "action": {"replaceme": {"start": 2, "n": 1, "ridge": 0.5}}})


def test_fold_math_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(1)
    T = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(5, 9, generator=g)
    lin = nn.Linear(9, 6, bias=True)
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    before = lin(x).detach().double()
    rm.fold_map(lin, T)
    assert torch.allclose(lin.weight.double(), T.T @ W.double(), atol=1e-6)  # W' = Tᵀ W
    assert torch.allclose(lin.bias.double(), T.T @ b.double(), atol=1e-6)  # b' = Tᵀ b
    assert torch.allclose(lin(x).double(), before @ T, atol=1e-5)
    conv = Conv1D(6, 9)  # y = x W + b with W: 9×6
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    before = conv(x).detach().double()
    W = conv.weight.detach().clone()
    rm.fold_map(conv, T)
    assert torch.allclose(conv.weight.double(), W.double() @ T, atol=1e-5)
    assert torch.allclose(conv(x).double(), before @ T, atol=1e-4)


def test_identity_run_is_recovered_exactly_and_exports_plain(tmp_path):
    model = tiny(layers=5)
    _zero_run(model, [2, 3])  # blocks 2 and 3 return their input
    ws = workspace(model)
    before = logits(model)
    variant = apply_actions(model, {"replaceme": {"start": 2, "n": 2}}, ws)
    assert torch.equal(logits(model), before)  # the original is untouched
    assert len(variant.model.layers) == 3 and variant.config.num_hidden_layers == 3
    rec = record_of(variant)["replaceme"]
    assert rec["fit_residual"] < 1e-6 and rec["blocks"] == [2, 3]
    assert rec["fold_into"] == "model.layers.1.mlp.down_proj"
    assert torch.allclose(logits(variant), before, atol=1e-4)
    assert torch.allclose(
        variant.model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight, atol=1e-5
    )  # T = I
    # the export is a plain Llama with 3 blocks that AutoModelForCausalLM reloads with the same logits
    recipe = variant_recipe(ws, {"replaceme": {"start": 2, "n": 2}}, model=variant)
    validate(recipe)
    assert recipe["compression"]["replaceme"]["calibration"]["sha256"] == ws.text.sha256
    out = export_checkpoint(variant, ws.lm.tokenizer, tmp_path / "rm", recipe)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and not any(k.startswith("layerscope") for k in config)
    check = verify_export(out, variant, ws.lm.tokenizer)
    assert check["ok"] and check["blocks"] == 3 and check["max_abs_logit_diff"] < 1e-5
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(logits(reloaded), logits(variant), atol=1e-5)


def test_folded_block_computes_y_plus_m_t():
    """On a random (not linear) run: block l−1 of the result outputs exactly Y + M·T of the original."""
    model = tiny(layers=5, seed=4)
    ws = workspace(model)
    variant = apply_actions(model, {"replaceme": {"start": 2, "n": 2}}, ws)
    key = rm.fit_key(ws.lm, ws.text, 8, 32, rm.ReplaceMeSpec.from_value({"start": 2, "n": 2}))
    from analysis import cache

    arrays, data = cache.read_entry(cache.entry(rm.FIT_KIND, key))
    T = torch.from_numpy(np.array(arrays["T"]))
    assert 0 < data["fit_residual"] < data["removal_residual"]  # better than plain removal on its tokens
    x = torch.randint(1, 120, (1, 12))
    got = {}
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: got.__setitem__("M", o))
    model.model.layers[1].register_forward_hook(
        lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    variant.model.layers[1].register_forward_hook(
        lambda m, a, o: got.__setitem__("v", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        model(x)
        variant(x)
    M, h = got["M"].double(), got["h"].double()
    assert torch.allclose(got["v"].double(), h - M + M @ T, atol=1e-4)


def test_gpt2_conv1d_identity_run_recovered():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64)).eval()
    _zero_run(model, [2], gpt2=True)
    ws = workspace(model)
    variant = apply_actions(model, {"replaceme": {"start": 2, "n": 1}}, ws)
    assert len(variant.transformer.h) == 3
    assert record_of(variant)["replaceme"]["fold_into"] == "transformer.h.1.mlp.c_proj"
    assert torch.allclose(logits(variant), logits(model), atol=1e-4)


@pytest.mark.parametrize(
    "value,message",
    [
        ({"start": 0, "n": 2}, "block 0 has none before it"),
        ({"start": 2, "n": 0}, "at least one block"),
        ({"start": 3, "n": 3}, "goes past the last block"),
        ({"start": 2, "n": 1, "method": "pca"}, "unknown ReplaceMe method"),
        ({"start": 2, "n": 1, "alpha": 1}, "unknown replaceme key"),
        ({"start": 2}, "needs 'n'"),
        ({"start": 2, "n": 1.5}, "must be an integer"),
        ({"start": 2, "n": 1, "ridge": -1}, "non-negative"),
    ],
)
def test_refusals_of_bad_runs(value, message):
    ws = workspace(tiny(layers=5))
    with pytest.raises(CompressionError, match=message):
        apply_actions(ws.lm.model, {"replaceme": value}, ws)


def test_refusals_of_combinations():
    ws = workspace(tiny(layers=5))
    with pytest.raises(CompressionError, match="carries ReplaceMe's fitted map"):
        apply_actions(ws.lm.model, {"replaceme": {"start": 2, "n": 2}, "remove_blocks": [1]}, ws)
    with pytest.raises(ValueError, match="taken out twice"):
        apply_actions(ws.lm.model, {"replaceme": {"start": 2, "n": 2}, "remove_blocks": [3]}, ws)
    with pytest.raises(CompressionError, match="full-residual"):
        apply_actions(ws.lm.model, {"replaceme": {"start": 2, "n": 2}, "replace_linear": [1]}, ws)
    # composes with remove_blocks: indices refer to the original, both are removed in one step
    action = {"replaceme": {"start": 2, "n": 2}, "remove_blocks": [4]}
    assert removed_by(action) == [2, 3, 4]
    variant = apply_actions(ws.lm.model, action, ws)
    assert len(variant.model.layers) == 2
    assert "blocks [2, 4) replaced" in describe_action(action)
    assert Variant("v", variant, action, ws.lm.fingerprint).removed_blocks == [2, 3, 4]


def test_refusals_of_families_where_folding_is_not_exact():
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(
        Gemma2Config(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
    ).eval()
    with pytest.raises(CompressionError, match="post_feedforward_layernorm"):
        rm.fold_target(gemma, 2, 1)
    mixtral = AutoModelForCausalLM.from_config(
        MixtralConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=2,
            num_experts_per_tok=1,
        )
    ).eval()
    with pytest.raises(CompressionError, match="mixture of experts"):
        rm.fold_target(mixtral, 2, 1)
    # OPT with the norm after the residual (post-LN, as OPT-350m): only the numerical check can see it
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(
            vocab_size=128,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            do_layer_norm_before=False,
        )
    ).eval()
    assert rm.fold_target(opt, 2, 1)[0] == "model.decoder.layers.1.fc2"
    with pytest.raises(CompressionError, match="would not be exact"):
        rm.check_foldable(opt, 2, 1, torch.randint(1, 120, (1, 16)))
    opt_pre = AutoModelForCausalLM.from_config(
        OPTConfig(
            vocab_size=128,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            do_layer_norm_before=True,
        )
    ).eval()
    assert rm.additivity_error(opt_pre, 2, torch.randint(1, 120, (1, 16))) < 1e-4


def test_cosine_variant_does_not_end_worse_than_its_start():
    ws = workspace(tiny(layers=5, seed=2))
    variant = apply_actions(
        ws.lm.model, {"replaceme": {"start": 2, "n": 2, "method": "cosine", "cosine": {"steps": 30}}}, ws
    )
    cos = record_of(variant)["replaceme"]["cosine"]
    assert cos["steps"] == 30 and cos["lr"] == rm.COSINE_DEFAULTS["lr"]
    assert (
        cos["cosine_distance_end" if cos["kept"] == "end" else "cosine_distance_start"]
        <= min(cos["cosine_distance_start"], cos["cosine_distance_end"]) + 1e-12
    )
    assert len(variant.model.layers) == 3


def test_run_distances_and_choice_of_the_run():
    model = tiny(layers=6)
    _zero_run(model, [3, 4])
    ws = workspace(model)
    D = rm.run_distances(ws)
    assert D.shape == (6, 6) and np.isnan(D[5, 1]) and D[3, 1] == pytest.approx(0.0, abs=1e-6)
    assert rm.best_start(D, 2) == (3, pytest.approx(0.0, abs=1e-6))
    rule = replaceme_rows.replaceme_rule(ws, 2)  # the authors' rule: last-token angular distance
    assert {k: v for k, v in rule["replaceme"].items() if k not in ("calibration", "chosen_by")} == {
        "start": 3,
        "n": 2,
        "method": "lstsq",
    }
    by = rule["replaceme"]["chosen_by"]
    assert by["rule"] == "angular" and by["label"] == "ReplaceMe authors' rule: last-token angular distance"
    assert by["score"] == pytest.approx(0.0, abs=1e-3)
    ours = replaceme_rows.replaceme_rule(ws, 2, by="cosine")["replaceme"]
    assert ours["start"] == 3 and ours["chosen_by"]["label"] == "LayerScope's all-token cosine"
    assert "run chosen by the ReplaceMe authors' rule" in describe_action(rule)
    assert rule["replaceme"]["calibration"]["sha256"] == ws.text.sha256
    assert len(apply_actions(model, rule, ws).model.layers) == 4  # the calibration entry resolves to ws.text
    # the distance of a run is the plain removal's cosine distance the fit records
    variant = apply_actions(model, {"replaceme": {"start": 2, "n": 2}}, ws)
    assert record_of(variant)["replaceme"]["removal_cosine_distance"] == pytest.approx(D[2, 1], rel=1e-4)
    assert record_of(variant)["replaceme"]["chosen_by"]["rule"] == "given"
    assert record_of(apply_actions(model, rule, ws))["replaceme"]["chosen_by"] == by  # the record says who chose
    with pytest.raises(CompressionError, match="unknown rule for choosing the run"):
        replaceme_rows.choose_run(ws, 2, by="nonsense")
    # block 0 never starts a run; excluded blocks are skipped; per-block scores are summed over the run
    S = rm.run_scores_from_blocks([0.0, 5.0, 1.0, 1.0, 3.0, 0.5])
    assert S[2, 1] == 2.0 and rm.best_start(S, 1) == (5, 0.5) and rm.best_start(S, 2) == (2, 2.0)
    assert rm.best_start(S, 2, exclude=[1]) == (4, 3.5)  # l = 2 would fold into the excluded block 1
    assert rm.best_start(rm.run_scores_from_blocks([9, 1, 1, 9], "high"), 1) == (3, -9.0)
    with pytest.raises(CompressionError, match="does not fit"):
        rm.best_start(S, 6)


def test_parse_run():
    assert rm.parse_run("12:2") == (12, 2)
    assert rm.parse_run("[12, 14)") == (12, 2)
    assert rm.parse_run("auto:3") == (-1, 3)
    with pytest.raises(CompressionError, match="START:N"):
        rm.parse_run("12-13")


def test_prefit_fits_every_run_in_one_pass_with_the_maps_of_separate_fits(monkeypatch):
    model = tiny(layers=6)
    ws = workspace(model)
    c = ws.calibration
    batches = rm._batches(ws.lm, ws.text, c.n_windows, c.window_len)
    alone = {
        (s, n): rm.fit_lstsq(rm.collect_run_stats(model, [(s, n)], batches)[0]) for s, n in ((2, 1), (2, 2), (3, 2))
    }
    passes = []
    collect = rm.collect_run_stats
    monkeypatch.setattr(rm, "collect_run_stats", lambda *a, **kw: passes.append(a[1]) or collect(*a, **kw))
    actions = [{"replaceme": {"start": s, "n": n}} for s, n in alone] + [{"remove_blocks": [1]}]
    assert rm.prefit(ws, actions) == 1 and len(passes) == 1 and sorted(passes[0]) == sorted(alone)
    for (s, n), T in alone.items():
        variant = apply_actions(model, {"replaceme": {"start": s, "n": n}}, ws)
        assert record_of(variant)["replaceme"]["cached"]  # read, not fitted again
        fit = rm.fit_runs(
            ws.lm, ws.text, c.n_windows, c.window_len, [rm.ReplaceMeSpec.from_value({"start": s, "n": n})]
        )
        torch.testing.assert_close(fit[0].T, T.to(torch.float64).cpu(), rtol=1e-10, atol=1e-12)  # BLAS order only
    assert len(passes) == 1
    assert rm.prefit(ws, [{"remove_blocks": [1]}]) == 0
