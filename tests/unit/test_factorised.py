"""analysis.changes.truncation: truncating a model in place, FactorisedLinear, dense and factorised checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from analysis import cache
from analysis.capture.linear_inputs import collect_stats
from analysis.changes.truncation import apply_truncation, densify, plan_for_ratio
from analysis.methods.lowrank import activation_loss, svd_llm
from analysis.model.architecture import target_linears
from analysis.model.checkpoint import (
    is_factorised_checkpoint,
    load_factorised,
    save_dense,
    save_factorised,
)
from analysis.model.modules import CONFIG_KEY, FactorisedLinear


def tiny_llama(tie: bool = True, bias: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
    )
    return LlamaForCausalLM(cfg).eval()


def batches(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (2, 16), generator=g) for _ in range(n)]


def test_factorised_linear_computes_b_a_x_plus_bias() -> None:
    B, A, bias = torch.randn(6, 3), torch.randn(3, 5), torch.randn(6)
    layer = FactorisedLinear.from_factors(B, A, bias)
    x = torch.randn(4, 5)
    assert torch.allclose(layer(x), x @ (B @ A).T + bias, atol=1e-6)
    assert torch.allclose(layer.to_linear()(x), layer(x), atol=1e-6)
    assert layer.A.bias is None and layer.rank == 3
    assert sum(p.numel() for p in layer.parameters()) == 3 * (6 + 5) + 6


@pytest.mark.parametrize("method", ["svd", "asvd", "svd_llm", "nsvd"])
def test_dense_and_factorised_forms_agree(method: str) -> None:
    dense, fact = tiny_llama(), tiny_llama()
    names = target_linears(dense, "all")
    stats = collect_stats(dense, names, batches())
    plan = plan_for_ratio(dense, names, 0.3)
    report_d = apply_truncation(dense, plan, stats, method, form="dense")
    report_f = apply_truncation(fact, plan, stats, method, form="factorised")
    ids = batches(1, seed=9)[0]
    with torch.no_grad():
        assert torch.allclose(dense(ids).logits, fact(ids).logits, atol=1e-4)
    assert [r.rank for r in report_d.matrices] == list(plan.values())
    assert report_f.params_after < report_f.params_before == report_d.params_after
    for row in report_f.matrices:
        assert row.params_after == row.rank * (row.out_features + row.in_features) == row.factorised_params
        assert row.saves_parameters and 0 < row.relative_loss < 1
    assert all(isinstance(fact.get_submodule(n), FactorisedLinear) for n in names)


def test_report_predicted_loss_is_the_calibration_loss() -> None:
    model = tiny_llama()
    name = "model.layers.1.mlp.down_proj"
    stats = collect_stats(model, [name], batches())
    W = model.get_submodule(name).weight.detach().clone()
    report = apply_truncation(model, {name: 20}, stats, "svd_llm")
    row = report.matrices[0]
    expected = activation_loss(W, svd_llm(W.double(), stats[name].gram, 20).weight(), stats[name].gram)
    assert row.predicted_loss == pytest.approx(expected, rel=1e-6)
    assert row.relative_loss == pytest.approx(
        expected / activation_loss(W, torch.zeros_like(W), stats[name].gram), rel=1e-6
    )
    assert report.records()[0]["name"] == name


def test_apply_truncation_validates_before_changing_anything() -> None:
    model = tiny_llama()
    names = target_linears(model, "mlp", blocks=[0])
    stats = collect_stats(model, names, batches(1))
    before = {n: model.get_submodule(n).weight.clone() for n in names}
    with pytest.raises(ValueError, match="impossible"):
        apply_truncation(model, {names[0]: 10, names[1]: 65}, stats, "svd_llm")
    with pytest.raises(ValueError, match="not a linear layer"):
        apply_truncation(model, {"model.layers.0.mlp": 4}, stats, "svd")
    with pytest.raises(ValueError, match="needs calibration statistics"):
        apply_truncation(model, {names[0]: 4}, None, "asvd")
    with pytest.raises(ValueError, match="no calibration statistics"):
        apply_truncation(model, {"model.layers.1.mlp.up_proj": 4}, stats, "asvd")
    assert all(torch.equal(model.get_submodule(n).weight, before[n]) for n in names)


def test_plain_svd_needs_no_statistics() -> None:
    model = tiny_llama()
    report = apply_truncation(model, {"model.layers.0.mlp.up_proj": 8}, None, "svd")
    assert report.matrices[0].rank == 8
    assert torch.linalg.matrix_rank(model.get_submodule("model.layers.0.mlp.up_proj").weight) == 8


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tie,bias", [(True, False), (False, True)])
def test_factorised_checkpoint_round_trip_is_exact_and_smaller(tmp_path: Path, tie: bool, bias: bool) -> None:
    original = tiny_llama(tie=tie, bias=bias)
    model = tiny_llama(tie=tie, bias=bias)
    names = target_linears(model, "all")
    stats = collect_stats(model, names, batches())
    apply_truncation(model, plan_for_ratio(model, names, 0.5), stats, "nsvd", form="factorised")
    fact_dir = save_factorised(model, tmp_path / "fact")
    dense_dir = tmp_path / "orig"
    original.save_pretrained(dense_dir)
    assert is_factorised_checkpoint(fact_dir) and not is_factorised_checkpoint(dense_dir)
    config = json.loads((fact_dir / "config.json").read_text())
    assert config[CONFIG_KEY] == {n: model.get_submodule(n).rank for n in names}
    assert (fact_dir / "model.safetensors").stat().st_size < (dense_dir / "model.safetensors").stat().st_size
    loaded = load_factorised(fact_dir)
    ids = batches(1, seed=5)[0]
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    if tie:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_dense_checkpoint_reloads_with_plain_transformers(tmp_path: Path) -> None:
    model = tiny_llama()
    names = target_linears(model, "mlp")
    stats = collect_stats(model, names, batches())
    apply_truncation(model, plan_for_ratio(model, names, 0.2), stats, "asvd", form="dense")
    out = save_dense(model, tmp_path / "dense", extra_files={"recipe.json": '{"method": "asvd"}'})
    assert json.loads((out / "recipe.json").read_text()) == {"method": "asvd"}
    assert CONFIG_KEY not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = batches(1, seed=6)[0]
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))


def test_densify_then_save_dense(tmp_path: Path) -> None:
    model = tiny_llama()
    apply_truncation(model, {"model.layers.0.mlp.down_proj": 10}, None, "svd", form="factorised")
    ids = batches(1)[0]
    before = _logits(model, ids)
    with pytest.raises(ValueError, match="densify"):
        save_dense(model, tmp_path / "x")
    assert densify(model) == ["model.layers.0.mlp.down_proj"]
    assert isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), nn.Linear)
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)
    save_dense(model, tmp_path / "x")
    with pytest.raises(ValueError, match="no FactorisedLinear"):
        save_factorised(model, tmp_path / "y")
    with pytest.raises(ValueError, match="not a factorised checkpoint"):
        load_factorised(tmp_path / "x")


def test_writes_never_clobber_and_are_atomic(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    model = tiny_llama()
    with pytest.raises(FileExistsError, match="not written by LayerScope"):
        save_dense(model, target)
    # a folder LayerScope did not write is never replaced, even with overwrite=True
    with pytest.raises(FileExistsError, match="not written by LayerScope"):
        save_dense(model, target, overwrite=True)
    assert (target / "keep.txt").read_text() == "precious"
    # a failure half-way leaves neither a partial target nor a temporary directory
    with pytest.raises(RuntimeError):
        with cache.atomic_directory(tmp_path / "new") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # overwrite=True replaces a checkpoint LayerScope wrote
    save_dense(model, tmp_path / "ours")
    save_dense(model, tmp_path / "ours", overwrite=True)
    assert (tmp_path / "ours" / "config.json").exists()
    # an empty existing directory is fine without overwrite
    (tmp_path / "empty").mkdir()
    save_dense(model, tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "export", "ours"]


def test_a_factorised_checkpoint_missing_a_factor_refuses_to_load(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    apply_truncation(model, {"model.layers.1.mlp.up_proj": 12}, None, "svd", form="factorised")
    out = save_factorised(model, tmp_path / "f")
    weights = load_file(str(out / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.A.weight"]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.A.weight'\]"):
        load_factorised(out)
