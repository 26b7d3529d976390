"""AVSS, ID profiles, projections and the command line on the real bundled model, with small windows.

8 windows of 64 tokens keep every test under a minute on two CPU cores; what they check does not depend on size.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.capture.workspace import Calibration, Workspace
from analysis.metrics import registry
from analysis.model.loading import derived_model
from analysis.profiles.avss import NEAR_ZERO_SPARSITY, AVSSSettings, avss_result
from analysis.profiles.intrinsic_dimension import (
    IDSettings,
    id_profile_result,
    workspace_for,
)
from analysis.profiles.projections import ProjectionSettings, projection

pytestmark = pytest.mark.slow

SMALL = Calibration(n_windows=8, window_len=64)
SMALL_ID = IDSettings(n_subsets=4, max_points=None)


@pytest.fixture(scope="module")
def small_ws(lm, alice):
    return Workspace(lm=lm, text=alice, calibration=SMALL)


def test_avss_residual_sparsity_is_near_zero_and_flagged(small_ws):
    res = avss_result(small_ws, AVSSSettings(site="residual"))
    t = res.table
    assert len(t) == small_ws.n_blocks == 30
    assert (t["n_tokens"] == 8 * 64).all()
    assert (t["sparsity"] < NEAR_ZERO_SPARSITY).all()
    assert len(res.near_zero) == 30  # the page flags every block
    assert np.all(np.isfinite(t["avss"])) and (t["avss"] > 0).all()
    assert t["navss"].sum() == pytest.approx(1.0)
    relative = avss_result(small_ws, AVSSSettings(site="residual", eps=0.01, relative=True))
    assert (relative.table["sparsity"] > 1e-3).all() and relative.near_zero == []


def test_avss_mlp_site_has_sparsity(small_ws):
    res = avss_result(small_ws, AVSSSettings(site="mlp"))
    t = res.table
    assert (t["sparsity"] > 0).all() and not t["sparsity_zero"].any()
    assert (t["n_entries"] == 8 * 64 * small_ws.lm.config.intermediate_size).all()
    again = avss_result(small_ws, AVSSSettings(site="mlp"))
    assert again.outcome.status == "hit"
    pd.testing.assert_frame_equal(again.table, t)


def test_avss_attention_site_and_registered_metric(small_ws):
    att = avss_result(small_ws, AVSSSettings(site="attention"))
    assert len(att.table) == 30 and np.all(np.isfinite(att.table["avss"]))
    m = registry.get("avss")
    scores = m.scores(small_ws)
    assert m.cached(small_ws)
    np.testing.assert_allclose(scores, avss_result(small_ws, AVSSSettings(site="mlp")).table["avss"])
    k3 = m.suggest(small_ws, 3, scores=scores)
    assert k3 == sorted(np.argsort(scores, kind="stable")[:3].tolist())


def test_id_profile_on_the_real_model(small_ws):
    prof = id_profile_result(small_ws, SMALL_ID)
    t = prof.table
    assert len(t) == 31 and prof.errors == {}
    for e in ("twonn", "gride", "corr"):
        v = t[f"id_{e}"].to_numpy()
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(t[f"id_{e}_std"]))
    twonn = t["id_twonn"].to_numpy()
    assert np.all((twonn > 1.0) & (twonn < 60.0)), twonn  # far below the width 576
    peak = prof.peak("twonn")
    assert peak is not None and 1 <= peak[0] <= 30
    assert not prof.sweep.empty and np.all(np.isfinite(prof.sweep["id"]))
    print("\nTwoNN profile (8x64 alice, 4 subsets):", np.round(twonn, 1).tolist(), "|", prof.shape("twonn"))


@pytest.mark.parametrize("state", [1, 8, 15, 22, 30])
def test_headline_twonn_is_scikit_dimensions_twonn_of_the_whole_distinct_cloud(ws, state):
    """The headline is the estimate of the cloud itself, not a mean over subsets: on the default workspace (alice,
    32 x 128 tokens, 4096 rows per state) it equals scikit-dimension's TwoNN on the same distinct rows."""
    import skdim

    from analysis.profiles.intrinsic_dimension import (
        IDSettings,
        distinct_cloud,
        state_id,
    )

    c = ws.calibration
    cloud = ws.capture().all_token_cloud(state, n_max=c.n_max, seed=c.seed, exclude_first=c.exclude_first)
    settings = IDSettings()
    X, _, _ = distinct_cloud(cloud, settings)
    r = state_id(cloud, settings)
    assert r["n_distinct"] == X.shape[0] > 3000
    theirs = float(skdim.id.TwoNN().fit(X).dimension_)
    assert r["whole"]["twonn"] == pytest.approx(theirs, rel=1e-6)
    assert r["subset_size"] == X.shape[0] // 4 and r["twonn"].shape == (4,)
    print(
        f"\nh{state}: whole-cloud TwoNN {r['whole']['twonn']:.2f} (skdim {theirs:.2f}); subsets of "
        f"{r['subset_size']}: mean {r['twonn'].mean():.2f}"
    )


