"""Layer-by-layer execution (analysis.model.sequential) gives the in-memory numbers; the default calibration is
chosen from the model's width and depth; the linearity refusal names the setting that helps."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from analysis.capture.defaults import default_calibration
from analysis.capture.hidden_states import capture_hidden_states
from analysis.evaluation.perplexity import EvalSettings, perplexity
from analysis.model.loading import ModelSpec, load_model
from analysis.model.sequential import StateStore, open_sequential
from tests.families import tiny_config, tiny_model_dir

_BUILT: dict = {}


def _pair(family: str, tmp_path_factory):
    """The tiny model of ``family`` in memory and layer by layer (built once per module run)."""
    if family not in _BUILT:
        folder = tiny_model_dir(family, tmp_path_factory.mktemp(family))
        spec = ModelSpec(source=str(folder), device="cpu")
        _BUILT[family] = load_model(spec), open_sequential(spec, state_budget=20_000)  # tiny budget: states on disk
    return _BUILT[family]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return _pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3_text"])  # gemma3: sliding and full attention
def tiny_all(request, tmp_path_factory):
    """For the tests of equal numbers: also Gemma-3, whose blocks take two kinds of masks."""
    return _pair(request.param, tmp_path_factory)


def test_same_fingerprint_and_hidden_states(tiny_all, alice):
    lm, sm = tiny_all
    assert sm.fingerprint == lm.fingerprint  # the caches of both runs are shared
    mem = np.array(capture_hidden_states(lm, alice, 6, 48, batch_size=4).states)
    seq = capture_hidden_states(sm, alice, 6, 48, batch_size=4, refresh=True)
    assert seq.states.shape == mem.shape == (lm.n_blocks + 1, 6, 48, lm.width)
    np.testing.assert_allclose(np.asarray(seq.states), mem, rtol=0, atol=1e-5)


def test_same_perplexity(tiny_all, asyoulik):
    lm, sm = tiny_all
    settings = EvalSettings(n_tokens=1100, context=256, stride=100, measure_speed=False)
    a = perplexity(lm.model, lm.tokenizer, asyoulik, settings)
    b = perplexity(sm, sm.tokenizer, asyoulik, settings)
    assert a["tokens"] == b["tokens"]
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-5)


def test_pruned_order_matches_removed_blocks(tiny_all, alice):
    """``blocks=`` runs a pruned variant layer by layer: the same logits as removing the blocks in memory."""
    from analysis.changes.remove_blocks import remove_blocks

    lm, sm = tiny_all
    x = torch.as_tensor(np.arange(64).reshape(2, 32) % 250)
    pruned = remove_blocks(lm.model, [1])
    with torch.no_grad():
        want = pruned(input_ids=x, use_cache=False).logits
    got = {}
    sm.run([x], on_final=lambda i, h: got.__setitem__(i, sm.head_logits(h)), blocks=[0, 2, 3], needs_head=True)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)
    assert all(p.device.type == "meta" for p in sm.skeleton.parameters())  # every part freed again


def test_bundled_model_capture(lm, alice):
    sm = open_sequential(ModelSpec(device="cpu"))
    assert sm.fingerprint == lm.fingerprint and sm.n_blocks == lm.n_blocks
    mem = np.array(capture_hidden_states(lm, alice, 3, 64, states=[0, 1, 15, 30]).states)
    seq = capture_hidden_states(sm, alice, 3, 64, states=[0, 1, 15, 30], refresh=True)
    np.testing.assert_allclose(np.asarray(seq.states), mem, rtol=0, atol=1e-5)


def test_each_block_gets_its_own_kinds_mask(tmp_path, asyoulik):
    """Gemma-3's sliding-window blocks and full-attention blocks get different masks and rotary embeddings; the
    windows here are longer than the sliding window (16), so a block given the other kind's would differ."""
    folder = tiny_model_dir("gemma3_text", tmp_path / "g")
    sm = open_sequential(ModelSpec(source=str(folder), device="cpu"))
    assert sm.layer_kinds()[:2] == ["sliding_attention", "full_attention"]
    store = StateStore(10**9)
    try:
        kw = sm._embed([torch.as_tensor(np.arange(64).reshape(2, 32) % 250)], store)[0]
    finally:
        store.close()
    sliding, full, sliding_again = (kw[b][1] for b in range(3))
    assert sliding["attention_mask"] is not None and sliding["attention_mask"] is not full["attention_mask"]
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])  # local / global rope
    assert sliding_again["attention_mask"] is sliding["attention_mask"]


