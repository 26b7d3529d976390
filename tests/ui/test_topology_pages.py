"""AppTest of the topology pages: compute on a button press, see the charts, read the cache on a rerun, send the
zigzag suggestion to the prune page, and clear messages for settings that cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.capture.workspace import Calibration
from analysis.profiles import topology as topo
from analysis.texts import text_from_string

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = topo.ZigzagSettings(n_windows=120, window_len=32)


def open_page(path: str, **session) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def submit_zigzag(at: AppTest, windows: int = 120, k: int = 4, m: int = 3) -> None:
    at.number_input(key="zz-windows").set_value(windows)
    at.number_input(key="zz-k").set_value(k)
    at.number_input(key="zz-m").set_value(m)
    next(b for b in at.button if b.label == "Compute zigzag").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_zigzag_page_computes_shows_the_views_and_sends_the_suggestion(lm, alice):
    at = open_page("pages/zigzag.py")
    assert any("Press **Compute zigzag**" in i.value for i in at.info) or charts(at) >= 5
    caption = " ".join(c.value for c in at.caption)
    assert "k scanned from 1 to 15, m = 4, α = 0" in caption and "residual-stream last-token" in caption
    submit_zigzag(at)
    assert not at.error, [e.value for e in at.error]
    assert charts(at) >= 5  # barcode, Betti, births, Z_p heatmap, Z̄_p
    assert any("120 points × 31 states" in s.value for s in at.success)
    assert any("middle one of three" in c.value and "minimum lifetime of 2 drops it" in c.value for c in at.caption)

    # a rerun (a display control) reads the cache
    at.number_input(key="zz-alpha").set_value(1.0)
    at.run()
    assert any("read from the cache" in s.value for s in at.success)
    at.number_input(key="zz-alpha").set_value(0.0)
    at.run()

    view = topo.describe_zigzag(topo.compute_zigzag(lm, alice, SMALL))
    expected = view.suggestions[0.9]["blocks"]
    assert expected
    at.button(key="zz-send-0.9").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["prune_selection"] == expected
    assert at.multiselect(key="prune-blocks").value == expected
    assert any("Zigzag persistence" in i.value for i in at.info)  # "Selection from Zigzag persistence ..."


def test_zigzag_page_draws_the_compared_variant_beside_the_original(lm):
    from analysis.changes.variant import Variant, apply_actions

    action = {"remove_blocks": [12, 13]}
    variant = Variant(
        name="minus 12,13", model=apply_actions(lm.model, action), action=action, base_fingerprint=lm.fingerprint
    )
    at = open_page("pages/zigzag.py", variants=[variant], compare_variant="minus 12,13")
    submit_zigzag(at)
    assert "Compared with minus 12,13" in [h.value for h in at.header]
    at.toggle(key="zz-compare").set_value(True).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "depth (hidden state index" in specs and "minus 12,13" in specs


@pytest.mark.parametrize(
    "windows, k, m, message",
    [
        (3, 4, 3, "at least k + 1 = 5 windows"),
        (120, 4, 5, "between 1 and 4"),
    ],
)
def test_zigzag_page_refuses_bad_settings_with_a_message(windows, k, m, message):
    at = open_page("pages/zigzag.py")
    submit_zigzag(at, windows=windows, k=k, m=m)
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert charts(at) == 0


def test_zigzag_page_warns_before_a_setting_whose_simplex_count_explodes():
    at = open_page("pages/zigzag.py")
    submit_zigzag(at, windows=120, k=14, m=4)  # counted first (cheap): far above the warning limit
    warnings = [w.value for w in at.warning]
    assert any("This zigzag is large" in w and "Lower k or m" in w and "Run even if" in w for w in warnings), warnings
    assert charts(at) == 0 and not at.error


def test_zigzag_page_says_when_the_text_is_too_short():
    short = text_from_string("Alice was beginning to get very tired. " * 30, name="short")
    at = open_page("pages/zigzag.py", calibration_text=short)
    submit_zigzag(at, windows=500)
    errors = [e.value for e in at.error]
    assert any("has" in e and "tokens; 500 windows of 32 tokens need 16000" in e for e in errors), errors


def test_persistence_page_computes_on_press_and_shows_the_views():
    at = open_page("pages/persistence.py", calibration=Calibration(n_windows=8, window_len=64))
    assert any("Compute diagrams" in i.value for i in at.info)
    # 57 points: a setting no other test computes (the e2e dashboard test caches 8 x 64 windows at 60 points in the
    # same test cache, and a cached setting shows its diagrams at once)
    at.number_input(key="ph-points").set_value(57)
    at.run()
    assert any("Expected cost" in c.value for c in at.caption)
    at.button(key="ph-compute").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert charts(at) >= 6  # barcode, diagram, Betti curves, total persistence, entropy, H1 count
    # the first position of each window (the attention sink) is left out by default: 8 x 63 points
    assert at.checkbox(key="ph-drop-first").value is True
    assert any("504 points per state, the first position of each window left out" in c.value for c in at.caption)
    at.slider(key="ph-layer").set_value(3)
    at.run()
    assert at.button(key="ph-compute").disabled  # cached now: a rerun reads the cache
    n = charts(at)
    at.button(key="ph-compute-dist").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert charts(at) == n + 1  # the layer x layer distance heatmap

    # a bigger computation shows its expected cost before anything runs
    at.number_input(key="ph-points").set_value(500)
    at.selectbox(key="ph-dim").set_value(2)
    at.run()
    assert any("Expected cost" in w.value and "default (300 points" in w.value for w in at.warning)


def test_zigzag_page_shows_the_windows_of_the_longest_loop(lm, alice):
    """The representative view: on a press, the longest H1 bar's loop at its middle layer, over PCA, with the
    windows' texts in a table; another layer changes the loop; H0 clusters are offered too."""
    at = open_page("pages/zigzag.py")
    submit_zigzag(at)
    go = [b for b in at.button if b.label == "Find the windows of the longest bars"]
    if go:  # not cached yet
        go[0].click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    reps = topo.zigzag_representatives(lm, alice, SMALL)
    longest = int(reps.bars[reps.bars["dim"] == 1]["bar"].iloc[0])
    assert at.selectbox(key="zz-rep-bar").value == longest
    layers = reps.layers(longest)
    assert at.select_slider(key="zz-rep-layer").value == layers[len(layers) // 2]
    table = next(d for d in at.dataframe if "text" in d.value.columns and "layers" in d.value.columns).value
    expected = reps.windows(longest, layers[len(layers) // 2])
    assert table["window"].tolist() == expected["window"].tolist() and len(table) >= 3
    assert all("⟦" in t for t in table["text"])  # each window's text with its last token marked
    assert (table["role"] == "representative").all()
    # the figure: the loop's title and one edge per representative edge
    figures = [f for f in at.get("plotly_chart") if "H1 bar" in f.proto.spec]
    assert figures and "a loop of" in figures[0].proto.spec

    at.select_slider(key="zz-rep-layer").set_value(layers[0])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table2 = next(d for d in at.dataframe if "text" in d.value.columns and "layers" in d.value.columns).value
    assert table2["window"].tolist() == reps.windows(longest, layers[0])["window"].tolist()

    at.radio(key="zz-rep-dim").set_value(0)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="zz-rep-bar").value == int(reps.bars[reps.bars["dim"] == 0]["bar"].iloc[0])
    clusters = next(d for d in at.dataframe if "text" in d.value.columns and "layers" in d.value.columns).value
    assert {"representative", "cluster"} >= set(clusters["role"]) and len(clusters) > 0