def test_id_profile_of_a_pruned_variant_shares_the_depth_axis(lm, small_ws):
    from analysis.changes.remove_blocks import remove_blocks

    pruned = derived_model(lm, remove_blocks(lm.model, [12, 13]), "minus 12,13")
    assert pruned.n_blocks == 28 and pruned.fingerprint != lm.fingerprint
    prof = id_profile_result(workspace_for(small_ws, pruned), SMALL_ID)
    assert len(prof.table) == 29 and prof.n_blocks == 28
    assert prof.table["depth"].iloc[-1] == 1.0 and np.all(np.isfinite(prof.table["id_twonn"]))
    base = id_profile_result(small_ws, SMALL_ID)
    # blocks before the cut are untouched: the first 13 states are the same clouds
    np.testing.assert_allclose(prof.table["id_twonn"][:13], base.table["id_twonn"][:13], rtol=1e-6)


def test_projections_pca_and_umap(small_ws):
    pca = projection(small_ws, 15, ProjectionSettings(method="pca", n_points=300))
    assert len(pca.points) == 300 and {"x", "y", "token", "window", "position", "frequency"} <= set(pca.points)
    assert np.all(np.isfinite(pca.points[["x", "y"]].to_numpy()))
    hidden = projection(small_ws, 15, ProjectionSettings(method="pca", n_points=300, drop_first=1))
    assert (hidden.points["position"] >= 1).all()
    assert hidden.explained[0] < pca.explained[0]  # the attention sink no longer fills PC1
    umap = projection(small_ws, 15, ProjectionSettings(method="umap", n_components=3, n_points=200))
    assert umap.points[["x", "y", "z"]].shape == (200, 3) and umap.outcome.status == "computed"
    assert (
        projection(small_ws, 15, ProjectionSettings(method="umap", n_components=3, n_points=200)).outcome.status
        == "hit"
    )


def test_cli_metrics_avss_and_id(tmp_path, lm):
    from analysis.cli.main import main

    out = tmp_path / "geometry"
    rc = main(
        [
            "metrics",
            "--metrics",
            "avss,id",
            "--sequences",
            "8",
            "--seq-len",
            "64",
            "--avss-site",
            "residual",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    layers = pd.read_csv(out / "layers.csv")
    assert list(layers.columns) == ["block", "avss", "avss_variance", "avss_sparsity"] and len(layers) == 30
    assert np.all(np.isfinite(layers[["avss", "avss_variance", "avss_sparsity"]].to_numpy()))
    states = pd.read_csv(out / "states.csv")
    assert len(states) == 31
    for col in ("state", "id_twonn", "id_twonn_std", "id_gride", "id_corr"):
        assert col in states.columns
    assert states[["id_twonn", "id_gride", "id_corr"]].notna().all().all()
    run = json.loads((out / "run.json").read_text())
    assert run["avss"]["site"] == "residual" and len(run["avss"]["near_zero_sparsity_blocks"]) == 30
    assert run["intrinsic_dimension"]["width"] == 576 and run["metrics"]["avss"]["redundant_when"] == "low"
    assert main(["metrics", "--metrics", "nope", "--out", str(tmp_path / "x")]) == 2


def test_gemma_profile_when_installed(alice):
    from analysis.model.extra_models import gemma_gguf_path, gemma_installed

    if not gemma_installed():
        pytest.skip("Gemma-3-270M is optional (make gemma)")
    from analysis.model.loading import ModelSpec, load_model

    gemma = load_model(ModelSpec(source=str(gemma_gguf_path()), device="cpu"))
    assert gemma.n_blocks == 18 and gemma.width == 640
    ws = Workspace(lm=gemma, text=alice, calibration=SMALL)
    prof = id_profile_result(ws, SMALL_ID)
    assert len(prof.table) == 19 and prof.errors == {}
    assert np.all(np.isfinite(prof.table["id_twonn"]))
    assert avss_result(ws, AVSSSettings(site="mlp")).table["sparsity"].gt(0).all()
    print("\nGemma TwoNN profile:", np.round(prof.table["id_twonn"], 1).tolist(), "|", prof.shape("twonn"))
