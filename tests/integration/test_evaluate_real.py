"""Evaluation on the real model: the original against itself, and against a pruned copy."""

import pytest

from analysis.changes.remove_blocks import remove_blocks
from analysis.evaluation.perplexity import EvalSettings, evaluate

pytestmark = pytest.mark.slow


def test_original_against_itself_and_pruned(lm, asyoulik):
    s = EvalSettings(n_tokens=1024, context=256, stride=128, max_new_tokens=8)
    same = evaluate(
        lm.model, lm.tokenizer, asyoulik, s, candidate=lm.model, candidate_name="same", original_key=lm.fingerprint
    )
    assert same.candidate.kl_to_original == pytest.approx(0.0, abs=2e-3)
    assert same.candidate.top1_agreement == 1.0 and same.candidate.recovery == pytest.approx(1.0)
    assert same.candidate.generation == same.original.generation
    pruned = remove_blocks(lm.model, [12, 13])
    t = evaluate(lm.model, lm.tokenizer, asyoulik, s, candidate=pruned, original_key=lm.fingerprint)
    assert t.original.perplexity == pytest.approx(same.original.perplexity)
    assert t.candidate.perplexity > t.original.perplexity and t.candidate.recovery < 1
    assert t.candidate.prefill_tokens_per_s > 0 and t.candidate.decode_ms_per_token > 0
    assert t.candidate.peak_memory_bytes >= t.candidate.weight_bytes
    assert set(t.to_dict()) == {"settings", "text", "original", "pruned"}
