"""analysis.changes.linear_replacement: affine fit of a block, LinearBlock inside a transformers 5.x Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analysis.capture.block_moments import collect_block_moments
from analysis.methods.least_squares import (
    LinearMapMoments,
    fit_linear_map,
    fit_linear_map_from_moments,
)
from analysis.model.modules import LinearBlock, replace_decoder_layer


def tiny_llama(layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def test_fit_recovers_an_exact_affine_map() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 16, generator=g, dtype=torch.float64)
    W = torch.randn(16, 12, generator=g, dtype=torch.float64)
    c = torch.randn(12, generator=g, dtype=torch.float64)
    W_fit, c_fit, residual = fit_linear_map(X, X @ W + c)
    assert torch.allclose(W_fit, W, atol=1e-10) and torch.allclose(c_fit, c, atol=1e-10)
    assert residual < 1e-12
    # numpy inputs, and the streamed moments give the same fit
    W_np, _, _ = fit_linear_map(X.numpy(), (X @ W + c).numpy())
    assert torch.allclose(W_np, W, atol=1e-10)
    moments = LinearMapMoments.empty(16, 12)
    for xs, ys in zip(X.split(64), (X @ W + c).split(64)):
        moments.update(xs, ys)
    W_m, c_m, residual_m = fit_linear_map_from_moments(moments)
    assert torch.allclose(W_m, W, atol=1e-9) and torch.allclose(c_m, c, atol=1e-9)
    assert residual_m < 1e-6


def test_residual_is_relative_to_the_output_spread() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    Y = X[:, :3] + 5.0 + noise  # half the variance of Y is explained
    _, _, residual = fit_linear_map(X, Y)
    assert residual == pytest.approx(np.sqrt(0.5), abs=0.02)
    moments = LinearMapMoments.empty(4, 3)
    moments.update(X, Y)
    assert fit_linear_map_from_moments(moments)[2] == pytest.approx(residual, rel=1e-6)
    # unrelated outputs: residual close to 1 (no better than the mean)
    assert fit_linear_map(X, noise)[2] == pytest.approx(1.0, abs=0.01)


def test_ridge_shrinks_and_rank_deficient_inputs_are_fine() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(10, 20, generator=g, dtype=torch.float64)  # fewer tokens than width
    Y = torch.randn(10, 20, generator=g, dtype=torch.float64)
    W0, _, r0 = fit_linear_map(X, Y)
    W1, _, r1 = fit_linear_map(X, Y, ridge=1.0)
    assert r0 < 1e-8  # 10 points are always fitted exactly
    assert torch.linalg.matrix_norm(W1) < torch.linalg.matrix_norm(W0)
    assert r1 > r0
    with pytest.raises(ValueError, match="two tokens"):
        fit_linear_map(X[:1], Y[:1])


def test_linear_block_accepts_the_decoder_call_signature() -> None:
    W, c = torch.randn(8, 8), torch.randn(8)
    block = LinearBlock.from_map(W, c)
    h = torch.randn(2, 5, 8)
    out = block(
        h,
        attention_mask=None,
        position_ids=torch.arange(5)[None],
        past_key_values=None,
        use_cache=False,
        cache_position=torch.arange(5),
        position_embeddings=(torch.ones(1), torch.ones(1)),
    )
    assert isinstance(out, torch.Tensor)
    assert torch.allclose(out, h @ W + c, atol=1e-5)


def test_block_moments_and_replacement_in_a_tiny_llama() -> None:
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 101, (2, 24), generator=g) for _ in range(4)]
    moments = collect_block_moments(model, 1, batches)
    assert moments.n == 4 * 2 * 24
    W, c, residual = fit_linear_map_from_moments(moments)
    assert 0 < residual < 1
    ids = batches[0]
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states
    block = LinearBlock.from_map(W, c, dtype=torch.float32)
    old = replace_decoder_layer(model, 1, block)
    assert block.layer_idx == 1 and type(old).__name__ == "LlamaDecoderLayer"
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 4 + 1
    assert torch.equal(hs[1], reference[1])
    assert torch.allclose(hs[2], block(hs[1]), atol=1e-6)


@pytest.mark.parametrize("called_before", [False, True])
def test_hidden_states_stay_aligned_when_block_zero_is_replaced(called_before: bool) -> None:
    model = tiny_llama()
    ids = torch.randint(3, 101, (1, 12), generator=torch.Generator().manual_seed(5))
    if called_before:
        with torch.no_grad():
            model(ids, output_hidden_states=True)  # installs transformers' recording hooks on the old blocks
    block = LinearBlock.from_map(torch.eye(32) * 0.5, torch.zeros(32))
    replace_decoder_layer(model, 0, block)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    assert len(hs) == 5
    assert torch.allclose(hs[1], 0.5 * hs[0], atol=1e-6)


@pytest.mark.parametrize("block_index", [0, 2])
def test_generation_with_a_replaced_block_matches_no_cache(block_index: int) -> None:
    """Greedy generation with the KV cache equals generation without it, on a left-padded batch (the padding
    mask needs the right cache length, which a replaced block 0 would otherwise leave at zero)."""
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    moments = collect_block_moments(model, block_index, [torch.randint(3, 101, (4, 32), generator=g)])
    W, c, _ = fit_linear_map_from_moments(moments, ridge=1e-3)
    replace_decoder_layer(model, block_index, LinearBlock.from_map(W, c))
    prompt = torch.randint(3, 101, (2, 7), generator=g)
    mask = torch.ones_like(prompt)
    prompt[0, :3], mask[0, :3] = 0, 0
    kwargs = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0, attention_mask=mask)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
        cache = model(prompt, attention_mask=mask, use_cache=True).past_key_values
    assert cache.get_seq_length() == 7
    assert cached.shape == (2, 15)
    assert torch.equal(cached, uncached)
