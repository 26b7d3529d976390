"""Every long command says how long it will take before it starts, in one format and one place
(``cli.common.announce_estimate``), from work measured on this machine now; ``bench/estimates.py`` compares the
estimates with the time taken."""

import json

import pytest

from analysis.changes import low_rank
from analysis.cli.common import ESTIMATE_LOG_ENV, announce_estimate
from tests.unit.test_geometry import tiny_lm  # noqa: F401  (the fixture: a tiny Llama, 3 blocks, width 32, MLP 48)


def test_announce_prints_one_line_and_logs_for_the_bench(tmp_path, monkeypatch, capsys):
    log = tmp_path / "estimates.jsonl"
    monkeypatch.setenv(ESTIMATE_LOG_ENV, str(log))
    announce_estimate("compress", 95.0, "why")
    announce_estimate("capture", 0.0)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[compress] estimate: about 1 min 35 s (why)", "[capture] estimate: about 0.0 s"]
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["action"], r["seconds"]) for r in rows] == [("compress", 95.0), ("capture", 0.0)]
    assert all(r["time"] > 0 for r in rows)


def test_low_rank_estimate_times_each_shape_once(tiny_lm, monkeypatch):  # noqa: F811
    lm = tiny_lm
    timed = []
    real = low_rank._time_one_matrix

    def spy(m, n, k, method, damping):
        timed.append((m, n, k, method))
        return real(m, n, k, method, damping)

    monkeypatch.setattr(low_rank, "_time_one_matrix", spy)
    est = low_rank.estimate_seconds(lm, {"method": "svd-llm", "ratio": 0.2, "targets": "mlp"})
    assert est["matrices"] == 9 and est["statistics_s"] == 0.0  # no workspace: no statistics pass
    # gate and up are 48 × 32, down 32 × 48: two shapes, each timed once, as SVD-LLM runs them
    assert sorted((m, n) for m, n, _, _ in timed) == [(32, 48), (48, 32)] and {t[3] for t in timed} == {"svd_llm"}
    assert est["seconds"] == pytest.approx(est["decompositions_s"]) and est["seconds"] > 0


def test_metric_groups_estimate_their_own_work(ws):
    """The default groups of ``metrics`` say what they will cost (0 when cached); the bundled workspace's linearity
    group is timed on random clouds of its size."""
    from analysis.metrics.registry import group_estimate

    for g in ("linearity", "avss", "damage", "id", "topology"):
        assert group_estimate(g) is not None, g
    s = group_estimate("linearity")(ws, None)
    assert s >= 0.0 and (s == 0.0) == ws.has_result("linearity", {"v": 1})
    from analysis.profiles.intrinsic_dimension import has_id_profile

    s = group_estimate("id")(ws, None)  # one state's estimators timed on a random cloud of the workspace's size
    assert s >= 0.0 and (s == 0.0) == has_id_profile(ws)


def test_a_finished_board_is_estimated_as_reading_only(tmp_path, monkeypatch, alice):
    """After the board ran, its estimate counts no work, also when the angular distances (which choose ReplaceMe's
    runs) are not one of the board's metrics."""
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.metrics.damage import SearchSettings
    from analysis.model.loading import ModelSpec, load_model
    from analysis.search import leaderboard as lb
    from tests.families import tiny_model_dir

    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "cache"))
    lm = load_model(ModelSpec(source=str(tiny_model_dir("llama", tmp_path / "llama")), device="cpu"))
    ws = Workspace(lm=lm, text=alice, calibration=Calibration(n_windows=8, window_len=64))
    settings = lb.LeaderboardSettings(
        k_max=2,
        search=SearchSettings(text="lcet10", n_tokens=128, context=64),
        evaluation=lb.default_eval_settings(text="asyoulik", n_tokens=256, context=128, stride=64),
        metrics=("block_influence", "measured_damage"),
        random_samples=1,
    )
    probe = {"seconds_per_work": 1e-9, "seconds": 0.1, "seconds_per_token": 1e-4}
    assert lb.estimate(ws, settings, probe=probe)["work"] > 0
    rows = lb.run(ws, settings).rows
    assert {"replaceme", "replaceme_remove"} <= set(rows.rule)
    warm = lb.estimate(ws, settings, probe=probe)
    assert warm["work"] == 0 and warm["evaluations"] == 0 and warm["scans"] == 0, warm
