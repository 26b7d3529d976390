"""On a CUDA GPU: the bundled model moves there, a bf16 capture matches the fp32 one, evaluation runs there.

Marked ``cuda``: skipped, with the reason, where ``torch.cuda.is_available()`` is False (tests/conftest.py).
``make gpu-check`` runs them with the GPU benchmarks (bench/gpu_check.py, docs/gpu-check.md)."""

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.slow]
SMALL = dict(n_windows=8, window_len=128)


@pytest.fixture(scope="module")
def gpu_lm():
    from analysis.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(device="cuda"))


@pytest.fixture(scope="module")
def gpu_bf16():
    from analysis.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(device="cuda", dtype="bfloat16"))


def _workspace(lm, alice):
    from analysis.capture.workspace import Calibration, Workspace

    return Workspace(lm=lm, text=alice, calibration=Calibration(**SMALL))


def test_the_model_moves_to_cuda_with_the_same_weights(gpu_lm, lm):
    assert gpu_lm.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in gpu_lm.model.parameters())
    assert gpu_lm.fingerprint == lm.fingerprint  # the fingerprint is of the weights, not of the device
    x = torch.arange(16)[None]
    with torch.no_grad():
        on_gpu = gpu_lm.model(input_ids=x.cuda(), use_cache=False).logits.float().cpu()
        on_cpu = lm.model(input_ids=x, use_cache=False).logits
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


def test_bf16_capture_matches_the_fp32_capture(gpu_lm, gpu_bf16, alice):
    from analysis.metrics import registry

    full, half = _workspace(gpu_lm, alice), _workspace(gpu_bf16, alice)
    a, b = full.capture(), half.capture()
    assert a.states.shape == b.states.shape and (a.tokens == b.tokens).all()
    for s in range(a.states.shape[0]):
        x, y = np.asarray(a.states[s], dtype=np.float64), np.asarray(b.states[s], dtype=np.float64)
        rel = np.linalg.norm(x - y) / np.linalg.norm(x)
        assert rel < 0.05, (s, rel)  # bf16 keeps ~3 significant digits; errors grow through the blocks
    m = registry.get("block_influence")
    s32, s16 = np.asarray(m.scores(full, {})), np.asarray(m.scores(half, {}))
    assert np.allclose(s16, s32, atol=0.02)


def test_evaluate_runs_on_cuda_and_agrees_with_the_cpu(gpu_lm, lm, asyoulik):
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.evaluation.perplexity import EvalSettings, evaluate

    settings = EvalSettings(
        text="asyoulik", n_tokens=512, context=256, stride=128, measure_speed=False, max_new_tokens=0
    )
    gpu = evaluate(
        gpu_lm.model,
        gpu_lm.tokenizer,
        asyoulik,
        settings,
        candidate=remove_blocks(gpu_lm.model, [12, 13]),
        original_key=gpu_lm.fingerprint + ":cuda",
    )
    cpu = evaluate(
        lm.model,
        lm.tokenizer,
        asyoulik,
        settings,
        candidate=remove_blocks(lm.model, [12, 13]),
        original_key=lm.fingerprint,
    )
    assert gpu.original.perplexity == pytest.approx(cpu.original.perplexity, rel=1e-3)
    assert gpu.candidate.perplexity == pytest.approx(cpu.candidate.perplexity, rel=1e-3)
    assert gpu.candidate.top1_agreement > 0.99 * cpu.candidate.top1_agreement
