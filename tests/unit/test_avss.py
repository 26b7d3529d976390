"""AVSS against hand computations, streaming invariance, suggestions, and hooks on a tiny Llama."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.methods.avss import (
    AVSSAccumulator,
    sorted_cumulative,
    suggest_blocks_by_share,
    suggest_k_lowest,
)
from analysis.model.hooks import decoder_blocks, site_modules
from analysis.profiles.avss import attach_avss_hooks

# ---------------------------------------------------------------------------------------------------------------
# a hand-made batch: 2 sequences of 3 tokens, width 4; the last token of sequence 0 is padding

HAND = np.array(
    [
        [[2.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 100.0]],  # last row: padding
        [[3.0, 0.0, 0.0, 3.0], [3.0, 0.0, 0.0, 3.0], [3.0, 0.0, 0.0, -3.0]],
    ]
)
HAND_MASK = np.array([[1, 1, 0], [1, 1, 1]])
# sequence 0 pooled over its 2 real tokens: [1, 0, 2, 2], mean 1.25, squared deviations sum 2.75
# sequence 1 pooled over 3 tokens:          [3, 0, 0, 1], mean 1,    squared deviations sum 6
HAND_VARIANCE_DDOF1 = (2.75 / 3 + 6.0 / 3) / 2
HAND_VARIANCE_DDOF0 = (2.75 / 4 + 6.0 / 4) / 2
# zeros among the 5 real tokens: 2 + 3 (sequence 0) + 2 + 2 + 2 (sequence 1) = 11 of 20 entries
HAND_SPARSITY = 11 / 20


def test_hand_computation_excludes_padding() -> None:
    acc = AVSSAccumulator(n_blocks=1, width=4)
    acc.update(0, HAND, attention_mask=HAND_MASK)
    row = acc.result().iloc[0]
    assert row["variance"] == pytest.approx(HAND_VARIANCE_DDOF1, rel=1e-12)
    assert row["sparsity"] == pytest.approx(HAND_SPARSITY, rel=1e-12)
    assert row["avss"] == pytest.approx(HAND_VARIANCE_DDOF1 / HAND_SPARSITY, rel=1e-12)
    assert row["navss"] == pytest.approx(1.0)
    assert not row["sparsity_zero"]
    assert (row["n_sequences"], row["n_tokens"], row["n_entries"], row["n_small"]) == (2, 5, 20, 11)

    population = AVSSAccumulator(n_blocks=1, ddof=0)
    population.update(0, torch.tensor(HAND), attention_mask=torch.tensor(HAND_MASK))
    assert population.result()["variance"].item() == pytest.approx(HAND_VARIANCE_DDOF0, rel=1e-12)


def test_padding_content_does_not_matter_but_missing_mask_counts_it() -> None:
    changed = HAND.copy()
    changed[0, 2] = [-7.0, 0.0, 0.0, 0.0]
    a, b, c = (AVSSAccumulator(1) for _ in range(3))
    a.update(0, HAND, HAND_MASK)
    b.update(0, changed, HAND_MASK)
    c.update(0, HAND)  # no mask: the padding row counts
    pd.testing.assert_frame_equal(a.result(), b.result())
    assert c.result()["n_tokens"].item() == 6
    assert c.result()["sparsity"].item() == pytest.approx(14 / 24)


def test_relative_threshold_uses_each_token_rms() -> None:
    tokens = np.array([[[3.0, 4.0, 0.01, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]])
    acc = AVSSAccumulator(1, eps=0.01, relative=True)
    acc.update(0, tokens)
    # token 0: RMS = sqrt((9 + 16 + 1e-4) / 4) ≈ 2.5, threshold ≈ 0.025 → 0.01 and 0 are small (2)
    # token 1: all zero, RMS 0 → all 4 small;  token 2: RMS 1, threshold 0.01 → none small
    assert acc.result()["n_small"].item() == 6
    absolute = AVSSAccumulator(1, eps=0.01)
    absolute.update(0, tokens)
    assert absolute.result()["n_small"].item() == 5  # 0.01 is not < 0.01


def test_zero_sparsity_gives_a_finite_flagged_lower_bound() -> None:
    rng = np.random.default_rng(0)
    big = rng.uniform(1.0, 2.0, size=(3, 5, 8)) * rng.choice([-1.0, 1.0], size=(3, 5, 8))
    acc = AVSSAccumulator(n_blocks=2)
    acc.update(0, big)
    acc.update(1, HAND[:, :, :4].repeat(2, axis=2), None)
    result = acc.result()
    zero = result.iloc[0]
    assert zero["sparsity"] == 0.0 and bool(zero["sparsity_zero"])
    assert zero["avss"] == pytest.approx(zero["variance"] * zero["n_entries"])
    assert np.isfinite(result[["variance", "sparsity", "avss", "navss"]].to_numpy(dtype=float)).all()
    assert result["navss"].sum() == pytest.approx(1.0)


def test_streamed_in_chunks_equals_all_at_once() -> None:
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((3, 7, 12, 16)).astype(np.float32)  # 3 blocks, 7 sequences
    acts[np.abs(acts) < 0.3] = 0.0
    lengths = rng.integers(0, 13, size=7)
    lengths[0] = 12
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    whole, streamed = AVSSAccumulator(3, width=16), AVSSAccumulator(3, width=16)
    for b in range(3):
        whole.update(b, acts[b], mask)
    for lo, hi in [(0, 2), (2, 3), (3, 7)]:
        for b in (2, 0, 1):
            streamed.update(b, torch.from_numpy(acts[b, lo:hi]), torch.from_numpy(mask[lo:hi]))
    pd.testing.assert_frame_equal(whole.result(), streamed.result(), rtol=1e-12)
    assert whole.result()["n_sequences"].tolist() == [int((lengths > 0).sum())] * 3


def test_half_precision_input_is_accumulated_in_float32() -> None:
    acc32, acc16 = AVSSAccumulator(1), AVSSAccumulator(1)
    acc32.update(0, torch.tensor(HAND, dtype=torch.float32), HAND_MASK)
    acc16.update(0, torch.tensor(HAND, dtype=torch.bfloat16), HAND_MASK)
    pd.testing.assert_frame_equal(acc32.result(), acc16.result())


def test_accumulator_rejects_bad_input() -> None:
    acc = AVSSAccumulator(n_blocks=2, width=4)
    with pytest.raises(ValueError, match="outside"):
        acc.update(2, HAND)
    with pytest.raises(ValueError, match="width"):
        acc.update(0, np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match=r"\[batch, seq, width\]"):
        acc.update(0, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="attention_mask"):
        acc.update(0, HAND, np.ones((2, 2)))
    acc.update(0, HAND, HAND_MASK)
    with pytest.raises(ValueError, match=r"blocks \[1\]"):
        acc.result()
    flat = AVSSAccumulator(1)
    flat.update(0, np.full((2, 3, 4), 5.0))
    with pytest.raises(ValueError, match="zero activation variance"):
        flat.result()


# ---------------------------------------------------------------------------------------------------------------
# suggestions


def _result_with_avss(avss: list[float]) -> pd.DataFrame:
    total = sum(avss)
    return pd.DataFrame({"block": range(len(avss)), "avss": avss, "navss": [a / total for a in avss]})


def test_suggestion_sorts_before_accumulating() -> None:
    result = _result_with_avss([4.0, 1.0, 2.0, 8.0, 5.0])  # NAVSS 0.20, 0.05, 0.10, 0.40, 0.25
    curve = sorted_cumulative(result)
    assert curve["block"].tolist() == [1, 2, 0, 4, 3]
    assert curve["rank"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(curve["cumulative_navss"], [0.05, 0.15, 0.35, 0.60, 1.0])
    # sorted cumulative: 0.05, 0.15 ≤ 0.25 < 0.35 → blocks 1 and 2
    assert suggest_blocks_by_share(result, 0.25) == [1, 2]
    # the reference code's layer-order sum (0.20, 0.25, …) would have picked blocks 0 and 1
    assert suggest_blocks_by_share(result, 0.35) == [0, 1, 2]  # boundary included
    assert suggest_blocks_by_share(result, 0.0) == []
    assert suggest_blocks_by_share(result, 1.0) == [0, 1, 2, 3, 4]
    assert suggest_k_lowest(result, 3) == [0, 1, 2]
    assert suggest_k_lowest(result, 0) == []
    with pytest.raises(ValueError):
        suggest_k_lowest(result, 6)
    with pytest.raises(ValueError):
        suggest_blocks_by_share(result, 1.5)


def test_suggestion_ties_break_by_block_index() -> None:
    result = _result_with_avss([1.0, 1.0, 1.0, 1.0])
    assert suggest_blocks_by_share(result, 0.5) == [0, 1]
    assert suggest_k_lowest(result, 1) == [0]


def test_suggestion_from_an_accumulator() -> None:
    acc = AVSSAccumulator(3)
    for b, scale in enumerate([1.0, 0.1, 3.0]):
        acc.update(b, HAND * scale, HAND_MASK)
    result = acc.result()
    np.testing.assert_allclose(result["navss"], np.array([1.0, 0.01, 9.0]) / 10.01)
    # sorted NAVSS 0.001, 0.0999, 0.8991 → cumulative 0.001, 0.1009, 1.0
    assert suggest_blocks_by_share(result) == [0, 1]
    assert suggest_blocks_by_share(result, 0.05) == [1]
    assert suggest_k_lowest(result, 2) == [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# hooks on a tiny randomly initialised Llama


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    mask[2, 4:] = 0
    return ids, mask


def test_site_modules_on_llama(tiny_llama: torch.nn.Module) -> None:
    blocks = decoder_blocks(tiny_llama)
    assert len(blocks) == 3
    assert site_modules(tiny_llama, "residual") == list(blocks)
    assert site_modules(tiny_llama, "attention") == [b.self_attn.o_proj for b in blocks]  # its output = self_attn[0]
    assert site_modules(tiny_llama, "mlp") == [b.mlp.down_proj for b in blocks]
    with pytest.raises(ValueError, match="unknown site"):
        site_modules(tiny_llama, "logits")


def test_residual_hooks_match_output_hidden_states(tiny_llama: torch.nn.Module) -> None:
    ids, mask = _batch()
    blocks = decoder_blocks(tiny_llama)
    acc = AVSSAccumulator(3, width=32)
    with attach_avss_hooks(tiny_llama, blocks, "residual", acc), torch.no_grad():
        out = tiny_llama(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    reference = AVSSAccumulator(3, width=32)
    for b in range(3):
        reference.update(b, out.hidden_states[b + 1], mask)
    got, want = acc.result(), reference.result()
    # block b outputs hidden state b + 1; HF applies the final norm to the last hidden state, so compare the others
    columns = ["variance", "sparsity", "avss", "n_tokens", "n_small"]
    pd.testing.assert_frame_equal(got.loc[:1, columns], want.loc[:1, columns], rtol=1e-6)
    assert got["n_tokens"].tolist() == [int(mask.sum())] * 3


@pytest.mark.parametrize(("site", "width"), [("mlp", 48), ("attention", 32), ("residual", 32)])
def test_hooks_exclude_padding_and_detach(tiny_llama: torch.nn.Module, site: str, width: int) -> None:
    ids, mask = _batch()
    other_pads = ids.clone()
    other_pads[mask == 0] = 5  # different padding tokens: real tokens (right-padded, causal) are unchanged
    results = []
    for batch_ids, positional in [(ids, False), (other_pads, True)]:
        acc = AVSSAccumulator(3, width=width)
        hooks = attach_avss_hooks(tiny_llama, decoder_blocks(tiny_llama), site, acc)
        with torch.no_grad():
            tiny_llama(batch_ids, mask) if positional else tiny_llama(input_ids=batch_ids, attention_mask=mask)
        hooks.remove()
        assert hooks.handles == []
        results.append(acc.result())
    pd.testing.assert_frame_equal(results[0], results[1], rtol=1e-5)
    assert results[0]["n_tokens"].tolist() == [int(mask.sum())] * 3
    assert results[0]["n_entries"].tolist() == [int(mask.sum()) * width] * 3


def test_removed_hooks_stop_updating(tiny_llama: torch.nn.Module) -> None:
    ids, mask = _batch()
    acc = AVSSAccumulator(3)
    with attach_avss_hooks(tiny_llama, decoder_blocks(tiny_llama), "mlp", acc), torch.no_grad():
        tiny_llama(input_ids=ids, attention_mask=mask)
    before = acc.result()
    with torch.no_grad():
        tiny_llama(input_ids=ids, attention_mask=mask)
    pd.testing.assert_frame_equal(before, acc.result())
    assert before["n_sequences"].tolist() == [3, 3, 3]


def test_hooks_refuse_a_4d_mask_and_a_wrong_block_count(tiny_llama: torch.nn.Module) -> None:
    ids, _ = _batch()
    blocks = decoder_blocks(tiny_llama)
    with pytest.raises(ValueError, match="accumulator expects"):
        attach_avss_hooks(tiny_llama, blocks, "mlp", AVSSAccumulator(2))
    with attach_avss_hooks(tiny_llama, blocks, "mlp", AVSSAccumulator(3)), torch.no_grad():
        with pytest.raises(ValueError, match="2-D"):
            tiny_llama(input_ids=ids, attention_mask=torch.ones(3, 1, 9, 9))


# ---- claims no larger than the numbers: AVSS's suggestion against block influence; the site's words -----------

#: block influence of the bundled SmolLM2-135M on alice (32 windows of 128 tokens), rounded; measured
BUNDLED_BI = [
    0.986,
    0.19,
    0.042,
    0.032,
    0.033,
    0.034,
    0.035,
    0.038,
    0.05,
    0.041,
    0.055,
    0.048,
    0.033,
    0.028,
    0.025,
    0.029,
    0.032,
    0.026,
    0.039,
    0.046,
    0.063,
    0.051,
    0.048,
    0.047,
    0.154,
    0.026,
    0.032,
    0.046,
    0.052,
    1.036,
]


def test_avss_caveat_names_the_blocks_block_influence_ranks_most_important() -> None:
    from analysis.metrics.families.avss import contradiction

    line = contradiction([0, 1, 3], BUNDLED_BI, "block influence (ShortGPT)")
    assert line is not None and "blocks 0, 1" in line and "block 0: rank 2, block 1: rank 3" in line
    assert "among the 7 most important of 30" in line and "block 3" not in line
    assert contradiction([13, 14, 17], BUNDLED_BI, "block influence") is None  # low-BI blocks: no conflict
    # a "high = redundant" measure is oriented the other way
    assert contradiction([0], [-5.0, 1.0, 2.0, 3.0], "x", redundant_when="high", top=1) is not None
    assert contradiction([0], [float("nan"), 1.0, 2.0, 3.0], "x", top=1) is None  # no score: no claim


def test_block_influence_above_one_is_explained() -> None:
    from analysis.metrics.families.baselines import block_influence_note

    assert block_influence_note([0.2, 0.9]) == ""
    note = block_influence_note(BUNDLED_BI)
    assert note.startswith("Block 29: BI 1.036.") and "mean cosine is negative" in note


def test_site_label_mentions_experts_only_on_a_mixture_of_experts() -> None:
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig

    from analysis.profiles.avss import AVSSSettings, is_moe, site_label

    assert "expert" not in site_label("mlp").lower() and "expert" not in AVSSSettings().describe().lower()
    assert "MoE" in site_label("mlp", moe=True) and site_label("residual", moe=True) == site_label("residual")
    small = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    dense = AutoModelForCausalLM.from_config(LlamaConfig(**small))
    moe = AutoModelForCausalLM.from_config(MixtralConfig(**small, num_local_experts=2, num_experts_per_tok=1))
    assert not is_moe(SimpleNamespace(blocks=dense.model.layers))
    assert is_moe(SimpleNamespace(blocks=moe.model.layers))
