"""analysis.formatting: one format per kind of number, and no speed claim the measured ranges do not support; the
report's summary and evaluation table use them."""

from types import SimpleNamespace

import pytest

from analysis import formatting as fmt
from analysis.workflow import report


def spread(median, lo, hi, n=3):
    return {"median": median, "min": lo, "max": hi, "n": n}


def test_number_formats():
    assert fmt.perplexity(12.3456) == "12.35" and fmt.perplexity(None) == "—" and fmt.perplexity(float("nan")) == "—"
    assert fmt.ms(432.63) == "432.6" and fmt.ms_per_token(419.26) == "419.3 ms/token"
    assert fmt.tokens_per_s(1234.4) == "1,234" and fmt.percent(0.4531) == "45.3%" and fmt.percent(0.5, 0) == "50%"
    assert fmt.ratio(0.93412) == "0.934" and fmt.kl(0.012345) == "0.0123" and fmt.count(134515008) == "134,515,008"
    assert fmt.mib(3 * 2**20) == "3.0 MiB"
    assert fmt.with_range(432.6, spread(432.6, 420.1, 445.0)) == "432.6 (420.1–445.0)"
    assert fmt.with_range(432.6, spread(432.6, 432.6, 432.6, n=1)) == "432.6"


@pytest.mark.parametrize(
    "original,changed,lower,verdict",
    [
        (spread(432.6, 420.0, 450.0), spread(419.3, 410.0, 425.0), True, fmt.NO_CHANGE),  # the report's old "gain"
        (spread(432.6, 425.0, 440.0), spread(300.0, 290.0, 310.0), True, "faster"),
        (spread(300.0, 290.0, 310.0), spread(432.6, 425.0, 440.0), True, "slower"),
        (spread(900.0, 880.0, 920.0), spread(1200.0, 1150.0, 1250.0), False, "faster"),  # tokens/s: higher is better
        (spread(900.0, 880.0, 920.0), spread(300.0, 290.0, 310.0, n=1), True, fmt.NO_CHANGE),  # one round: no claim
        (None, spread(300.0, 290.0, 310.0), True, fmt.NO_CHANGE),
    ],
)
def test_speed_change_only_when_the_ranges_are_apart(original, changed, lower, verdict):
    assert fmt.speed_change(original, changed, lower_is_better=lower) == verdict


def test_report_says_no_measurable_change_where_the_ranges_overlap():
    o = {
        "perplexity": 10.0,
        "parameters": 1000,
        "weight_bytes": 4000,
        "decode_ms_per_token": 432.6,
        "prefill_tokens_per_s": 900.0,
        "speed": {
            "decode_ms_per_token": spread(432.6, 420.0, 450.0),
            "prefill_tokens_per_s": spread(900.0, 880.0, 920.0),
        },
    }
    c = {
        "perplexity": 12.3456,
        "recovery": 0.81,
        "top1_agreement": 0.9,
        "parameters": 900,
        "weight_bytes": 3600,
        "decode_ms_per_token": 419.3,
        "prefill_tokens_per_s": 1200.0,
        "speed": {
            "decode_ms_per_token": spread(419.3, 410.0, 425.0),
            "prefill_tokens_per_s": spread(1200.0, 1150.0, 1250.0),
            "interleaved": True,
        },
    }
    lines = report.speed_lines(o, c)
    assert lines[0] == (
        "decoding 432.6 → 419.3 ms per token (medians; ranges 420.0–450.0 and 410.0–425.0 overlap): "
        "no measurable change"
    )
    assert lines[1].startswith("prefill 900 → 1,200 tokens/s") and lines[1].endswith(": faster")
    ws = SimpleNamespace(
        lm=SimpleNamespace(card=lambda: {"parameters": 1000}, name="tiny"),
        n_blocks=4,
        calibration=SimpleNamespace(n_windows=2, window_len=8),
        text=SimpleNamespace(label="t"),
    )
    ev = {"original": o, "pruned": c, "text": {"name": "asyoulik"}}
    text = report.summary_paragraph(ws, [{"name": "minus 1", "action": {"remove_blocks": [1]}, "evaluation": ev}])
    assert "goes from 10.00 to 12.35" in text and "recovery 0.810" in text and "90.0% of the time" in text
    assert "decoding 432.6 → 419.3 ms per token" in text and "no measurable change" in text
    assert "It saves 100 parameters (10.0%" in text
    table = report.evaluation_frame(ev)
    assert list(table["Decode ms/token"]) == ["432.6 (420.0–450.0)", "419.3 (410.0–425.0)"]
    assert list(table["Perplexity"]) == ["10.00", "12.35"]
