"""The AVSS, intrinsic-dimension and projection pages under Streamlit's AppTest, on the real model, small windows."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def at():
    from streamlit.testing.v1 import AppTest

    from analysis.capture.workspace import Calibration

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    app.session_state["calibration"] = Calibration(n_windows=8, window_len=64)
    app.run()
    assert not app.exception, app.exception
    return app


def _charts(app) -> int:
    return len(app.get("plotly_chart"))


def _texts(app) -> str:
    parts = [e.value for kind in ("markdown", "caption", "warning", "info", "error") for e in app.get(kind)]
    return "\n".join(str(p) for p in parts)


def test_avss_page_mlp_then_residual_flag_and_send_to_prune(at):
    at.switch_page("pages/avss.py")
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert _charts(at) >= 5  # AVSS, variance, sparsity, NAVSS, cumulative
    assert "Remove blocks" in _texts(at)
    # the default suggestion is the k lowest (L / 8 = 3 of 30), not the share rule's most of the model
    assert at.radio(key="avss-rule").value.startswith("k lowest")
    assert "(3 of 30)" in _texts(at) and "would take" in _texts(at)
    assert "Sparsity is near zero" not in _texts(at)  # the MLP site has small entries
    at.selectbox(key="avss-site").set_value("residual").run()
    assert "Sparsity is near zero" in _texts(at) and "30 of 30 blocks" in _texts(at)
    at.button(key="avss-use-relative").click().run()
    assert at.toggle(key="avss-relative").value is True
    assert "Sparsity is near zero" not in _texts(at)
    at.radio(key="avss-rule").set_value("Sorted cumulative share (the paper's rule)").run()
    assert "The share rule takes" in _texts(at)
    at.radio(key="avss-rule").set_value("k lowest (capped by the share)").run()
    at.number_input(key="avss-k").set_value(2).run()
    assert not at.exception
    at.button(key="avss-send").click().run()
    assert not at.exception, at.exception
    chosen = at.session_state["prune_selection"]
    assert len(chosen) == 2 and "AVSS, residual, 2 lowest" in at.session_state["prune_selection_source"]
    assert "Selection from **AVSS, residual, 2 lowest**" in _texts(at)  # landed on the prune page


def test_id_page_compute_profile_and_compare_with_pruned_variant(at):
    from analysis.changes.variant import Variant, apply_actions

    at.switch_page("pages/intrinsic_dimension.py")
    at.run()
    assert not at.exception, at.exception
    assert "correlators" in _texts(at) and "could not be checked" in _texts(at)
    # nothing heavy runs before the button, unless a profile of these settings is in the session's cache already
    # (the browser test computes the same 8 x 64 profile when it runs first): then the page shows it at once
    assert "Compute ID profile" in _texts(at) or _charts(at) >= 2
    at.number_input(key="id-points").set_value(512)  # points per state: all 512 tokens of 8 x 64
    at.number_input(key="id-subset-size").set_value(128)
    at.button(key="id-compute").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert _charts(at) >= 2  # profile and GRIDE sweep
    assert "whole distinct cloud" in _texts(at) and "disjoint subsets of 128 points" in _texts(at)
    labels = [m.label for m in at.metric]
    assert any(lbl.startswith("Peak") for lbl in labels) and "Width (for reference)" in labels
    assert "576" in [str(m.value) for m in at.metric]

    # the prune page's result: a pruned variant of the loaded model
    from analysis.model.loading import ModelSpec
    from components.state import _load

    spec = ModelSpec()
    lm = _load(spec.source, spec.device, spec.dtype, spec.device_map_auto, spec.trust_remote_code)
    action = {"remove_blocks": [12, 13]}
    at.session_state["variants"] = [
        Variant(
            name="minus 12,13", model=apply_actions(lm.model, action), action=action, base_fingerprint=lm.fingerprint
        )
    ]
    at.run()
    at.selectbox(key="id-compare").set_value("pruned").run()
    at.button(key="id-compare-go").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert _charts(at) >= 3 and "against depth as a fraction" in specs and "minus 12,13" in specs


def test_id_page_refuses_impossible_settings(at):
    at.switch_page("pages/intrinsic_dimension.py")
    at.run()
    at.number_input(key="id-subset-size").set_value(300)
    at.number_input(key="id-points").set_value(200)  # subsets of 300 of 200 points: refused with a message
    at.button(key="id-compute").click().run()
    assert not at.exception
    assert any("subsets of 300 points need at least that many" in e.value for e in at.error), [
        e.value for e in at.error
    ]


def test_projections_page_pca_then_umap(at):
    at.switch_page("pages/projections.py")
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert _charts(at) == 1
    assert "Explained variance" in _texts(at)
    at.slider(key="proj-state").set_value(3).run()
    at.radio(key="proj-dims").set_value(3).run()
    at.selectbox(key="proj-colour").set_value("frequency").run()
    assert not at.exception and _charts(at) == 1
    at.number_input(key="proj-points").set_value(150).run()
    at.radio(key="proj-method").set_value("umap").run()
    assert _charts(at) == 0 and "not computed yet" in _texts(at)
    at.button(key="proj-umap-go").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert _charts(at) == 1 and "UMAP computed in" in _texts(at)


def test_id_page_compares_with_gemma_when_installed(at):
    from analysis.model.extra_models import gemma_installed

    at.switch_page("pages/intrinsic_dimension.py")
    at.run()
    at.number_input(key="id-points").set_value(512)
    at.number_input(key="id-subset-size").set_value(128)
    at.button(key="id-compute").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    if not gemma_installed():
        labels = at.selectbox(key="id-compare").options
        assert any("not installed" in o for o in labels)  # offered, with how to install it
        at.selectbox(key="id-compare").set_value("gemma").run()
        at.button(key="id-compare-go").click().run()
        assert not at.exception and any("make gemma" in e.value for e in at.error)
        pytest.skip("Gemma-3-270M is optional (make gemma): checked the page says how to install it")
    at.selectbox(key="id-compare").set_value("gemma").run()
    at.button(key="id-compare-go").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "gemma" in specs.lower() and "against depth as a fraction" in specs
    assert "18 blocks, width 640" in _texts(at)


def test_avss_page_compares_with_the_sidebars_variant(at):
    from analysis.changes.variant import Variant, apply_actions
    from analysis.model.loading import ModelSpec
    from components.state import _load

    spec = ModelSpec()
    lm = _load(spec.source, spec.device, spec.dtype, spec.device_map_auto, spec.trust_remote_code)
    action = {"remove_blocks": [12, 13]}
    at.session_state["variants"] = [
        Variant(
            name="minus 12,13", model=apply_actions(lm.model, action), action=action, base_fingerprint=lm.fingerprint
        )
    ]
    at.session_state["compare_variant"] = "minus 12,13"
    at.switch_page("pages/avss.py")
    at.run()
    assert "Compared with minus 12,13" in [h.value for h in at.header]
    at.toggle(key="avss-compare").set_value(True).run()
    assert not at.exception and not at.error, (at.exception, at.error)
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "Normalised AVSS per block" in specs and "minus 12,13" in specs
