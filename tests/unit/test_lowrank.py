"""Known-answer tests of analysis.methods.lowrank: ranks, calibration statistics, decompositions, predicted losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analysis.capture.linear_inputs import collect_stats
from analysis.methods.lowrank import (
    CalibrationStats,
    LinearInputStats,
    activation_loss,
    asvd,
    check_rank,
    nsvd,
    predicted_loss_curve,
    rank_for_ratio,
    saves_parameters,
    spectra,
    svd_llm,
    svd_truncate,
    whitening,
)
from analysis.model.architecture import decoder_layers, target_linears

METHOD_NAMES = ("svd", "asvd", "svd_llm", "nsvd")


def tiny_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def data(m: int = 24, n: int = 16, N: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, LinearInputStats]:
    """A weight ``W (m×n)``, correlated inputs ``X (n×N)`` with uneven channel scales, and their statistics."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    scales = torch.logspace(-1, 1, n, dtype=torch.float64)
    X = (scales[:, None] * mix) @ torch.randn(n, N, generator=g, dtype=torch.float64)
    stats = LinearInputStats.empty(n)
    stats.update(X.T)
    return W, X, stats


# -- ranks ----------------------------------------------------------------------------------------------------


def test_rank_for_ratio_formula() -> None:
    assert rank_for_ratio(576, 1536, 0.2) == math.floor(0.8 * 576 * 1536 / (576 + 1536))
    assert rank_for_ratio(100, 100, 0.5) == 25
    assert rank_for_ratio(4096, 11008, 0.2) == int(4096 * 11008 * 0.8 / (4096 + 11008))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rank_for_ratio_rejects_ratio_outside_open_interval(ratio: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        rank_for_ratio(10, 20, ratio)


def test_rank_for_ratio_rejects_rank_zero() -> None:
    with pytest.raises(ValueError, match="leaves rank 0"):
        rank_for_ratio(2, 2, 0.99)


@pytest.mark.parametrize("m,n", [(1, 1), (3, 5), (8, 8), (7, 13), (576, 1536)])
def test_saves_parameters_exactly_below_the_break_even_rank(m: int, n: int) -> None:
    for k in range(1, min(m, n) + 1):
        assert saves_parameters(m, n, k) == (k * (m + n) < m * n) == (k < m * n / (m + n))
    # every ratio in (0, 1) gives a rank that saves parameters
    for ratio in (0.01, 0.2, 0.5, 0.9):
        try:
            k = rank_for_ratio(m, n, ratio)
        except ValueError:
            continue
        assert saves_parameters(m, n, k)
        assert k * (m + n) <= (1 - ratio) * m * n


def test_check_rank_errors() -> None:
    check_rank(4, 6, 4)
    for k in (0, -1, 5):
        with pytest.raises(ValueError, match=r"impossible for a 4×6 matrix"):
            check_rank(4, 6, k)
    W = torch.randn(4, 6)
    with pytest.raises(ValueError, match="impossible"):
        svd_truncate(W, 5)


# -- decompositions -------------------------------------------------------------------------------------------


def test_svd_llm_loss_is_the_tail_of_the_whitened_spectrum() -> None:
    W, X, stats = data()
    S = torch.linalg.cholesky(X @ X.T)
    sigma = torch.linalg.svdvals(W @ S)
    for k in (1, 5, 12, 15):
        B, A = svd_llm(W, stats.gram, k)
        assert B.shape == (24, k) and A.shape == (k, 16)
        loss = float(torch.linalg.matrix_norm(W @ X - B @ A @ X))
        expected = float(sigma[k:].square().sum().sqrt())
        assert loss == pytest.approx(expected, rel=1e-9)


def test_svd_llm_beats_other_methods_on_the_calibration_loss() -> None:
    W, X, stats = data()
    k = 6
    losses = {
        "svd": activation_loss(W, svd_truncate(W, k).weight(), stats.gram),
        "asvd": activation_loss(W, asvd(W, stats.mean_abs, k).weight(), stats.gram),
        "svd_llm": activation_loss(W, svd_llm(W, stats.gram, k).weight(), stats.gram),
    }
    assert losses["svd_llm"] <= min(losses.values()) + 1e-9


def test_activation_loss_matches_direct_computation() -> None:
    W, X, stats = data()
    W2 = svd_truncate(W, 3).weight()
    assert activation_loss(W, W2, stats.gram) == pytest.approx(float(torch.linalg.matrix_norm((W - W2) @ X)), rel=1e-10)


def test_svd_truncate_is_eckart_young() -> None:
    W, _, _ = data()
    sigma = torch.linalg.svdvals(W)
    f = svd_truncate(W, 4)
    assert float(torch.linalg.matrix_norm(W - f.weight())) == pytest.approx(float(sigma[4:].square().sum().sqrt()))


def test_asvd_matches_its_definition() -> None:
    W, _, stats = data()
    s = stats.mean_abs**0.5 + 1e-6
    U, sig, Vh = torch.linalg.svd(W * s, full_matrices=False)
    expected = (U[:, :5] * sig[:5]) @ Vh[:5] / s
    assert torch.allclose(asvd(W, stats.mean_abs, 5).weight(), expected, atol=1e-10)
    # a positive rescaling of the statistic does not change W'
    assert torch.allclose(
        asvd(W, stats.mean_abs * 7.0, 5, alpha=1.0).weight(), asvd(W, stats.mean_abs, 5, alpha=1.0).weight(), atol=1e-6
    )


def test_asvd_survives_dead_channels() -> None:
    W, _, stats = data()
    mean_abs = stats.mean_abs.clone()
    mean_abs[3] = 0.0
    f = asvd(W, mean_abs, 8)
    assert torch.isfinite(f.B).all() and torch.isfinite(f.A).all()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_full_rank_reproduces_w(method: str) -> None:
    W, _, stats = data(m=12, n=20)
    k = 12
    if method == "svd":
        f = svd_truncate(W, k)
    elif method == "asvd":
        f = asvd(W, stats.mean_abs, k)
    elif method == "svd_llm":
        f = svd_llm(W, stats.gram, k)
    else:
        f = nsvd(W, stats.gram, k)
    assert torch.allclose(f.weight(), W, atol=1e-9)


def test_factors_keep_the_weight_dtype() -> None:
    W, _, stats = data()
    f = svd_llm(W.float(), stats.gram, 4)
    assert f.B.dtype == torch.float32 and f.A.dtype == torch.float32


def test_nsvd_is_svd_llm_plus_svd_of_the_residual() -> None:
    W, _, stats = data()
    k = 10
    f = nsvd(W, stats.gram, k, k1_share=0.8)
    k1 = round(0.8 * k)
    first = svd_llm(W, stats.gram, k1).weight()
    second = svd_truncate(W - first, k - k1).weight()
    assert f.B.shape == (24, k) and f.A.shape == (k, 16)
    assert torch.allclose(f.weight(), first + second, atol=1e-9)
    # with k2 = 0 it is exactly SVD-LLM
    assert torch.allclose(nsvd(W, stats.gram, 4, k1_share=1.0).weight(), svd_llm(W, stats.gram, 4).weight())


def test_rank_deficient_gram_is_damped_and_reported() -> None:
    W, X, _ = data(m=20, n=32, N=10)  # 10 tokens < 32 channels: the Gram has rank 10
    stats = LinearInputStats.empty(32)
    stats.update(X.T)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(stats.gram)
    f = svd_llm(W, stats.gram, 5)
    assert f.damping > 0 and f.relative_damping >= 1e-6
    assert f.damping == pytest.approx(f.relative_damping * float(stats.gram.diagonal().mean()))
    assert torch.isfinite(f.B).all() and torch.isfinite(f.A).all()
    # with damping the identity is ||WX − W'X||² = Σ_{i>k} σ_i² − λ ||W − W'||²
    white = whitening(stats.gram)
    assert white.damping == f.damping
    sigma = torch.linalg.svdvals(W @ white.S)
    loss_sq = float(torch.linalg.matrix_norm(W @ X - f.weight() @ X)) ** 2
    expected = float(sigma[5:].square().sum()) - f.damping * float(torch.linalg.matrix_norm(W - f.weight())) ** 2
    assert loss_sq == pytest.approx(expected, rel=1e-6, abs=1e-8 * float(sigma.square().sum()))
    assert loss_sq <= float(sigma[5:].square().sum()) * (1 + 1e-9)


def test_positive_definite_gram_is_not_damped() -> None:
    _, _, stats = data()
    assert whitening(stats.gram).damping == 0.0


def test_explicit_damping_is_relative_to_the_mean_diagonal() -> None:
    _, _, stats = data()
    white = whitening(stats.gram, damping=1e-3)
    assert white.relative_damping == 1e-3
    S = white.S
    G = stats.gram + white.damping * torch.eye(16, dtype=torch.float64)
    assert torch.allclose(S @ S.T, G, rtol=1e-10, atol=1e-8)
    assert torch.equal(S, torch.tril(S))


# -- predicted loss curves and spectra ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_predicted_loss_curve_matches_the_truncations(method: str) -> None:
    W, X, stats = data()
    curve = predicted_loss_curve(W, stats, method, nsvd_points=None)
    assert curve.output_norm == pytest.approx(float(torch.linalg.matrix_norm(W @ X)), rel=1e-10)
    decomposers = {
        "svd": lambda k: svd_truncate(W, k),
        "asvd": lambda k: asvd(W, stats.mean_abs, k),
        "svd_llm": lambda k: svd_llm(W, stats.gram, k),
        "nsvd": lambda k: nsvd(W, stats.gram, k),
    }
    for k, loss in zip(curve.ranks.tolist(), curve.loss.tolist()):
        direct = float(torch.linalg.matrix_norm(W @ X - decomposers[method](k).weight() @ X))
        assert loss == pytest.approx(direct, rel=1e-7, abs=1e-9 * curve.output_norm)
    assert curve.loss[-1] == pytest.approx(0.0, abs=1e-7 * curve.output_norm)
    assert (curve.relative <= 1 + 1e-9).all()


def test_svd_llm_curve_is_the_singular_value_tail() -> None:
    W, _, stats = data()
    sp = spectra(W, stats)
    curve = predicted_loss_curve(W, stats, "svd_llm")
    tail = sp.whitened.square().flip(0).cumsum(0).flip(0)
    assert torch.allclose(curve.loss[:-1], tail[1:].sqrt(), rtol=1e-8)
    assert torch.allclose(sp.weight, torch.linalg.svdvals(W))
    assert sp.damping == 0.0


# -- calibration statistics on a model ------------------------------------------------------------------------


def test_streamed_stats_equal_one_shot_stats() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 12, generator=g)
    one = LinearInputStats.empty(12)
    one.update(X)
    streamed = LinearInputStats.empty(12)
    for chunk in X.split(37):
        streamed.update(chunk.reshape(1, -1, 12))
    assert streamed.n_tokens == one.n_tokens == 300
    assert torch.allclose(streamed.gram, one.gram, rtol=1e-12)
    assert torch.allclose(streamed.abs_sum, one.abs_sum, rtol=1e-12)
    x64 = X.double()
    assert torch.allclose(one.gram, x64.T @ x64, rtol=1e-12)
    assert torch.allclose(one.mean_abs, x64.abs().mean(0), rtol=1e-12)


