"""Zigzag and per-layer persistence on the real bundled model, the registered metric, and the command line.

Small settings keep it quick: the last token of 120 windows of 32 tokens of alice (one capture, ~20-40 s on a
loaded 2-core machine, shared by every test of the session through the session cache). The paper-sized default
(500 windows) runs in ``test_default_zigzag_of_the_bundled_model`` only with ``LAYERSCOPE_TEST_FULL_ZIGZAG=1``
(206 s on the loaded 2-core machine, mostly the capture); ``bench/topology.py`` measures it too.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis.cli.main import main as cli_main
from analysis.metrics import registry
from analysis.profiles import topology as topo
from analysis.texts import TextError, text_from_string

pytestmark = pytest.mark.slow

SMALL = topo.ZigzagSettings(n_windows=120, window_len=32)


@pytest.fixture(scope="module")
def small_zigzag(lm, alice):
    return topo.compute_zigzag(lm, alice, SMALL)


def test_zigzag_of_the_real_model_gives_betti_curves_and_a_unit_diagonal(lm, alice, small_zigzag):
    r = small_zigzag
    assert r.n_layers == lm.n_blocks + 1 == 31
    assert r.info["n_points"] == 120 and r.info["n_simplices"] > 1000
    view = topo.describe_zigzag(r, p=1)
    assert view.betti.shape == (3, 31)  # H0, H1, H2 (m = 3: H3 is the truncation artefact, left out)
    assert np.all(view.betti[0] >= 1)
    beta1 = view.betti[1]
    assert beta1.sum() > 0
    diag = np.diag(view.Z)
    assert np.all(diag[beta1 > 0] == 1.0) and np.all(diag[beta1 == 0] == 0.0)
    assert np.all((view.Z >= 0) & (view.Z <= 1))
    assert view.births.sum() == pytest.approx(1.0)
    assert np.all((view.zbar >= 0) & (view.zbar <= 1))
    s9, s8 = view.suggestions[0.9]["blocks"], view.suggestions[0.8]["blocks"]
    assert s9 and set(s9) <= set(s8) and max(s8) <= lm.n_blocks - 2  # never the block feeding the final norm
    # a rerun reads the cache, the estimate counted what the zigzag built
    again = topo.compute_zigzag(lm, alice, SMALL)
    assert again.outcome.status == "hit"
    pd.testing.assert_frame_equal(again.bars, r.bars)
    est = topo.zigzag_estimate(lm, alice, SMALL)
    assert est.n_distinct == r.info["n_simplices"] and est.n_events == r.info["n_events"]
    assert np.array_equal(est.per_layer, r.simplices) and not est.too_large


def test_registered_metric_scores_blocks_by_zbar_and_uses_the_09_rule(ws, lm, alice, small_zigzag):
    metric = registry.get("zigzag_persistence")
    assert metric.redundant_when == "high" and metric.group == "topology"
    params = {"windows": SMALL.n_windows}
    assert metric.cached(ws, params)
    view = topo.describe_zigzag(small_zigzag)
    scores = metric.scores(ws, params)
    assert scores.shape == (lm.n_blocks,)
    np.testing.assert_allclose(scores, view.zbar[1:])  # block b <- state b + 1
    assert metric.suggest(ws, 0, params) == view.suggestions[0.9]["blocks"]
    s9 = view.suggestions[0.9]["blocks"]
    assert metric.suggest(ws, 2, params) == sorted(sorted(s9, key=lambda b: (-scores[b], b))[:2])  # k is a cap


def test_text_too_short_for_the_windows_says_how_many_tokens_it_has(lm):
    short = text_from_string("Alice was beginning to get very tired. " * 30, name="short")
    with pytest.raises(TextError, match=r"has \d+ tokens; 500 windows of 32 tokens need 16000"):
        topo.compute_zigzag(lm, short, topo.ZigzagSettings())
    with pytest.raises(TextError, match="tokens"):
        topo.layer_persistence(_Ws(lm, short), topo.PersistenceSettings(cloud="last"))


class _Ws:
    def __init__(self, lm, text):
        from analysis.capture.workspace import Calibration

        self.lm, self.text, self.calibration, self.n_states = lm, text, Calibration(), lm.n_blocks + 1

    def key(self):
        return {"model": self.lm.fingerprint, "text": self.text.sha256, **self.calibration.to_dict()}


def test_cli_writes_the_four_files(tmp_path, capsys, small_zigzag):
    out = tmp_path / "topology"
    code = cli_main(
        [
            "topology",
            "--model",
            "default",
            "--device",
            "cpu",
            "--text",
            "alice",
            "--sequences",
            "120",
            "--seq-len",
            "32",
            "--cloud",
            "last",
            "--points",
            "100",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    bars = pd.read_csv(out / "zigzag_bars.csv")
    assert list(bars.columns) == ["dim", "birth_index", "death_index", "birth_layer", "death_layer"]
    assert len(bars) > 0 and set(bars["dim"]) <= {0, 1, 2}
    assert (bars["birth_layer"] < bars["death_layer"]).all()
    layers = pd.read_csv(out / "zigzag_layers.csv")
    assert {"state", "betti_0", "betti_1", "z1_mean"} <= set(layers.columns) and len(layers) == 31
    assert layers["state"].tolist() == list(range(31))
    sug = json.loads((out / "suggestion.json").read_text())
    view = topo.describe_zigzag(small_zigzag)
    assert sug["remove_blocks"] == sug["thresholds"]["0.9"]["blocks"] == view.suggestions[0.9]["blocks"]
    assert sug["thresholds"]["0.8"]["blocks"] == view.suggestions[0.8]["blocks"]
    assert sug["settings"]["n_windows"] == 120 and sug["settings"]["k"] == 4 and sug["settings"]["max_dim"] == 3
    assert sug["persistence"]["cloud"] == "last" and sug["persistence"]["n_points"] == 100
    pers = pd.read_csv(out / "persistence_layers.csv")
    assert list(pers.columns[:5]) == [
        "state",
        "total_persistence_h0",
        "entropy_h0",
        "total_persistence_h1",
        "entropy_h1",
    ]
    assert len(pers) == 31 and (pers["total_persistence_h0"] > 0).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sequences", "3"], "at least k + 1 = 5 windows"),
        (["--max-dim", "5"], "between 1 and 4"),
        (["--p", "3"], "--p must be between 0 and m - 1 = 2"),
    ],
)
def test_cli_refuses_bad_settings_before_loading_the_model(tmp_path, capsys, extra, message):
    try:  # a setting checked at parse time ends in argparse's exit (status 2), the others in main's return
        code = cli_main(["topology", "--out", str(tmp_path / "x"), *extra])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "[model]" not in err


def test_cli_warns_about_an_exploding_setting_and_can_stop_at_the_estimate(tmp_path, capsys, small_zigzag):
    out = tmp_path / "estimate"
    code = cli_main(
        [
            "topology",
            "--device",
            "cpu",
            "--sequences",
            "120",
            "--k",
            "14",
            "--max-dim",
            "4",
            "--estimate-only",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: This zigzag is large" in err
    est = json.loads((out / "estimate.json").read_text())
    assert est["estimate"]["too_large"] and est["estimate"]["seconds"] > topo.ZIGZAG_WARN_SECONDS
    assert not (out / "zigzag_bars.csv").exists()


def test_cli_refuses_a_text_too_short(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Alice was beginning to get very tired. " * 30)
    assert cli_main(["topology", "--device", "cpu", "--text", str(short), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error: short.txt (upload) has" in err and "500 windows of 32 tokens need 16000" in err


@pytest.mark.skipif(
    not os.environ.get("LAYERSCOPE_TEST_FULL_ZIGZAG"),
    reason="paper-sized default (500 windows): set LAYERSCOPE_TEST_FULL_ZIGZAG=1 (~3.5 min)",
)
def test_default_zigzag_of_the_bundled_model(ws, lm, alice):
    r = topo.compute_zigzag(lm, alice)
    assert r.info["n_points"] == 500 and 15_000 < r.info["n_simplices"] < 40_000
    view = topo.describe_zigzag(r)
    assert view.suggestions[0.9]["blocks"] and r.settings == topo.ZigzagSettings()
    metric = registry.get("zigzag_persistence")
    assert metric.cached(ws)
    assert metric.suggest(ws, 0) == view.suggestions[0.9]["blocks"]
