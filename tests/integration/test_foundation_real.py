"""The foundation on the real bundled model and real text: load, capture, linearity views, errors."""

import time

import numpy as np
import pytest
import torch

from analysis.capture.hidden_states import capture_hidden_states
from analysis.methods import baselines
from analysis.metrics.families.baselines import baseline_results
from analysis.metrics.families.linearity import linearity_results
from analysis.model.architecture import ModelLoadError
from analysis.model.loading import ModelSpec, default_gguf_path, load_model

pytestmark = pytest.mark.slow


def test_default_model_card(lm):
    card = lm.card()
    assert card["blocks"] == 30 and card["width"] == 576 and card["parameters"] == 134_515_008
    assert card["dtype"] == "float32" and card["device"] == "cpu" and card["last_state_is_normed"]
    assert 134_515_008 * 4 <= card["memory_bytes"] < 134_515_008 * 4 + 4096  # weights + rotary buffers


def test_fingerprint_depends_on_weights_not_on_path(lm):
    via_gguf = load_model(ModelSpec(source=str(default_gguf_path()), device="cpu"))
    via_folder = load_model(ModelSpec(source=str(via_gguf.checkpoint_dir), device="cpu"))
    assert via_gguf.fingerprint == lm.fingerprint == via_folder.fingerprint
    half = load_model(ModelSpec(source=str(via_gguf.checkpoint_dir), device="cpu", dtype="bfloat16"))
    assert half.fingerprint != lm.fingerprint and half.card()["dtype"] == "bfloat16"


def test_bad_model_sources_give_clear_messages(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(ModelSpec(source="/nonexistent/model-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(ModelSpec(source=str(tmp_path / "empty")))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(ModelSpec(source=str(tmp_path / "notes.txt")))
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(ModelSpec(source=str(tmp_path / "vit")))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub"):
        load_model(ModelSpec(source="no-such-org/no-such-model"))
    assert time.perf_counter() - t0 < 15  # no minute of retries against an unreachable hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model(ModelSpec(source="no-such-org/no-such-model"))
    with pytest.raises(ModelLoadError, match="no CUDA GPU") if not torch.cuda.is_available() else _nothing():
        load_model(ModelSpec(device="cuda"))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_capture_shapes_cache_and_embeddings(ws, lm):
    cap = ws.capture()
    assert cap.states.shape == (31, 32, 128, 576)
    emb = lm.model.get_input_embeddings().weight.detach().numpy()
    assert np.allclose(cap.state(0)[0, :5], emb[cap.tokens[0, :5]], atol=1e-6)
    again = capture_hidden_states(lm, ws.text, 32, 128)
    assert again.outcome.status == "hit" and np.array_equal(again.tokens, cap.tokens)


def test_corrupt_capture_is_recomputed(lm, alice):
    cap = capture_hidden_states(lm, alice, 2, 16)
    (cap.outcome.path / "states.npy").write_bytes(b"not a numpy file")
    again = capture_hidden_states(lm, alice, 2, 16)
    assert again.outcome.status == "recomputed" and "unreadable" in again.outcome.message
    assert np.allclose(np.asarray(again.states), np.asarray(capture_hidden_states(lm, alice, 2, 16).states))


def test_last_position_capture_matches_full_capture(lm, alice):
    full = capture_hidden_states(lm, alice, 4, 16)
    last = capture_hidden_states(lm, alice, 4, 16, positions="last")
    assert last.states.shape == (31, 4, 1, 576)
    assert np.allclose(last.last_token_cloud(7), full.last_token_cloud(7), atol=1e-5)


def test_linearity_views_on_the_real_model(ws):
    res = linearity_results(ws)
    M, cons, nores = res["matrix"], res["consecutive"], res["without_residual"]
    assert res["tokens"] == 4096 and M.shape == (31, 31)
    assert np.allclose(np.diag(M), 1.0)
    assert np.allclose(np.diag(M, 1), cons, atol=1e-4)
    # the paper's headline is ~0.99 between consecutive layers; SmolLM2-135M: median 0.999, lowest 0.93 (block 10)
    assert np.median(cons) > 0.99 and np.all(cons[3:28] > 0.9) and np.sum(cons > 0.98) >= 20
    # without the residual the blocks are far less linear
    assert np.median(nores) < np.median(cons) - 0.2
    again = linearity_results(ws)
    assert again["outcome"].status == "hit"


def test_baselines_on_the_real_model(ws):
    res = baseline_results(ws)
    bi, D = res["block_influence"], res["angular"]
    assert bi.shape == (30,) and np.all(bi >= 0) and np.all(bi <= 2)
    assert bi[0] > 0.5  # the first block rewrites the embeddings
    assert D.shape == (30, 30) and np.isnan(D[29, 1]) and np.all((D[:, 0] >= 0) & (D[:, 0] <= 1))
    start, end, _ = baselines.best_range_of_size(D, 4)
    assert end - start == 4 and 0 <= start <= 26


def test_suggestions_from_registry(ws):
    from analysis.metrics import registry

    for m in registry.metrics()[:4]:
        blocks = m.suggest(ws, 3)
        assert len(blocks) == 3 and all(0 <= b < 30 for b in blocks)
    ang = registry.get("angular_distance").suggest(ws, 3)
    assert ang == list(range(ang[0], ang[0] + 3))  # a contiguous range


def test_device_map_auto_with_disk_offload_gives_the_same_model(lm, alice):
    """A model larger than memory: accelerate offloads what does not fit to disk (cache/offload)."""
    spec = ModelSpec(device_map_auto=True, max_memory="cpu=250MiB")
    big = load_model(spec)
    placed = set(big.model.hf_device_map.values())
    assert "disk" in placed and big.device.type == "cpu"
    assert big.fingerprint == lm.fingerprint  # offloaded weights are read back for the fingerprint
    a = capture_hidden_states(big, alice, 2, 16, storage="float16", refresh=True)
    b = capture_hidden_states(lm, alice, 2, 16)
    assert a.states.dtype == np.float16
    assert np.allclose(np.asarray(a.states, dtype=np.float32), np.asarray(b.states), rtol=2e-3, atol=2e-2)