def test_collect_stats_matches_the_inputs_seen_by_the_linears() -> None:
    model = tiny_llama()
    names = target_linears(model, "all")
    batches = [torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    calls: list[tuple[int, int]] = []
    stats = collect_stats(model, names, batches, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed
    # the reference: record inputs explicitly, all at once
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(args[0].detach())) for n in names
    ]
    with torch.no_grad():
        model(torch.cat(batches))
    for h in handles:
        h.remove()
    for n in names:
        x = torch.cat(seen[n]).reshape(-1, modules[n].in_features).double()
        assert stats[n].n_tokens == 48
        assert torch.allclose(stats[n].gram, x.T @ x, rtol=1e-6, atol=1e-6)
        assert torch.allclose(stats[n].mean_abs, x.abs().mean(0), rtol=1e-6)
    # q/k/v and gate/up share one accumulator; o and down have their own
    assert stats.sharing_input("model.layers.0.self_attn.k_proj") == [
        f"model.layers.0.self_attn.{p}_proj" for p in "qkv"
    ]
    assert stats.sharing_input("model.layers.1.mlp.up_proj") == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
    ]
    assert stats.sharing_input("model.layers.1.mlp.down_proj") == ["model.layers.1.mlp.down_proj"]


def test_collect_stats_streams_across_calls_and_skips_padding() -> None:
    model = tiny_llama()
    names = target_linears(model, ["down_proj"], blocks=[1])
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    whole = collect_stats(model, names, [ids])
    part = collect_stats(model, names, [ids[:1]])
    part = collect_stats(model, names, [ids[1:]], stats=part)
    assert torch.allclose(part[names[0]].gram, whole[names[0]].gram, rtol=1e-6)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    masked = collect_stats(model, names, [{"input_ids": ids, "attention_mask": mask}])
    assert masked[names[0]].n_tokens == 16


