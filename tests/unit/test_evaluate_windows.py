"""The sliding-window evaluation scores every token but the first exactly once."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analysis.evaluation.perplexity import (
    EvalSettings,
    EvaluationError,
    _scored_pass,
    windows_for,
)


@pytest.mark.parametrize("n,context,stride", [(100, 20, 10), (100, 20, 20), (97, 32, 7), (20, 20, 5)])
def test_every_position_scored_once(n, context, stride):
    scored = []
    for s, e, first in windows_for(np.arange(n), context, stride):
        assert e - s <= context and first > s
        scored.extend(range(first, e))
    assert scored == list(range(1, n))


def test_candidate_equal_to_original_has_zero_kl_and_full_agreement():
    torch.manual_seed(0)
    m = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    ids = np.random.default_rng(0).integers(0, 50, 200)
    s = EvalSettings(n_tokens=200, context=64, stride=32)
    ref = _scored_pass(m, ids, s, None, "o", keep=True)
    same = _scored_pass(m, ids, s, None, "c", reference=ref.log_probs)
    assert same.count == 199 and same.nll == pytest.approx(ref.nll, rel=1e-6)
    assert same.kl_sum / same.count == pytest.approx(0.0, abs=1e-3)  # float16 reference rows


def test_bad_settings():
    with pytest.raises(EvaluationError):
        EvalSettings(context=10, stride=20).validate()
    with pytest.raises(EvaluationError):
        EvalSettings(n_tokens=100, context=512).validate()
