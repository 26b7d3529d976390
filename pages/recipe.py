"""Recipe and report: save or load a whole run, and write a self-contained HTML report."""

import datetime as _dt
import json
import time
from pathlib import Path

import streamlit as st

from analysis import cache
from analysis.changes.variant import describe_action
from analysis.search import leaderboard as lb
from analysis.texts import TextError
from analysis.workflow import recipe as rc
from analysis.workflow.report import (
    ReportExists,
    build_report,
    check_destination,
    write_report,
)
from components import jobs, state
from components.change import apply_and_evaluate, variant_result
from components.widgets import run_with_progress, text_bytes_download, workspace_caption

st.title("Recipe and report")
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
kept = state.variants()

st.header("This session as a recipe")
st.caption(
    "A recipe names the model, the text and windows, the metrics, the change and its evaluation. "
    "`python -m analysis run recipe.json --out DIR` reproduces it headless; loading it below restores a session."
)
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
            st.warning(
                "This recipe was written with 'trust remote code' on. A recipe never switches it on: the "
                "model is restored with it off. If it needs its own code, tick 'Trust remote code' in the "
                "sidebar yourself after checking the files it lists."
            )
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
        from analysis.evaluation.perplexity import EvalSettings

        settings = EvalSettings(**((pending.get("evaluation") or {}).get("settings") or {}))
        v = apply_and_evaluate(ws, pending["action"], settings, name=pending.get("name"))
        if v is not None:
            st.session_state.pop("pending-recipe", None)
            variant_result(ws, v)

st.header("Report")
st.caption(
    "One self-contained HTML file (plotly embedded once, opens offline): a one-paragraph summary (what was "
    "removed, what it costs, what it saves), the model card, every view computed for this model and text (the "
    "Rips persistence included), where the metrics agree, the kept variants' quality against cost, their "
    "generations side by side and their evaluation tables."
)
title = st.text_input("Title", f"LayerScope report — {ws.lm.name}", key="report-title")
default_path = (
    Path("exports")
    / "reports"  # a new name per session: an earlier report is not in the way
    / f"report-{ws.lm.fingerprint[:8]}-{_dt.datetime.now():%Y%m%d-%H%M}.html"
)
c = st.columns([3, 1])
target = c[0].text_input(
    "Write to (an .html file)",
    str(default_path),
    key="report-path",
    help="relative paths are inside the folder the dashboard was started in",
)
c[1].write("")
replace = c[1].checkbox("Replace it if it exists", key="report-overwrite")
target_path = Path(target.strip()).expanduser() if target.strip() else None
if target_path is not None and target_path.is_file() and not replace:
    st.info(
        f"`{target_path}` exists ({target_path.stat().st_size / 2**20:.1f} MiB, written "
        f"{_dt.datetime.fromtimestamp(target_path.stat().st_mtime):%Y-%m-%d %H:%M}). Choose another file name, or "
        "tick **Replace it if it exists**."
    )
if st.button("Write report", key="report-write"):
    if target_path is None or target_path.suffix.lower() not in (".html", ".htm"):
        st.error("Give the report a file name ending in .html, e.g. exports/reports/report.html.")
    else:
        try:
            check_destination(target_path, overwrite=replace, option="tick **Replace it if it exists**")
        except ReportExists as exc:
            st.error(f"Not written: {exc}.")
        else:
            changes = [
                {
                    "name": v.name,
                    "action": v.action,
                    "evaluation": v.evaluation.to_dict() if v.evaluation else None,
                    "recipe": v.recipe,
                }
                for v in kept
            ]
            t0 = time.perf_counter()
            with lb.kept_for(jobs.owner()):  # the leaderboard this tab kept, not another tab's or user's
                html = run_with_progress("Writing the report", lambda p: build_report(ws, changes, title=title))
            try:
                path = write_report(target_path, html, overwrite=replace, option="tick **Replace it if it exists**")
            except ReportExists as exc:
                st.error(f"Not written: {exc}.")
            except OSError as exc:
                st.error(f"Could not write {target_path}: {exc}")
            else:
                st.session_state["last-report"] = str(path.resolve())
                st.session_state["last-report-seconds"] = time.perf_counter() - t0
                st.session_state.pop("report-overwrite", None)  # the next write asks again
                st.rerun()
report = st.session_state.get("last-report")
if report and Path(report).is_file():
    took = st.session_state.get("last-report-seconds")
    st.success(
        f"Report written to `{report}` ({Path(report).stat().st_size / 2**20:.1f} MiB"
        + (f", in {took:.1f} s" if took else "")
        + ")."
    )
    st.download_button(
        "⬇ Download report.html",
        Path(report).read_bytes(),
        file_name=Path(report).name,
        mime="text/html",
        key="dl-report",
    )
