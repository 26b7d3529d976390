"""Slow check on the real converted SmolLM2-135M (``/tmp/conv``): block 12 replaced by a fitted linear map.

Skips when the converted model is missing. Run with
``python -m pytest tests/integration/test_linear_replacement_real.py -m slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from analysis.linear_replacement import (
    LinearBlock,
    collect_block_moments,
    fit_linear_map_from_moments,
    replace_decoder_layer,
)

MODEL_DIR = Path("/tmp/conv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="converted model not found at /tmp/conv"),
]

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type made books cheaper "
    "to produce. Within a few decades printers had spread across Europe, and the number of books in circulation "
    "grew from thousands to millions. Scholars, merchants and clergy all benefited from the new technology, "
    "which also changed how news, science and religious ideas travelled between cities. "
)


def test_block_12_replaced_runs_forward_and_generate() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    ids = tok(TEXT * 8, return_tensors="pt").input_ids[:, :512]
    windows = [ids[:, i : i + 128] for i in range(0, ids.shape[1] - 127, 128)]
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
    prompt = tok("The printing press", return_tensors="pt").input_ids
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, uncached)