def test_chosen_automatically_when_the_weights_do_not_fit(tiny, monkeypatch, capsys):
    from analysis.cli import common
    from analysis.model import loading

    lm, _ = tiny
    args = argparse.Namespace(
        model=str(lm.checkpoint_dir),
        device="cpu",
        dtype="float32",
        device_map_auto=False,
        trust_remote_code=False,
        max_memory="",
        sequential=False,
    )
    assert not getattr(common.load(args, sequential_ok=True), "sequential", False)
    monkeypatch.setattr(loading, "available_bytes", lambda device: 1000)
    got = common.load(args, sequential_ok=True)
    assert got.sequential
    assert "running it layer by layer" in capsys.readouterr().err


def test_a_model_too_big_for_memory_is_refused_before_any_weight_is_loaded(tiny, monkeypatch):
    """Loading more than the free memory ends with the process killed (the dashboard's server with it): refused in
    one line instead, except where accelerate places the weights; bfloat16 needs half of float32's bytes."""
    from analysis.model import loading
    from analysis.model.architecture import ModelLoadError

    lm, _ = tiny
    folder = lm.checkpoint_dir
    need = loading.model_bytes(folder, torch.float32)
    assert need == loading.checkpoint_bytes(folder) > 0 and loading.model_bytes(folder, torch.bfloat16) == need // 2
    monkeypatch.setattr(loading, "available_bytes", lambda device: need * 3 // 4)
    spec = ModelSpec(source=str(folder), device="cpu")
    with pytest.raises(ModelLoadError) as err:
        load_model(spec)
    line = str(err.value)
    assert "\n" not in line and "more than the 0.0 GiB free on cpu" in line and "bfloat16" in line
    assert loading.memory_refusal(ModelSpec(source=str(folder), device="cpu", dtype="bfloat16"), folder, "cpu") is None
    assert loading.memory_refusal(ModelSpec(source=str(folder), device_map_auto=True), folder, "cpu") is None
    not_cached = ModelSpec(source="nobody/not-in-the-local-cache", device="cpu")
    assert loading.memory_refusal(not_cached, None, "cpu") is None  # from_pretrained downloads it or says why not


def test_a_command_that_needs_the_model_in_memory_refuses_one_too_big_in_one_line(tiny, monkeypatch, capsys):
    from analysis.cli.main import main
    from analysis.model import loading

    lm, _ = tiny
    monkeypatch.setattr(loading, "available_bytes", lambda device: 1000)
    rc = main(["prune", "--model", str(lm.checkpoint_dir), "--device", "cpu", "--remove", "0", "--out", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: the weights of") and "free on cpu" in err[0]


# ---------------------------------------------------------------------------------------------------------------
# Defaults from the model's shape


def _llama(width, depth, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=8, **kw)


def test_default_calibration_from_width_and_depth():
    bundled = default_calibration(_llama(576, 30))
    assert (bundled.n_windows, bundled.window_len, bundled.storage) == (32, 128, "float32")  # unchanged
    one_b = default_calibration(_llama(2048, 16))
    assert one_b.n_windows * one_b.window_len >= 2 * 2048 and (one_b.n_windows, one_b.storage) == (40, "float32")
    big = default_calibration(_llama(8192, 80))
    assert big.n_windows * big.window_len >= 2 * 8192 and big.storage == "float16"
    assert "linearity needs ≥ 2 × width = 16,384" in big.reason
    given = default_calibration(_llama(2048, 16), n_windows=8)
    assert given.n_windows == 8 and "it will refuse" in given.reason


def test_linearity_refusal_names_n_max(lm, alice):
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.methods.linearity import NotEnoughTokens
    from analysis.metrics.families.linearity import linearity_results
    from analysis.workflow.preflight import PreflightError, check_linearity_tokens

    ws = Workspace(lm=lm, text=alice, calibration=Calibration(n_max=500))
    with pytest.raises(NotEnoughTokens, match="raise --n-max") as e:
        linearity_results(ws)
    assert "capture more windows" not in str(e.value)
    with pytest.raises(PreflightError, match="--n-max = 500"):
        check_linearity_tokens(lm.config, 32, 128, n_max=500)
    with pytest.raises(PreflightError, match="use --sequences 10 or more"):
        check_linearity_tokens(tiny_config("llama").__class__(hidden_size=640, num_attention_heads=8), 4, 128)


def test_cli_says_what_it_chose(tiny, tmp_path):
    from tests.cli import cli

    lm, _ = tiny
    proc = cli("capture", "--model", lm.checkpoint_dir, "--sequential", "--estimate-only")
    assert "[calibration] 32 windows × 128 tokens" in proc.stderr
    assert "layer by layer (--sequential)" in proc.stderr
    assert json.loads(proc.stdout)["tokens"] == 4096


def test_low_rank_statistics(tiny, alice):
    """The input statistics of the low-rank methods, gathered layer by layer, are the in-memory ones."""
    from analysis.changes.low_rank import calibration_stats

    lm, sm = tiny
    a, _ = calibration_stats(lm, alice, 4, 32, ["attn", "mlp"])
    b, info = calibration_stats(sm, alice, 4, 32, ["attn", "mlp"])
    assert info["cached"] == ["attn", "mlp"]  # same fingerprint: the in-memory entry serves both
    from analysis.capture.linear_inputs import collect_stats
    from analysis.changes.low_rank import _batches

    fresh = collect_stats(sm, a.names, _batches(sm, alice, 4, 32))
    assert set(fresh.names) == set(a.names)
    for name in a.names:
        torch.testing.assert_close(fresh[name].gram, a[name].gram, rtol=1e-9, atol=1e-9)


def test_variants_share_the_originals_tensors(tiny):
    """A pruned or in-place-changed variant holds the original's weight tensors, never copies of them."""
    from analysis.changes.variant import apply_actions
    from analysis.model.loading import derived_model

    lm, _ = tiny
    ptrs = {p.data_ptr() for p in lm.model.parameters()}
    variant = apply_actions(lm.model, {"remove_blocks": [1, 2]})
    assert {p.data_ptr() for p in variant.parameters()} <= ptrs
    derived = derived_model(lm, variant, "pruned")
    assert {p.data_ptr() for p in derived.model.parameters()} <= ptrs


def test_damage_scan(tiny):
    """The block-removal scan layer by layer (every block loaded once) gives the in-memory scan's rows."""
    from analysis.metrics import damage

    lm, sm = tiny
    settings = damage.SearchSettings(text="lcet10", n_tokens=256, context=64, batch_size=2)
    for state in (None, {"blocks": [2]}):
        a = damage.scan(lm, settings, state)
        damage._REFERENCE.clear()
        b = damage.scan(sm, settings, state)
        damage._REFERENCE.clear()
        assert [r["block"] for r in a] == [r["block"] for r in b]
        for ra, rb in zip(a, b):
            for k in ("nll", "perplexity", "kl", "top1"):
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (state, ra["block"], k)


def test_run_variants_share_prefixes_and_give_each_pruned_model(tiny):
    """Variants that keep the same blocks so far share a stream: each block runs once per stream; every variant's
    logits are those of the model with its blocks removed in memory."""
    from analysis.changes.remove_blocks import remove_blocks

    lm, sm = tiny
    n = lm.n_blocks
    x = torch.as_tensor(np.arange(64).reshape(2, 32) % 250)
    variants = [list(range(n)), [0, 2, 3], [0, 2], [1, 2, 3], [0, 1, 2]]
    got = {}
    runs = sm.run_variants([x], variants, lambda v, i, h: got.__setitem__(v, sm.head_logits(h)))
    # block 0: one stream (all but [1,2,3], which parts there); block 1: it and [1,2,3]'s; block 2: three
    # ([0,2,3] and [0,2] parted at 1); block 3: three again ([0,1,2] and [0,2] part there without running it)
    assert runs == 1 + 2 + 3 + 3
    for v, keep in enumerate(variants):
        drop = [b for b in range(n) if b not in keep]
        with torch.no_grad():
            want = (remove_blocks(lm.model, drop) if drop else lm.model)(input_ids=x, use_cache=False).logits
        torch.testing.assert_close(got[v], want, rtol=0, atol=1e-5)


def test_shared_pass_layer_by_layer_equals_the_in_memory_one(tiny_all, asyoulik):
    from analysis.evaluation import shared_prefix

    lm, sm = tiny_all
    settings = EvalSettings(n_tokens=600, context=128, stride=64, batch_size=3, measure_speed=False)
    actions = [{"remove_blocks": [1]}, {"remove_blocks": [0, 3]}, {"remove_blocks": [3]}, {"remove_blocks": [1, 2]}]
    a = shared_prefix.evaluate_actions(lm, actions, settings, asyoulik)
    b = shared_prefix.evaluate_actions(sm, actions, settings, asyoulik)
    for x, y in zip(a.candidates, b.candidates):
        for key in ("perplexity", "kl", "top1"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key
        assert (y["tokens"], y["parameters"]) == (x["tokens"], x["parameters"])
    assert b.original["perplexity"] == pytest.approx(a.original["perplexity"], rel=1e-6)
    with pytest.raises(Exception, match="only remove whole blocks; skip_mlp"):
        shared_prefix.evaluate_actions(sm, [{"skip_mlp": [1]}], settings, asyoulik)


def test_leaderboard_layer_by_layer_gives_the_in_memory_rows(tiny_all, alice, tmp_path, monkeypatch):
    """The leaderboard of a layer-by-layer model: the same rows as in memory for every rule both run (whole
    blocks), without ReplaceMe's and AVSS's rows; half-block search and AVSS named are refused in one line."""
    from dataclasses import replace

    from analysis.capture.workspace import Calibration, Workspace
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb

    lm, sm = tiny_all
    settings = lb.LeaderboardSettings(
        k_max=2,
        search=SearchSettings(text="lcet10", n_tokens=128, context=64),
        evaluation=lb.default_eval_settings(text="asyoulik", n_tokens=256, context=128, stride=64),
        random_samples=2,
    )
    cal = Calibration(n_windows=8, window_len=64)
    boards = {}
    for name, model in (("memory", lm), ("layers", sm)):
        monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / name))  # each computes everything itself
        boards[name] = lb.run(Workspace(lm=model, text=alice, calibration=cal), settings).rows
    mem, seq = boards["memory"], boards["layers"]
    replaced = {"replaceme"} if not lb.for_model(settings, lm)[1] else set()  # not on Gemma-3 (norm after the MLP)
    assert replaced | {"replaceme_remove", "metric:avss"} <= set(mem.rule) and not {
        "replaceme",
        "replaceme_remove",
        "metric:avss",
    } & set(seq.rule)
    both = mem[mem.rule.isin(set(seq.rule))].merge(seq, on=["rule", "k", "sample"], suffixes=("", "_seq"))
    assert len(both) == len(seq) > 10
    differ = both[both.blocks != both.blocks_seq]
    assert set(differ.rule) <= {"consensus"}, differ  # the consensus of other proxies (no AVSS) may differ
    both = both[both.blocks == both.blocks_seq]
    for col in ("perplexity", "kl", "top1"):
        np.testing.assert_allclose(both[col + "_seq"], both[col], rtol=1e-5, atol=1e-7)
    with pytest.raises(lb.LeaderboardError, match="half-block search needs the model in memory"):
        lb.for_model(replace(settings, half_blocks=True), sm)
    with pytest.raises(lb.LeaderboardError, match="avss cannot be computed"):
        lb.for_model(replace(settings, metrics=("avss", "linearity")), sm)
    assert lb.for_model(settings, lm)[0] == settings