def test_stats_round_trip_through_tensors_and_safetensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama()
    names = target_linears(model, "attn", blocks=[0])
    stats = collect_stats(model, names, [torch.randint(0, 97, (1, 12))])
    tensors = stats.to_tensors()
    assert len(tensors) == 3 * 2  # two sites (q/k/v and o), three entries each
    again = CalibrationStats.from_tensors({k: v.numpy() for k, v in tensors.items()})
    assert again.names == stats.names
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    loaded = CalibrationStats.load(path)
    for n in names:
        assert torch.equal(loaded[n].gram, stats[n].gram)
        assert torch.equal(again[n].abs_sum, stats[n].abs_sum)
        assert loaded[n].n_tokens == 12
    assert loaded.sharing_input(names[0]) == names[:3]
    np.testing.assert_array_equal(loaded[names[3]].gram.numpy(), stats[names[3]].gram.numpy())


# -- target selection -----------------------------------------------------------------------------------------


def test_target_linears_groups_and_blocks() -> None:
    model = tiny_llama(layers=3)
    assert decoder_layers(model)[0] == "model.layers"
    attn = target_linears(model, "attn", blocks=[2])
    assert attn == [f"model.layers.2.self_attn.{p}_proj" for p in "qkvo"]
    mlp = target_linears(model, "mlp")
    assert len(mlp) == 9 and all(".mlp." in n for n in mlp)
    assert len(target_linears(model, "all")) == 21
    assert "lm_head" not in target_linears(model, "all")
    assert target_linears(model, ["mlp.down_proj", "q_proj"], blocks=[0]) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
    ]
    with pytest.raises(ValueError, match="out of range"):
        target_linears(model, "mlp", blocks=[3])
    with pytest.raises(ValueError, match="no linear layer named"):
        target_linears(model, ["nope"])
    with pytest.raises(ValueError, match="unknown target group"):
        target_linears(model, "mlps")


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_predicted_loss_curve_with_a_damped_gram(method: str) -> None:
    W, X, _ = data(m=20, n=32, N=12)
    stats = LinearInputStats.empty(32)
    stats.update(X.T)
    curve = predicted_loss_curve(W, stats, method, nsvd_points=7)
    assert (curve.damping > 0) == (method in ("svd_llm", "nsvd"))
    decompose_at = {
        "svd": lambda k: svd_truncate(W, k),
        "asvd": lambda k: asvd(W, stats.mean_abs, k),
        "svd_llm": lambda k: svd_llm(W, stats.gram, k),
        "nsvd": lambda k: nsvd(W, stats.gram, k),
    }[method]
    assert len(curve.ranks) == (7 if method == "nsvd" else 20)
    for k, loss in zip(curve.ranks.tolist(), curve.loss.tolist()):
        direct = float(torch.linalg.matrix_norm(W @ X - decompose_at(k).weight() @ X))
        assert loss == pytest.approx(direct, rel=1e-6, abs=1e-8 * curve.output_norm)
