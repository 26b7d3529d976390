"""Downstream multiple-choice tasks (lm-eval) on the original and a variant, from local data only."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.downstream import DownstreamError, available_tasks, evaluate_downstream, to_frame
from analysis.models import fingerprint
from components.widgets import csv_download, run_with_progress


def downstream_section(ws, variant) -> None:
    infos = available_tasks()
    st.dataframe(pd.DataFrame([{"task": i.name, "source": i.source, "data here": "yes" if i.available else "no",
                                "why": i.reason} for i in infos]), hide_index=True)
    runnable = [i.name for i in infos if i.available]
    if not runnable:
        st.info("No task has its data on this machine.")
        return
    with st.form(f"downstream-{variant.name}"):
        tasks = st.multiselect("Tasks", runnable, default=runnable[:1])
        limit = st.number_input("Examples per task (0 = all)", 0, 100000, 0)
        go = st.form_submit_button(f"Run on the original and {variant.name}")
    if go and tasks:
        try:
            result = run_with_progress("Scoring choices", lambda p: evaluate_downstream(
                ws.lm.model, ws.lm.tokenizer, tasks, candidate=variant.model, candidate_name=variant.name,
                limit=int(limit) or None, progress=p, original_key=ws.lm.fingerprint,
                candidate_key=fingerprint(variant.model)))
        except DownstreamError as exc:
            st.error(str(exc))
            return
        frame = to_frame(result)
        variant.recipe.setdefault("evaluation", {})["downstream"] = frame.to_dict(orient="records")
    rows = (variant.recipe.get("evaluation") or {}).get("downstream")
    if rows:
        frame = pd.DataFrame(rows)
        st.dataframe(frame, hide_index=True)
        st.caption("Accuracy (acc) and length-normalised accuracy (acc_norm) with their standard errors; recovery = "
                   "variant / original. A task whose data is missing is listed as not run, with the reason — never "
                   "with a number.")
        csv_download(frame, "downstream.csv", key=f"dl-downstream-{variant.name}")
