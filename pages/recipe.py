"""Recipe and report: save or load a whole run, and write a self-contained HTML report."""

import json
from pathlib import Path

import streamlit as st

from analysis import cache
from analysis import recipe as rc
from analysis.report import build_report, write_report
from analysis.texts import TextError
from analysis.variants import describe_action
from components import state
from components.change import apply_and_evaluate, variant_result
from components.widgets import run_with_progress, text_bytes_download, workspace_caption

st.title("Recipe and report")
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
kept = state.variants()

st.header("This session as a recipe")
st.caption("A recipe names the model, the text and windows, the metrics, the change and its evaluation. "
           "`python -m analysis run recipe.json --out DIR` reproduces it headless; loading it below restores a session.")
names = ["(no change)"] + [v.name for v in kept]
chosen = st.selectbox("Change to include", names, index=len(names) - 1)
variant = next((v for v in kept if v.name == chosen), None)
if variant is not None:
    recipe = dict(variant.recipe)
else:
    recipe = rc.base_recipe(ws)
recipe["metrics"] = {g: {} for g in st.session_state.get("recipe-metrics", ["linearity"])}
text = cache.dumps(recipe)
with st.expander("recipe.json"):
    st.code(text, language="json")
text_bytes_download(text, "recipe.json", "⬇ Download recipe.json")

st.header("Load a recipe")
upload = st.file_uploader("recipe.json", type=["json"], key="recipe-upload")
if upload is not None:
    try:
        loaded = json.loads(upload.getvalue().decode("utf-8"))
        rc.validate(loaded)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        st.error(f"{upload.name} is not a JSON recipe: {exc}")
        loaded = None
    except rc.RecipeError as exc:
        st.error(str(exc))
        loaded = None
    if loaded is not None:
        st.write(f"Model **{loaded['model']['source']}**, change: **{describe_action(loaded.get('action') or {})}**")
        if rc.asks_for_remote_code(loaded):
            st.warning("This recipe was written with 'trust remote code' on. A recipe never switches it on: the "
                       "model is restored with it off. If it needs its own code, tick 'Trust remote code' in the "
                       "sidebar yourself after checking the files it lists.")
        if st.button("Restore this session", type="primary"):
            try:
                text_obj = rc.text_of(loaded)
            except (rc.RecipeError, TextError) as exc:
                st.error(str(exc))
            else:
                state.request_model(rc.spec_of(loaded))  # trust_remote_code off: only the sidebar tick turns it on
                state.set_calibration_text(text_obj)
                state.set_calibration(rc.calibration_of(loaded))
                st.session_state["recipe-metrics"] = list(loaded.get("metrics") or {"linearity": {}})
                st.session_state["pending-recipe"] = loaded
                if (loaded.get("action") or {}).get("remove_blocks"):
                    state.set_prune_selection(loaded["action"]["remove_blocks"], "the loaded recipe")
                st.rerun()
pending = st.session_state.get("pending-recipe")
if pending and (pending.get("action") or {}):
    st.info(f"Restored from a recipe: {describe_action(pending['action'])}. Apply it to evaluate it here.")
    if st.button("Apply and evaluate the recipe's change"):
        from analysis.evaluate import EvalSettings

        settings = EvalSettings(**((pending.get("evaluation") or {}).get("settings") or {}))
        v = apply_and_evaluate(ws, pending["action"], settings, name=pending.get("name"))
        if v is not None:
            st.session_state.pop("pending-recipe", None)
            variant_result(ws, v)

st.header("Report")
st.caption("One self-contained HTML file (plotly embedded, opens offline): the model card, every view computed for "
           "this model and text, where the metrics agree, and the kept variants with their evaluation.")
title = st.text_input("Title", f"LayerScope report — {ws.lm.name}")
if st.button("Write report"):
    changes = [{"name": v.name, "action": v.action, "evaluation": v.evaluation.to_dict() if v.evaluation else None,
                "recipe": v.recipe} for v in kept]
    html = run_with_progress("Writing the report", lambda p: build_report(ws, changes, title=title))
    path = write_report(Path("exports") / "reports" / f"report-{ws.lm.fingerprint[:8]}.html", html)
    st.session_state["last-report"] = str(path.resolve())
report = st.session_state.get("last-report")
if report and Path(report).is_file():
    st.success(f"Report written to `{report}` ({Path(report).stat().st_size / 2**20:.1f} MB).")
    st.download_button("⬇ Download report.html", Path(report).read_bytes(), file_name="report.html",
                       mime="text/html", key="dl-report")
