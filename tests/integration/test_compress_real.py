"""Low-rank truncation and linear replacement on the real bundled model, kept lean: the MLPs of two blocks, 8
calibration windows of 128 tokens (1024 tokens: fewer than the 1536 inputs of down_proj, so its X Xᵀ is singular
and needs the documented damping), short evaluations."""

import json

import pytest
import torch

from analysis.capture.workspace import Calibration, Workspace
from analysis.changes import low_rank as cp
from analysis.changes.export import export_checkpoint, verify_export
from analysis.changes.variant import apply_actions
from analysis.evaluation.perplexity import EvalSettings, evaluate
from analysis.methods.lowrank import rank_for_ratio
from analysis.model.checkpoint import (
    FACTORISED_KEY,
    LINEAR_BLOCKS_KEY,
    load_checkpoint,
    needs_project_loader,
    save_checkpoint,
)
from tests.cli import cli

pytestmark = pytest.mark.slow
BLOCKS = [3, 4]
SMALL_EVAL = EvalSettings(text="asyoulik", n_tokens=512, context=256, stride=256, measure_speed=False, max_new_tokens=8)


@pytest.fixture(scope="module")
def small_ws(lm, alice):
    return Workspace(lm=lm, text=alice, calibration=Calibration(n_windows=8, window_len=128))


