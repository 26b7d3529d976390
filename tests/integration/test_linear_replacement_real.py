"""The bundled SmolLM2-135M with block 12 replaced by a linear map fitted on real text (alice): the forward pass,
the loss, and greedy generation with and without the KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

from analysis.capture.block_moments import collect_block_moments
from analysis.methods.least_squares import fit_linear_map_from_moments
from analysis.model.modules import LinearBlock, replace_decoder_layer
from analysis.texts import calibration_windows

pytestmark = pytest.mark.slow


def test_block_12_replaced_runs_forward_and_generate(lm, alice) -> None:
    tok = lm.tokenizer
    model = copy.deepcopy(lm.model).eval()  # the session's model stays untouched
    windows = [torch.as_tensor(w[None]) for w in calibration_windows(tok, alice, 8, 128)]
    moments = collect_block_moments(model, 12, windows)
    W, c, residual = fit_linear_map_from_moments(moments)
    assert 0.0 < residual < 1.0
    with torch.no_grad():
        base_loss = float(model(windows[0], labels=windows[0]).loss)
    replace_decoder_layer(model, 12, LinearBlock.from_map(W, c, dtype=torch.float32))
    with torch.no_grad():
        out = model(windows[0], labels=windows[0], output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.isfinite(out.logits).all()
    assert float(out.loss) < base_loss + 3.0  # degraded, not destroyed
    prompt = tok("Alice was beginning to get very tired", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, uncached)
