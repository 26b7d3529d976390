"""Known answers for the dashboard's honesty helpers: the timed estimate probe, the interleaved timing, the log-axis
labels, the report's destination check (never overwrite without asking) and its figures' colours."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from analysis import plots
from analysis.capture import estimate
from analysis.evaluation import perplexity as ev
from analysis.workflow.report import ReportExists, check_destination, write_report

# ----------------------------------------------------------------------------------------------------------------
# the estimate probe


def test_probe_factor_is_measured_over_predicted_and_cached(monkeypatch):
    calls = []

    def fake_probe():
        calls.append(1)
        return {"measured_s": 0.3, "predicted_s": 0.1, "times_s": [0.3]}

    monkeypatch.setitem(estimate._PROBE_KINDS, "fake", fake_probe)
    monkeypatch.setattr(estimate, "_PROBES", {})
    sp = estimate.machine_speed("fake")
    assert sp["factor"] == pytest.approx(3.0) and sp["kind"] == "fake"
    assert estimate.calibrated_seconds(10.0, "fake") == pytest.approx(30.0)  # scaled by the probe
    estimate.machine_speed("fake")
    assert len(calls) == 1  # cached per process
    estimate.machine_speed("fake", max_age=0.0)  # too old: probed again
    assert len(calls) == 2
    assert "3.0× slower" in estimate.speed_note("fake")


def test_probe_factor_is_clipped(monkeypatch):
    monkeypatch.setitem(estimate._PROBE_KINDS, "fake", lambda: {"measured_s": 1e3, "predicted_s": 1e-3, "times_s": []})
    monkeypatch.setattr(estimate, "_PROBES", {})
    assert estimate.machine_speed("fake")["factor"] == 50.0


def test_real_rips_probe_is_short_and_follows_the_load():
    t0 = time.perf_counter()
    sp = estimate.machine_speed("rips", refresh=True)
    assert time.perf_counter() - t0 < 30  # imports included; the probe itself is a few tenths of a second
    assert sp["predicted_s"] == pytest.approx(0.6 * (estimate.PROBE_POINTS / 1000) ** 2.3)
    assert len(sp["times_s"]) == estimate.PROBE_REPEATS and 0.2 <= sp["factor"] <= 50
    assert sp["measured_s"] == pytest.approx(float(np.median(sp["times_s"])))


def test_format_seconds():
    assert [estimate.format_seconds(s) for s in (0.42, 12.4, 200, 4000)] == [
        "0.4 s",
        "12 s",
        "3 min 20 s",
        "1 h 07 min",
    ]


# ----------------------------------------------------------------------------------------------------------------
# interleaved timing


def test_interleaved_calls_a_b_a_b_after_one_warm_up_each():
    order = []

    def fn(name, value):
        def f():
            order.append(name)
            return value

        return f

    out = ev.interleaved({"A": fn("A", 1.0), "B": fn("B", 2.0)}, rounds=3)
    assert order == ["A", "B"] + ["A", "B"] * 3
    assert out == {"A": [1.0] * 3, "B": [2.0] * 3}
    order.clear()
    ev.interleaved({"A": fn("A", 1.0), "B": fn("B", 2.0)}, rounds=2, warmup=False)
    assert order == ["A", "B", "A", "B"]


def test_interleaving_shares_the_load_between_the_two_models():
    """A load that comes and goes slows both models alike when interleaved; timed one after the other, the second
    model alone would pay for it."""
    clock = iter(range(100))
    load = lambda t: 3.0 if t >= 4 else 1.0  # noqa: E731 - the machine gets busy half way through
    t = {"A": 1.0, "B": 1.0}  # two models equally fast

    def timer(name):
        return lambda: t[name] * load(next(clock))

    out = ev.interleaved({"A": timer("A"), "B": timer("B")}, rounds=4, warmup=False)
    assert sorted(out["A"]) == sorted(out["B"])  # the same moments of load for both
    spread = ev._spread(out["A"])
    assert spread == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 4}


def test_measure_speed_times_both_models_in_one_run_with_the_spread():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    a, b = LlamaForCausalLM(cfg).eval(), LlamaForCausalLM(cfg).eval()

    class Tok:
        pad_token_id, eos_token_id = 0, 0

        def __call__(self, text, return_tensors="pt", add_special_tokens=False):
            class Enc(dict):
                def to(self, device):
                    return self

            return Enc(input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=torch.ones(1, 4, dtype=torch.long))

    settings = ev.EvalSettings(context=32, max_new_tokens=4)
    out = ev.measure_speed({"original": a, "pruned": b}, Tok(), settings, rounds=3, decode_rounds=2)
    for name, other in (("original", "pruned"), ("pruned", "original")):
        r = out[name]
        assert r["interleaved"] and r["with"] == [other]
        p, d = r["prefill_tokens_per_s"], r["decode_ms_per_token"]
        assert p["n"] == 3 and d["n"] == 2
        assert p["min"] <= p["median"] <= p["max"] and d["min"] <= d["median"] <= d["max"] and p["min"] > 0
        assert r["peak_memory_bytes"] > 0


# ----------------------------------------------------------------------------------------------------------------
# log axes and legends


def test_log_ticks_have_full_labels_never_bare_digits():
    vals, text = plots.log_ticks([2e-3, 0.5, 40.0])
    assert "1e-3" not in text and all(t not in ("2", "5") or v >= 1 for v, t in zip(vals, text))
    assert text[:3] == ["0.003", "0.01", "0.03"]  # 1-2-5 would need 14 ticks over 4 decades: 1-3
    _, text = plots.log_ticks([1e-6, 1e3])
    assert text[0] == "10⁻⁶" and text[-1] == "10³"  # one notation for the whole axis
    assert plots.log_tick_label(2e-5) == "2×10⁻⁵"


def test_bars_with_highlight_have_a_legend_and_do_not_shift():
    fig = plots.bars([0, 1, 2], [1.0, 2.0, 3.0], "t", "x", "y", highlight=[1])
    names = [tr.name for tr in fig.data if tr.showlegend]
    assert names == ["suggested", "other blocks"] and fig.layout.barmode == "overlay"
    assert list(fig.data[0].marker.color) == [plots.BASE, plots.HIGHLIGHT, plots.BASE]


def test_multi_series_curves_are_coloured_and_marked_distinctly():
    fig = plots.curves([0, 1], {"a": [1, 2], "b": [2, 1], "c": [0, 0]}, "t", "x", "y")
    colours = [tr.line.color for tr in fig.data]
    symbols = [tr.marker.symbol for tr in fig.data]
    assert len(set(colours)) == 3 and len(set(symbols)) == 3 and fig.layout.showlegend


def test_report_template_has_real_colours():
    t = plots.report_template()
    assert list(t.layout.colorway) == plots.PALETTE and not any(c.startswith("#00000") for c in t.layout.colorway)


# ----------------------------------------------------------------------------------------------------------------
# the report's destination


def test_report_is_never_overwritten_without_asking(tmp_path):
    path = tmp_path / "sub" / "report.html"
    write_report(path, "<p>first</p>")
    with pytest.raises(ReportExists, match="exists"):
        write_report(path, "<p>second</p>")
    assert path.read_text().endswith("<p>first</p>")  # after LayerScope's first-line marker
    write_report(path, "<p>second</p>", overwrite=True)
    assert path.read_text().endswith("<p>second</p>")
    with pytest.raises(ReportExists, match="is a folder"):
        check_destination(tmp_path, overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ReportExists, match="is a file"):
        check_destination(tmp_path / "afile" / "r.html")
    assert not list((tmp_path / "sub").glob(".tmp-*"))  # atomic: nothing half-written left behind


def test_variants_frame_and_summary_from_evaluations():
    from analysis.workflow.report import _generations_html, variants_frame

    evaluation = {
        "settings": {"prompt": "Alice"},
        "text": {"name": "asyoulik"},
        "original": {
            "perplexity": 20.0,
            "parameters": 100,
            "weight_bytes": 2**21,
            "generation": "was",
            "decode_ms_per_token": 30.0,
        },
        "pruned": {
            "perplexity": 25.0,
            "recovery": 0.8,
            "parameters": 80,
            "weight_bytes": 2**20,
            "generation": "is",
            "decode_ms_per_token": 25.0,
            "top1_agreement": 0.9,
        },
    }
    frame = variants_frame([{"name": "minus 3", "action": {"remove_blocks": [3]}, "evaluation": evaluation}])
    assert frame["variant"].tolist() == ["original", "minus 3"] and frame["weights MiB"].tolist() == [2.0, 1.0]
    gens = _generations_html([{"name": "minus 3", "evaluation": evaluation}])
    assert "<b>original</b><br>was" in gens and "<b>minus 3</b><br>is" in gens
    fig = plots.quality_cost_figure(frame, "parameters", "perplexity")
    assert isinstance(fig, go.Figure) and [tr.name for tr in fig.data] == ["variants", "original"]
    assert isinstance(pd.DataFrame(frame), pd.DataFrame)


def test_cli_report_refuses_an_existing_file_before_loading_anything(tmp_path):
    from tests.cli import cli

    out = tmp_path / "report.html"
    out.write_text("an earlier report")
    proc = cli("report", "--model", "default", "--out", out, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    # a file LayerScope did not write: refused, and --overwrite is not offered (it would not replace it either)
    assert len(lines) == 1 and "exists" in lines[0], proc.stderr
    assert "[model]" not in proc.stderr and out.read_text() == "an earlier report"