def _logits(model, lm):
    ids = lm.tokenizer(
        "Alice looked at the Queen and said nothing at all.", return_tensors="pt", add_special_tokens=False
    )["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def compressed(small_ws, lm):
    """SVD-LLM at ratio 0.2 on the MLPs of blocks 3 and 4, factorised in memory."""
    before = _logits(lm.model, lm)
    action = {"low_rank": {"method": "svd-llm", "ratio": 0.2, "targets": "mlp", "blocks": BLOCKS, "form": "factorised"}}
    model = apply_actions(lm.model, action, small_ws)
    assert torch.equal(_logits(lm.model, lm), before), "the original changed"
    return model


def test_compress_gives_a_valid_variant_and_leaves_the_original(compressed, lm, asyoulik):
    record = cp.record_of(compressed)["low_rank"]
    k = rank_for_ratio(1536, 576, 0.2)
    assert record["ranks"] == {f"model.layers.{b}.mlp.{p}_proj": k for b in BLOCKS for p in ("gate", "up", "down")}
    # 1024 calibration tokens < 1536 inputs of down_proj: its Gram is singular, damped, and the page says so
    assert sorted(record["damped"]) == [f"model.layers.{b}.mlp.down_proj" for b in BLOCKS]
    assert any("not positive definite" in n for n in record["notes"])
    rel = {r["name"]: r["relative_loss"] for r in record["matrices"]}
    assert all(0 < v < 0.5 for v in rel.values())
    table = evaluate(
        lm.model,
        lm.tokenizer,
        asyoulik,
        SMALL_EVAL,
        candidate=compressed,
        candidate_name="compressed",
        original_key=lm.fingerprint,
    )
    assert table.original.perplexity < table.candidate.perplexity < 1.5 * table.original.perplexity
    assert table.candidate.parameters == lm.n_parameters() - 6 * (1536 * 576 - k * (1536 + 576))
    # measured: top-1 agreement 0.78 on these 511 tokens (1024 calibration tokens, down_proj damped)
    assert 0.7 < table.candidate.top1_agreement < 1 and table.candidate.generation


def test_dense_and_factorised_exports_reload_to_identical_logits(compressed, lm, tmp_path):
    from transformers import AutoModelForCausalLM

    from analysis.model.loading import ModelSpec, load_model

    sizes = {}
    for form in ("dense", "factorised"):
        out = export_checkpoint(
            compressed,
            lm.tokenizer,
            tmp_path / form,
            {"form": form},
            save_fn=lambda m, d, f=form: save_checkpoint(m, d, f),
        )
        check = verify_export(out, compressed, lm.tokenizer, loader=load_checkpoint)
        assert check["ok"] and check["max_abs_logit_diff"] < 1e-3, check
        sizes[form] = (out / "model.safetensors").stat().st_size
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()  # plain transformers
    assert not needs_project_loader(tmp_path / "dense")
    assert torch.allclose(_logits(dense, lm), _logits(compressed, lm), atol=1e-4)
    assert json.loads((tmp_path / "factorised" / "config.json").read_text())[FACTORISED_KEY]
    fact = load_checkpoint(tmp_path / "factorised")
    assert torch.equal(_logits(fact, lm), _logits(compressed, lm))
    saved = 6 * (1536 * 576 - rank_for_ratio(1536, 576, 0.2) * (1536 + 576)) * 4
    assert sizes["dense"] - sizes["factorised"] == pytest.approx(saved, rel=0.01)
    # the product's own loader recognises the folder (plain from_pretrained would fill B·A with random weights)
    again = load_model(ModelSpec(source=str(tmp_path / "factorised"), device="cpu"))
    assert torch.equal(_logits(again.model, lm), _logits(compressed, lm))


def test_low_rank_and_remove_blocks_combined(small_ws, lm, tmp_path):
    action = {
        "low_rank": {"method": "nsvd", "ratio": 0.2, "targets": ["down_proj"], "blocks": [20], "form": "dense"},
        "remove_blocks": [12, 13],
    }
    model = apply_actions(lm.model, action, small_ws)
    assert model.config.num_hidden_layers == 28 and lm.model.config.num_hidden_layers == 30
    assert cp.low_rank_ranks(model) == {"model.layers.18.mlp.down_proj": rank_for_ratio(576, 1536, 0.2)}
    out = export_checkpoint(
        model, lm.tokenizer, tmp_path / "f", {}, save_fn=lambda m, d: save_checkpoint(m, d, "factorised")
    )
    assert list(json.loads((out / "config.json").read_text())[FACTORISED_KEY]) == ["model.layers.18.mlp.down_proj"]
    assert verify_export(out, model, lm.tokenizer, loader=load_checkpoint)["ok"]


def test_replace_linear_is_evaluated_and_exported(small_ws, lm, asyoulik, tmp_path):
    before = _logits(lm.model, lm)
    model = apply_actions(lm.model, {"replace_linear": [12], "remove_blocks": [20]}, small_ws)
    assert torch.equal(_logits(lm.model, lm), before)
    fit = cp.record_of(model)["replace_linear"]["fit_residual"]
    residuals = cp.block_moments(lm, small_ws.text, 8, 128).residuals
    assert len(residuals) == 30 and fit["12"] == pytest.approx(residuals[12]) and 0 < fit["12"] < 0.2
    table = evaluate(
        lm.model,
        lm.tokenizer,
        asyoulik,
        SMALL_EVAL,
        candidate=model,
        candidate_name="changed",
        original_key=lm.fingerprint,
    )
    assert table.candidate.perplexity < 3 * table.original.perplexity and table.candidate.generation
    out = export_checkpoint(model, lm.tokenizer, tmp_path / "lin", {}, save_fn=lambda m, d: save_checkpoint(m, d))
    assert json.loads((out / "config.json").read_text())[LINEAR_BLOCKS_KEY] == [12]
    assert verify_export(out, model, lm.tokenizer, loader=load_checkpoint)["ok"]


def test_cli_compress_writes_checkpoint_and_recipe(tmp_path, small_ws):
    out = tmp_path / "svdllm"
    proc = cli(
        "compress",
        "--model",
        "default",
        "--method",
        "svd-llm",
        "--ratio",
        "0.2",
        "--targets",
        "mlp",
        "--blocks",
        "3,4",
        "--calib-text",
        "alice",
        "--sequences",
        "8",
        "--eval-text",
        "asyoulik",
        "--eval-tokens",
        "512",
        "--context",
        "256",
        "--stride",
        "256",
        "--no-speed",
        "--out",
        str(out),
    )
    summary = json.loads(proc.stdout)
    assert summary["reload_check"]["ok"] and summary["form"] == "factorised"
    assert "not positive definite" in proc.stderr  # the damping note for down_proj
    recipe = json.loads((out / "recipe.json").read_text())
    ev = recipe["evaluation"]
    assert ev["original"]["perplexity"] < ev["compressed"]["perplexity"] < 1.5 * ev["original"]["perplexity"]
    params = recipe["parameters"]
    assert params["compressed"] == params["factorised"] < params["original"]
    low = recipe["compression"]["low_rank"]
    assert low["method"] == "svd-llm" and low["ratio"] == 0.2
    assert low["ranks"] == {f"model.layers.{b}.mlp.{p}_proj": 335 for b in BLOCKS for p in ("gate", "up", "down")}
    assert low["calibration"]["sha256"] == small_ws.text.sha256 and low["calibration"]["windows"] == 8
    assert recipe["action"]["low_rank"]["method"] == "svd-llm" and recipe["export"]["size_bytes"] > 0
    assert needs_project_loader(out)
    # the statistics the command gathered are the dashboard's: same cache entry
    assert cp.stats_cached(small_ws.lm, small_ws.text, 8, 128, ["mlp"], blocks=BLOCKS)
    res = json.loads(
        cli(
            "evaluate",
            "--model",
            str(out),
            "--text",
            "asyoulik",
            "--tokens",
            "512",
            "--context",
            "256",
            "--stride",
            "256",
        ).stdout
    )
    assert abs(res["perplexity"] - ev["compressed"]["perplexity"]) / res["perplexity"] < 1e-3
    # the recipe reproduces the change headless: same ranks, same perplexity, a factorised export that reloads
    cli("run", out / "recipe.json", "--out", tmp_path / "rerun")
    again = json.loads((tmp_path / "rerun" / "recipe.json").read_text())
    assert again["evaluation"]["compressed"]["perplexity"] == pytest.approx(ev["compressed"]["perplexity"], rel=1e-6)
    assert again["compression"]["low_rank"]["ranks"] == low["ranks"]
    assert again["export"]["form"] == "factorised" and again["export"]["reload_check"]["ok"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratio", "1.5"], "must lie in (0, 1)"),
        (["--ratio", "0"], "must lie in (0, 1)"),
        (["--rank", "5000", "--blocks", "0"], "rank 5000 is impossible for model.layers.0.mlp.gate_proj (1536×576)"),
        ([], "nothing to compress"),
        (["--replace", "12", "--remove", "12"], "cannot be both replaced and removed"),
        (["--method", "pca", "--ratio", "0.2"], "invalid choice: 'pca'"),
    ],
)
def test_cli_compress_errors_are_one_line(tmp_path, args, message):
    proc = cli("compress", *args, "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
