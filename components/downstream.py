"""Downstream multiple-choice tasks (lm-eval) on the original and a variant, from local data only."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.cache import stable_hash
from analysis.evaluation.downstream import (
    available_tasks,
    evaluate_downstream,
    to_frame,
)
from analysis.model.loading import fingerprint
from components import jobs
from components.widgets import csv_download


def _work(ws, variant, tasks: list[str], limit: int | None, allow_code: bool = False):
    """The job: score the tasks on the original and the variant, and keep the table in the variant's recipe
    (runs in a worker thread: no Streamlit here)."""

    def work(job):
        result = evaluate_downstream(
            ws.lm.model,
            ws.lm.tokenizer,
            tasks,
            candidate=variant.model,
            candidate_name=variant.name,
            limit=limit,
            progress=job.report,
            original_key=ws.lm.fingerprint,
            candidate_key=fingerprint(variant.model),
            allow_code=allow_code,
        )
        rows = to_frame(result).to_dict(orient="records")
        variant.recipe.setdefault("evaluation", {})["downstream"] = rows
        return rows

    return work


def downstream_section(ws, variant) -> None:
    with_code = [i.name for i in available_tasks() if i.code]
    allow_code = bool(with_code) and st.checkbox(
        f"Run the Python helpers of task folders ({', '.join(with_code)})",
        key="downstream-allow-code",
        help="a task YAML may name Python functions of its folder (!function); they run only if you tick this",
    )
    infos = available_tasks(allow_code=allow_code)
    st.dataframe(
        pd.DataFrame(
            [
                {"task": i.name, "source": i.source, "data here": "yes" if i.available else "no", "why": i.reason}
                for i in infos
            ]
        ),
        hide_index=True,
    )
    runnable = [i.name for i in infos if i.available]
    if not runnable:
        st.info("No task has its data on this machine.")
        return
    with st.form(f"downstream-{variant.name}"):
        tasks = st.multiselect("Tasks", runnable, default=runnable[:1])
        limit = st.number_input("Examples per task (0 = all)", 0, 100000, 0)
        go = st.form_submit_button(f"Run on the original and {variant.name}")
    tag = f"downstream-{variant.name}"
    if go and tasks:  # a background job: the variants page may be left while the tasks are scored
        key = (
            "downstream:"
            + jobs.owner()
            + ":"
            + stable_hash(
                {
                    "variant": variant.name,
                    "model": id(variant.model),
                    "tasks": sorted(tasks),
                    "limit": int(limit),
                    "code": allow_code,
                }
            )
        )
        jobs.start(
            key,
            f"Downstream tasks on the original and {variant.name}",
            _work(ws, variant, list(tasks), int(limit) or None, allow_code),
            meta={"tag": tag},
        )
    last = jobs.latest(tag)
    if last is not None:
        job = jobs.show(last.key)
        if job.is_active:
            return
    rows = (variant.recipe.get("evaluation") or {}).get("downstream")
    if rows:
        frame = pd.DataFrame(rows)
        st.dataframe(frame, hide_index=True)
        st.caption(
            "Accuracy (acc) and length-normalised accuracy (acc_norm) with their standard errors; recovery = "
            "variant / original. A task whose data is missing is listed as not run, with the reason — never "
            "with a number."
        )
        csv_download(frame, "downstream.csv", key=f"dl-downstream-{variant.name}")
