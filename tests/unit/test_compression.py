"""analysis.changes.low_rank and analysis.model.checkpoint on a tiny random Llama: the actions, the cache, export and reload.

The real-model checks are in tests/integration/test_compress_real.py; here every path runs in a second.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from analysis import cache
from analysis.capture.workspace import Calibration, Workspace
from analysis.changes import low_rank as cp
from analysis.changes.export import export_checkpoint, verify_export
from analysis.changes.linear_replacement import apply_replace_linear
from analysis.changes.variant import (
    actions,
    apply_actions,
    candidate_name,
    describe_action,
)
from analysis.methods.lowrank import rank_for_ratio
from analysis.model.checkpoint import (
    FACTORISED_KEY,
    LINEAR_BLOCKS_KEY,
    RANK_ATTR,
    load_checkpoint,
    needs_project_loader,
    save_checkpoint,
)
from analysis.model.loading import LoadedModel, ModelSpec, count_parameters, fingerprint
from analysis.model.modules import FactorisedLinear, LinearBlock
from analysis.texts import text_from_string
from analysis.workflow.recipe import validate, variant_recipe


class CharTokenizer:
    """Enough of a tokenizer for calibration windows, evaluation, export and verify_export."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False, verbose=False):
        ids = [(ord(ch) % 120) + 1 for ch in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def save_pretrained(self, directory):
        (directory / "tokenizer_config.json").write_text("{}")


def tiny(seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def workspace(model=None, windows: int = 8, window_len: int = 32) -> Workspace:
    model = model if model is not None else tiny()
    lm = LoadedModel(
        model=model,
        tokenizer=CharTokenizer(),
        spec=ModelSpec(source="tiny"),
        name="tiny",
        fingerprint=fingerprint(model),
        load_seconds=0.0,
        source_kind="derived",
    )
    text = text_from_string(
        "Alice was beginning to get very tired of sitting by her sister on the bank. " * 40, name="tiny-text"
    )
    return Workspace(lm=lm, text=text, calibration=Calibration(n_windows=windows, window_len=window_len))


def logits(model: nn.Module, seed: int = 3) -> torch.Tensor:
    x = torch.randint(1, 120, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x).logits


def test_actions_are_registered_before_remove_blocks():
    registered = actions()
    assert registered["replace_linear"].order < registered["low_rank"].order < registered["remove_blocks"].order


@pytest.mark.parametrize("method", cp.METHODS)
@pytest.mark.parametrize("form", cp.FORMS)
def test_low_rank_leaves_the_original_untouched(method, form):
    ws = workspace()
    model = ws.lm.model
    before = logits(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    value = {"method": method, "ratio": 0.4, "targets": "mlp", "form": form}
    variant = apply_actions(model, {"low_rank": value}, ws)
    assert torch.equal(logits(model), before)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert not torch.allclose(logits(variant), before)
    record = cp.record_of(variant)["low_rank"]
    k = rank_for_ratio(64, 32, 0.4)
    assert record["ranks"] == {f"model.layers.{b}.mlp.{p}_proj": k for b in range(4) for p in ("gate", "up", "down")}
    assert record["method"] == method and record["form"] == form
    if method != "svd":
        assert record["calibration"]["sha256"] == ws.text.sha256 and record["calibration"]["tokens"] == 8 * 32
    if form == "factorised":
        assert count_parameters(variant) < count_parameters(model)
        assert isinstance(variant.get_submodule("model.layers.0.mlp.up_proj"), FactorisedLinear)
    else:
        assert count_parameters(variant) == count_parameters(model)
        assert variant.get_submodule("model.layers.0.mlp.up_proj").__dict__[RANK_ATTR] == k
        assert cp.factorised_parameters(variant) < count_parameters(model)


def test_statistics_are_gathered_once_and_shared_by_every_method():
    ws = workspace(tiny(seed=1))
    c = ws.calibration
    assert not cp.stats_cached(ws.lm, ws.text, c.n_windows, c.window_len, ["mlp"])
    stats, info = cp.calibration_stats(ws.lm, ws.text, c.n_windows, c.window_len, ["mlp"])
    assert info["computed"] == ["mlp"] and len(stats) == 12 and stats.n_tokens == 256
    # gate and up read the same input: one site
    assert stats.sharing_input("model.layers.0.mlp.gate_proj") == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
    ]
    again, info = cp.calibration_stats(ws.lm, ws.text, c.n_windows, c.window_len, ["mlp"], blocks=[2])
    assert info["cached"] == ["mlp"] and info["computed"] == []  # the all-blocks entry serves a subset
    name = "model.layers.2.mlp.down_proj"
    assert torch.equal(again[name].gram, stats[name].gram)
    for method in ("asvd", "svd-llm", "nsvd"):
        variant = apply_actions(ws.lm.model, {"low_rank": {"method": method, "ratio": 0.2, "blocks": [2]}}, ws)
        assert cp.record_of(variant)["low_rank"]["calibration"]["statistics"]["cached"] == ["mlp"]


def test_a_corrupt_statistics_entry_is_recomputed():
    ws = workspace(tiny(seed=2))
    c = ws.calibration
    cp.calibration_stats(ws.lm, ws.text, c.n_windows, c.window_len, ["attn"])
    e = cache.entry(cp.STATS_KIND, cp.stats_params(ws.lm, ws.text, c.n_windows, c.window_len, "attn", None))
    (e.path / "s0_gram.npy").write_bytes(b"not an array")
    stats, info = cp.calibration_stats(ws.lm, ws.text, c.n_windows, c.window_len, ["attn"])
    assert info["computed"] == ["attn"] and len(stats) == 16


@pytest.mark.parametrize(
    "value,message",
    [
        ({"method": "svd", "ratio": 0.0}, "strictly between 0 and 1"),
        ({"method": "svd", "ratio": 1.0}, "strictly between 0 and 1"),
        ({"method": "svd", "ratio": 1.5}, "strictly between 0 and 1"),
        ({"method": "svd", "ratio": -0.2}, "strictly between 0 and 1"),
        ({"method": "svd"}, "say how much to remove"),
        ({"method": "svd", "ratio": 0.2, "rank": 3}, "not both"),
        ({"method": "pca", "ratio": 0.2}, "unknown method 'pca'"),
        ({"method": "svd", "ratio": 0.2, "colour": 1}, "unknown low_rank key(s) colour"),
        ({"method": "nsvd", "ratio": 0.2, "k1_share": 1.5}, "k1 share must lie in (0, 1]"),
        ({"method": "svd", "ratio": 0.2, "form": "sparse"}, "form must be one of dense, factorised"),
        (
            {"method": "svd", "rank": 40},
            "rank 40 is impossible for model.layers.0.mlp.gate_proj (64×32): it must lie in [1, 32]",
        ),
        ({"method": "svd", "ratio": 0.2, "blocks": [4]}, "block 4 out of range"),
        ({"method": "svd", "ratio": 0.2, "targets": ["nope_proj"]}, "no linear layer named nope_proj"),
    ],
)
def test_bad_low_rank_values_get_clear_messages(value, message):
    ws = workspace()
    with pytest.raises(cp.CompressionError) as exc:
        apply_actions(ws.lm.model, {"low_rank": value}, ws)
    assert message in str(exc.value)


def test_a_rank_that_saves_nothing_is_warned_about_and_recorded():
    ws = workspace()
    plan, warnings = cp.plan_ranks(ws.lm.model, ["model.layers.0.mlp.down_proj"], rank=30)
    assert plan == {"model.layers.0.mlp.down_proj": 30}
    assert "saves no parameters" in warnings[0] and "break-even rank 21.3" in warnings[0]
    variant = apply_actions(
        ws.lm.model, {"low_rank": {"method": "svd", "rank": 30, "targets": ["down_proj"], "blocks": [0]}}, ws
    )
    assert "saves no parameters" in cp.record_of(variant)["low_rank"]["notes"][0]
    # a ratio never gives such a rank
    assert not cp.plan_ranks(ws.lm.model, ["model.layers.0.mlp.down_proj"], ratio=0.01)[1]


def test_explicit_ranks_per_matrix():
    ws = workspace()
    ranks = {"model.layers.1.self_attn.q_proj": 5, "model.layers.3.mlp.down_proj": 7}
    variant = apply_actions(ws.lm.model, {"low_rank": {"method": "svd-llm", "ranks": ranks, "form": "factorised"}}, ws)
    assert cp.low_rank_ranks(variant) == ranks
    with pytest.raises(cp.CompressionError, match="not targets"):
        cp.plan_ranks(ws.lm.model, ["model.layers.0.mlp.up_proj"], ratio=0.2, ranks={"model.layers.1.mlp.up_proj": 3})


def test_rank_deficient_gram_is_damped_and_said_so():
    # 2 windows of 16 tokens: 32 tokens for the 64-wide input of down_proj, so X Xᵀ is singular
    ws = workspace(windows=2, window_len=16)
    variant = apply_actions(ws.lm.model, {"low_rank": {"method": "svd-llm", "ratio": 0.2}}, ws)
    record = cp.record_of(variant)["low_rank"]
    downs = [f"model.layers.{b}.mlp.down_proj" for b in range(4)]
    assert set(downs) <= set(record["damped"])
    assert any("not positive definite" in n and "damping" in n for n in record["notes"])
    row = next(r for r in record["matrices"] if r["name"] == downs[0])
    assert row["damping"] > 0 and row["relative_damping"] >= 1e-6
    assert torch.isfinite(logits(variant)).all()


def test_low_rank_then_remove_blocks_exports_exactly_after_renumbering(tmp_path):
    ws = workspace()
    action = {"low_rank": {"method": "svd-llm", "ratio": 0.3, "blocks": [3], "form": "dense"}, "remove_blocks": [1]}
    variant = apply_actions(ws.lm.model, action, ws)
    assert variant.config.num_hidden_layers == 3 and ws.lm.model.config.num_hidden_layers == 4
    # block 3 of the original is block 2 now: its matrices carry their rank with them
    k = rank_for_ratio(64, 32, 0.3)
    assert cp.low_rank_ranks(variant) == {f"model.layers.2.mlp.{p}_proj": k for p in ("gate", "up", "down")}
    assert cp.record_of(variant)["low_rank"]["ranks"] == {
        f"model.layers.3.mlp.{p}_proj": k for p in ("gate", "up", "down")
    }
    assert candidate_name(action) == "changed" and "remove blocks 1" in describe_action(action)
    tok = CharTokenizer()
    for form in ("factorised", "dense"):
        out = export_checkpoint(
            variant, tok, tmp_path / form, {"form": form}, save_fn=lambda m, d, f=form: save_checkpoint(m, d, f)
        )
        config = json.loads((out / "config.json").read_text())
        check = verify_export(out, variant, tok, loader=load_checkpoint)
        assert check["ok"] and check["blocks"] == 3
        if form == "factorised":
            assert config[FACTORISED_KEY] == {f"model.layers.2.mlp.{p}_proj": k for p in ("gate", "up", "down")}
            assert needs_project_loader(out)
        else:
            assert FACTORISED_KEY not in config and not needs_project_loader(out)
            reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
            assert torch.equal(logits(reloaded), logits(variant))
    size = {f: (tmp_path / f / "model.safetensors").stat().st_size for f in ("factorised", "dense")}
    assert size["factorised"] < size["dense"]


def test_factorised_export_reloads_to_identical_logits(tmp_path):
    ws = workspace()
    variant = apply_actions(
        ws.lm.model, {"low_rank": {"method": "nsvd", "ratio": 0.5, "targets": "all", "form": "factorised"}}, ws
    )
    out = tmp_path / "fact"
    out.mkdir()
    save_checkpoint(variant, out, form="factorised")
    reloaded = load_checkpoint(out)
    assert torch.equal(logits(reloaded), logits(variant))
    assert all(isinstance(reloaded.get_submodule(n), FactorisedLinear) for n in cp.low_rank_ranks(variant))
    with pytest.raises(ValueError, match="no low-rank matrices"):
        save_checkpoint(ws.lm.model, tmp_path / "none", form="factorised")


def test_replace_linear_with_remove_blocks(tmp_path):
    ws = workspace()
    model = ws.lm.model
    before = logits(model)
    variant = apply_actions(model, {"replace_linear": [2], "remove_blocks": [0]}, ws)
    assert torch.equal(logits(model), before) and not isinstance(model.model.layers[2], LinearBlock)
    layers = variant.model.layers
    assert len(layers) == 3 and isinstance(layers[1], LinearBlock) and layers[1].layer_idx == 1
    x = torch.randint(1, 120, (1, 10))
    with torch.no_grad():
        out = variant(x, output_hidden_states=True)
        generated = variant.generate(x, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert len(out.hidden_states) == 4 and generated.shape[1] == 15
    record = cp.record_of(variant)["replace_linear"]
    assert record["blocks"] == [2] and 0 <= record["fit_residual"]["2"] < 1
    # every block's residual is cached with the moments; the chosen block's fit matches it
    bm = cp.block_moments(ws.lm, ws.text, 8, 32)
    assert bm.outcome == "hit" and len(bm.residuals) == 4
    assert bm.residuals[2] == pytest.approx(record["fit_residual"]["2"])
    out_dir = tmp_path / "lin"
    out_dir.mkdir()
    save_checkpoint(variant, out_dir, form="dense")
    assert json.loads((out_dir / "config.json").read_text())[LINEAR_BLOCKS_KEY] == [1]
    reloaded = load_checkpoint(out_dir)
    assert isinstance(reloaded.model.layers[1], LinearBlock)
    assert torch.equal(logits(reloaded), logits(variant))


def test_replace_linear_then_low_rank_skips_the_replaced_blocks():
    ws = workspace()
    variant = apply_actions(
        ws.lm.model, {"replace_linear": [1], "low_rank": {"method": "svd", "ratio": 0.2, "targets": "all"}}, ws
    )
    record = cp.record_of(variant)
    assert not any(".layers.1." in n for n in record["low_rank"]["ranks"])
    assert any("replaced by linear maps" in n for n in record["low_rank"]["notes"])
    with pytest.raises(cp.CompressionError, match="every chosen block is replaced"):
        apply_actions(
            ws.lm.model, {"replace_linear": [1], "low_rank": {"method": "svd", "ratio": 0.2, "blocks": [1]}}, ws
        )


@pytest.mark.parametrize(
    "value,message",
    [
        ([], "no blocks chosen"),
        ([4], "out of range"),
        ([1, 1], "named more than once"),
        ({"blocks": [1], "ridge": -1}, "ridge must be non-negative"),
    ],
)
def test_bad_replacements(value, message):
    ws = workspace()
    with pytest.raises(cp.CompressionError, match=message):
        apply_replace_linear(ws.lm.model, value, ws)


def test_recipe_records_ranks_parameters_and_validates():
    ws = workspace()
    action = {"low_rank": {"method": "asvd", "ratio": 0.25, "alpha": 0.5, "form": "factorised"}}
    variant = apply_actions(ws.lm.model, action, ws)
    recipe = variant_recipe(ws, action, evaluation={"settings": {}}, model=variant)
    validate(json.loads(cache.dumps(recipe)))
    low = recipe["compression"]["low_rank"]
    assert low["method"] == "asvd" and low["options"] == {"alpha": 0.5} and len(low["ranks"]) == 12
    assert low["calibration"]["sha256"] == ws.text.sha256
    params = recipe["parameters"]
    assert params["original"] == count_parameters(ws.lm.model)
    assert params["compressed"] == params["factorised"] == count_parameters(variant) < params["original"]
    assert variant_recipe(ws, {"remove_blocks": [1]}).get("compression") is None


def test_method_names_and_describe():
    assert cp.method_name("SVD_LLM") == "svd-llm"
    assert describe_action({"low_rank": {"method": "nsvd", "ratio": 0.2}}).startswith(
        "NSVD low rank: 20% of the parameters of mlp matrices in all blocks"
    )
    assert describe_action({"replace_linear": [12, 13]}) == "replace blocks 12, 13 by linear maps"
