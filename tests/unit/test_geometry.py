"""analysis.profiles.avss without the real model: AVSS hooks with an accounting mask on a tiny Llama, suggestion rules,
bad clouds in the ID pipeline (clear messages, never NaN on a chart), the shared neighbour search, figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import cache
from analysis.methods import intrinsic_dimension as idm
from analysis.methods.avss import AVSSAccumulator
from analysis.model.loading import LoadedModel, ModelSpec
from analysis.profiles.avss import (
    AVSSSettings,
    count_mask,
    run_avss,
    suggest_avss,
    table_from_scores,
)
from analysis.profiles.intrinsic_dimension import (
    IDSettings,
    _profile_from_arrays,
    id_profile_result,
    state_id,
)
from analysis.profiles.projections import token_text
from components import geometry_figures as gf

# ---------------------------------------------------------------------------------------------------------------
# AVSS through the workspace path on a tiny Llama


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
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
    model = transformers.LlamaForCausalLM(config).eval()
    return LoadedModel(
        model=model,
        tokenizer=None,
        spec=ModelSpec(),
        name="tiny",
        fingerprint="tiny",
        load_seconds=0.0,
        source_kind="derived",
    )


def _windows() -> np.ndarray:
    return np.random.default_rng(1).integers(1, 64, size=(5, 12))


@pytest.mark.parametrize("exclude_first", [0, 2])
def test_run_avss_residual_matches_hidden_states(tiny_lm, exclude_first) -> None:
    w = _windows()
    got = run_avss(tiny_lm, w, AVSSSettings(site="residual"), exclude_first=exclude_first, batch_size=2)
    with torch.no_grad():
        hs = tiny_lm.model.base_model(input_ids=torch.as_tensor(w), output_hidden_states=True).hidden_states
    ref = AVSSAccumulator(3, eps=1e-5)
    mask = count_mask(w.shape[0], w.shape[1], exclude_first)
    for b in range(3):
        ref.update(b, hs[b + 1], mask)
    want = ref.result()
    cols = ["variance", "sparsity", "avss", "n_tokens", "n_small"]
    # the last hidden state has the final norm applied; blocks 0 and 1 must match exactly
    pd.testing.assert_frame_equal(got.loc[:1, cols], want.loc[:1, cols], rtol=1e-5)
    assert got["n_tokens"].tolist() == [5 * (12 - exclude_first)] * 3


def test_run_avss_mlp_relative_and_exclusion(tiny_lm) -> None:
    w = _windows()
    a = run_avss(tiny_lm, w, AVSSSettings(site="mlp", eps=0.05, relative=True), batch_size=5)
    b = run_avss(tiny_lm, w, AVSSSettings(site="mlp", eps=0.05, relative=True), batch_size=1)
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)  # streaming: batching does not matter
    assert (a["sparsity"] > 0).all() and (a["n_entries"] == 5 * 12 * 48).all()
    with pytest.raises(ValueError, match="leaves no token"):
        run_avss(tiny_lm, w, AVSSSettings(site="mlp"), exclude_first=12)


def test_avss_settings_validation() -> None:
    assert AVSSSettings.from_params({"relative": True}).eps == 1e-2
    assert AVSSSettings.from_params({}).eps == 1e-5 and AVSSSettings.from_params({}).site == "mlp"
    with pytest.raises(ValueError, match="site"):
        AVSSSettings(site="logits")
    with pytest.raises(ValueError, match="positive"):
        AVSSSettings(eps=0.0)


def test_suggest_avss_share_k_and_both() -> None:
    t = table_from_scores([5.0, 1.0, 2.0, 100.0, 3.0])  # sorted blocks 1, 2, 4, 0, 3; cumulative x/111: 1, 3, 6, 11
    assert suggest_avss(t, share=0.05) == [1, 2]  # 6/111 = 0.054 > 0.05
    assert suggest_avss(t, share=0.06) == [1, 2, 4]
    assert suggest_avss(t, share=None, k=2) == [1, 2]
    assert suggest_avss(t, share=0.25, k=2) == [1, 2]  # k caps the share
    assert suggest_avss(t, share=0.02, k=4) == [1]  # the share caps k
    with pytest.raises(ValueError):
        suggest_avss(t, share=None, k=None)


def test_share_rule_is_exact() -> None:
    t = table_from_scores([5.0, 1.0, 2.0, 100.0, 3.0])
    # cumulative NAVSS in sorted order: 1/111, 3/111, 6/111, 11/111, 1
    assert suggest_avss(t, share=3 / 111) == [1, 2]
    assert suggest_avss(t, share=0.05) == [1, 2]
    assert suggest_avss(t, share=6 / 111) == [1, 2, 4]


def test_registered_avss_rule_uses_k_as_cap() -> None:
    from analysis.metrics import registry

    m = registry.get("avss")
    assert m.redundant_when == "low" and m.group == "avss"
    scores = np.array([5.0, 1.0, 2.0, 100.0, 3.0])
    assert m.suggest(None, 2, scores=scores) == [1, 2]
    assert m.suggest(None, 10, scores=scores) == [0, 1, 2, 4]  # 11/111 ≤ 25 %, block 3 would pass it
    assert "id" in registry.group_names() and "avss" in registry.group_names()


# ---------------------------------------------------------------------------------------------------------------
# intrinsic dimension: known answer, bad clouds, shared neighbour search


def _plane(n: int, k: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame, _ = np.linalg.qr(rng.standard_normal((width, k)))
    return (rng.uniform(size=(n, k)) @ frame.T).astype(np.float32)


def test_state_id_on_a_plane_is_two() -> None:
    r = state_id(_plane(1200, 2, 60), IDSettings(n_subsets=4, max_points=None))
    for e in ("twonn", "gride"):
        assert r[e].shape == (4,)
        assert abs(r[e].mean() - 2.0) < 0.2, (e, r[e])
    assert r["ks"] == [1, 2, 4, 8, 16, 32] and r["sweep"].shape == (6, 4)
    assert np.all(np.isfinite(r["sweep"]))


def test_shared_neighbour_search_gives_the_same_estimates() -> None:
    X = idm._prepare(_plane(400, 3, 40, seed=3) + 0.01 * np.random.default_rng(0).standard_normal((400, 40)))
    r = idm.knn_distances(X, 16)
    assert idm.twonn_from_knn(r) == pytest.approx(idm.twonn(X), rel=1e-12)
    assert idm.twonn_from_knn(r, fit="mle") == pytest.approx(idm.twonn(X, fit="mle"), rel=1e-12)
    assert idm.gride_sweep_from_knn(r, [4])["id"].iloc[0] == pytest.approx(idm.gride(X, k=4), rel=1e-12)
    pd.testing.assert_frame_equal(idm.gride_sweep_from_knn(r, [1, 2, 4, 8]), idm.gride_sweep(X, ks=[1, 2, 4, 8]))
    with pytest.raises(ValueError, match="distinct"):
        idm.twonn_from_knn(np.zeros((10, 2)))


def test_knn_exact_with_a_massive_outlier() -> None:
    """An attention-sink-like point 10⁴ times farther than the rest: the float32 bound certifies nothing, the
    float64 stage must still return exact neighbours (and quickly: no per-row scan)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 64)).astype(np.float32)
    X[0] *= 1e4
    X[1] = X[0] + 0.01  # two far points, each the other's nearest neighbour
    X[2] = 4.0 * X[3]  # a far-ish point ...
    X[4] = X[2] * 0.999  # ... with a bulk-side point right beside it
    X[10:40] *= 1e3  # a whole group of far points (one per window in a real capture)
    for k in (1, 6, 40):
        got = idm.knn_distances(X, k)
        D = np.sqrt(((X[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(D, np.inf)
        np.testing.assert_allclose(got, np.sort(D, axis=1)[:, :k], rtol=1e-6)


def test_knn_exact_on_near_duplicates_takes_the_float64_path() -> None:
    """Tiny neighbour distances against large norms (shallow LLM layers): the float32 probe fails, later blocks
    start in float64; the distances must still be exact."""
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((60, 48)) * 100.0
    X = (np.repeat(centres, 10, axis=0) + 1e-3 * rng.standard_normal((600, 48))).astype(np.float32)
    got = idm.knn_distances(X, 4)
    Y = X.astype(np.float64)
    D = np.sqrt(((Y[:, None, :] - Y[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    np.testing.assert_allclose(got, np.sort(D, axis=1)[:, :4], rtol=1e-5)


@pytest.mark.parametrize(
    ("cloud", "message"),
    [
        (np.random.default_rng(0).standard_normal((15, 8)), "at least 20"),
        (np.ones((100, 8)), "constant cloud"),
        (np.repeat(np.random.default_rng(0).standard_normal((30, 8)), 5, axis=0), "distinct points"),
    ],
)
def test_state_id_bad_clouds_give_clear_messages(cloud, message) -> None:
    with pytest.raises(ValueError, match=message):
        state_id(cloud, IDSettings(n_subsets=4, max_points=None))


def test_state_id_with_duplicates_uses_distinct_points() -> None:
    X = _plane(800, 2, 30, seed=5)
    doubled = np.concatenate([X, X[:300]])
    r = state_id(doubled, IDSettings(n_subsets=4, max_points=None))
    assert r["n_points"] == 1100 and r["n_distinct"] == 800
    assert abs(r["twonn"].mean() - 2.0) < 0.25


@dataclass
class _FakeLM:
    name: str = "fake"
    width: int = 30


@dataclass
class _FakeWorkspace:
    clouds: list
    lm: _FakeLM = field(default_factory=_FakeLM)

    @property
    def n_states(self):
        return len(self.clouds)

    @property
    def n_blocks(self):
        return len(self.clouds) - 1

    @property
    def calibration(self):
        from analysis.capture.workspace import Calibration

        return Calibration()

    def n_cloud_tokens(self):
        return max(len(c) for c in self.clouds)

    def cloud_reader(self, progress=None):
        return self.clouds

    def result(self, kind, params, compute, refresh=False):
        return cache.cached(kind, {"fake": id(self), **params}, compute, refresh=refresh)


def test_profile_with_a_bad_state_has_no_nan_on_the_chart() -> None:
    clouds = [_plane(400, 2, 30, 1), np.ones((400, 30), dtype=np.float32), _plane(400, 3, 30, 2), _plane(400, 2, 30, 3)]
    prof = id_profile_result(_FakeWorkspace(clouds), IDSettings(n_subsets=4, max_points=None))
    assert set(prof.errors) == {1} and "constant" in prof.errors[1]
    assert prof.table["id_twonn"].isna().tolist() == [False, True, False, False]
    assert prof.valid("twonn")["state"].tolist() == [0, 2, 3]
    assert prof.peak("twonn")[0] == 2 and prof.final("twonn")[0] == 3
    assert set(prof.sweep["state"]) == {0, 2, 3}
    fig = gf.id_profile_chart([("fake", prof)], ["twonn", "gride", "corr"], {}, band="std")
    for trace in fig.data:
        ys = np.asarray(trace.y, dtype=float)
        assert np.all(np.isfinite(ys)), trace.name
    fig = gf.gride_sweep_chart(prof.sweep, [0, 1, 2])
    assert all(np.all(np.isfinite(np.asarray(t.y, dtype=float))) for t in fig.data)
    again = id_profile_result(_FakeWorkspace(clouds), IDSettings(n_subsets=4, max_points=None))
    assert again.outcome.status in ("hit", "computed")


def test_profile_refuses_impossible_settings() -> None:
    small = _FakeWorkspace([_plane(60, 2, 10)] * 3)
    with pytest.raises(ValueError, match="cannot make 4 disjoint subsets"):
        id_profile_result(small, IDSettings(n_subsets=4, max_points=None))
    with pytest.raises(ValueError, match="max_points"):
        IDSettings(max_points=5)


def test_profile_from_arrays_shape_text() -> None:
    n = 5
    ids = np.array([[5, 5], [9, 9], [14, 14], [8, 8], [6, 6]], dtype=float)
    arrays = {f"subsets_{e}": ids for e in ("twonn", "gride", "corr")}
    arrays.update(
        n_points=np.full(n, 100),
        n_distinct=np.full(n, 100),
        scale=np.ones(n),
        sweep=np.full((n, 1, 2), 3.0),
        radius=np.ones((n, 1, 2)),
    )
    prof = _profile_from_arrays(
        arrays, {"n_blocks": 4, "width": 16, "errors": {}}, IDSettings(n_subsets=2, sweep_ks=(1,)), None
    )
    assert prof.peak() == (2, 14.0) and prof.final() == (4, 6.0)
    assert prof.shape().startswith("expansion–contraction")
    rising = dict(arrays, subsets_twonn=np.array([[30, 30], [2, 2], [5, 5], [8, 8], [9, 9]], dtype=float))
    prof = _profile_from_arrays(
        rising, {"n_blocks": 4, "width": 16, "errors": {}}, IDSettings(n_subsets=2, sweep_ks=(1,)), None
    )
    assert prof.peak() == (4, 9.0)  # h0, the embedding lookup, is not a peak candidate
    assert prof.peak(first_state=0) == (0, 30.0)
    assert prof.shape().startswith("expansion without contraction")
    assert prof.table["depth"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# figures and small helpers


def test_block_bars_drop_non_finite_and_non_positive_on_log() -> None:
    t = pd.DataFrame({"block": [0, 1, 2, 3], "avss": [1.0, np.nan, 0.0, np.inf]})
    fig = gf.block_bars(t, "avss", "t", "y", flagged=[0], log=True)
    assert list(fig.data[0].x) == [0]
    assert all(np.all(np.isfinite(np.asarray(tr.y, dtype=float))) for tr in fig.data)


def test_token_text_escapes() -> None:
    class Tok:
        def decode(self, ids):
            return {1: "\n", 2: " the", 3: "x", 4: ""}[ids[0]]

    assert token_text(Tok(), [1, 2, 3, 4, 2]) == ["\\n", "·the", "x", "∅", "·the"]


class _Tok:
    def decode(self, ids):
        return f"t{ids[0]}"


@dataclass
class _FakeProjectionWorkspace:
    """32 windows x 16 tokens; state 0 constant, state 1 a noisy plane."""

    lm: object = field(default_factory=lambda: type("LM", (), {"tokenizer": _Tok(), "name": "fake", "width": 8})())

    @property
    def calibration(self):
        from analysis.capture.workspace import Calibration

        return Calibration(n_windows=32, window_len=16)

    n_states = 2

    def capture(self, progress=None):
        rng = np.random.default_rng(0)
        states = np.stack([np.ones((32, 16, 8), dtype=np.float32), rng.standard_normal((32, 16, 8)).astype(np.float32)])
        tokens = rng.integers(0, 50, size=(32, 16))
        from analysis.methods.clouds import all_token_cloud

        cap = type("Cap", (), {})()
        cap.tokens = tokens
        cap.all_token_cloud = lambda s, n_max=None, seed=0, exclude_first=0: all_token_cloud(
            states, s, n_max=n_max, seed=seed, exclude_first=exclude_first
        )
        return cap

    def cloud_reader(self, progress=None):
        c, cap = self.calibration, self.capture()
        return [cap.all_token_cloud(s, n_max=c.n_max, seed=c.seed, exclude_first=c.exclude_first) for s in range(2)]

    def result(self, kind, params, compute, refresh=False):
        return cache.cached(kind, {"fake-projection": 1, **params}, compute, refresh=refresh)


def test_projection_of_a_constant_state_is_a_message_not_nan() -> None:
    from analysis.profiles.projections import ProjectionSettings, projection

    ws = _FakeProjectionWorkspace()
    with pytest.raises(ValueError, match="fewer than 4 distinct points"):
        projection(ws, 0, ProjectionSettings(method="pca", n_points=100))
    p = projection(ws, 1, ProjectionSettings(method="pca", n_components=3, n_points=100, drop_first=1))
    assert len(p.points) == 100 and (p.points["position"] >= 1).all()
    assert np.all(np.isfinite(p.points[["x", "y", "z"]].to_numpy())) and np.all(np.isfinite(p.explained))
    assert set(p.points["token"]) <= {f"t{i}" for i in range(50)}
    assert (p.points["frequency"] >= 1).all()
    fig = gf.projection_scatter(p.points, "log_frequency", "log10 count", "t", n_components=3)
    assert len(fig.data) == 1
    with pytest.raises(ValueError, match="state must be"):
        projection(ws, 5)
