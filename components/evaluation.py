"""The evaluation table (original against a changed model) and the side-by-side generation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.evaluate import EvaluationTable
from components.widgets import csv_download, format_bytes

COLUMNS = [
    ("perplexity", "Perplexity", "{:.3f}"),
    ("recovery", "Recovery", "{:.3f}"),
    ("kl_to_original", "KL to original (nats/token)", "{:.4f}"),
    ("top1_agreement", "Top-1 agreement", "{:.1%}"),
    ("parameters", "Parameters", "{:,.0f}"),
    ("weight_bytes", "Weights", None),
    ("prefill_tokens_per_s", "Prefill tokens/s", "{:,.0f}"),
    ("decode_ms_per_token", "Decode ms/token", "{:.1f}"),
    ("peak_memory_bytes", "Peak memory", None),
]


def evaluation_frame(table: EvaluationTable) -> pd.DataFrame:
    return pd.DataFrame(table.rows()).drop(columns=["generation"])


def evaluation_view(table: EvaluationTable, key: str = "evaluation") -> None:
    rows = table.rows()
    shown = []
    for r in rows:
        row = {"model": r["model"]}
        for key, label, fmt in COLUMNS:
            v = r.get(key)
            if v is None:
                row[label] = "—"
            elif fmt is None:
                row[label] = format_bytes(v)
            else:
                row[label] = fmt.format(v)
        shown.append(row)
    st.dataframe(pd.DataFrame(shown), hide_index=True)
    s, t = table.settings, table.text
    st.caption(f"Perplexity on **{t['name']}** (sha256 {t['sha256'][:12]}…): {rows[0]['tokens']:,} scored tokens of "
               f"the first {s['n_tokens']:,}, sliding window of {s['context']} tokens with stride {s['stride']}. "
               "KL(original ‖ changed) and top-1 agreement on the same positions. Recovery = original perplexity / "
               "changed perplexity. Peak memory: weights plus the growth during one prefill (CPU: sampled RSS, "
               "approximate; CUDA: allocator peak).")
    csv_download(evaluation_frame(table), "evaluation.csv", label="evaluation CSV", key=f"csv-{key}")
    st.markdown(f"**Greedy generation** from: _{s['prompt']}_")
    cols = st.columns(len(rows))
    for col, r in zip(cols, rows):
        col.markdown(f"**{r['model']}**")
        col.info(r["generation"] or "(empty)")
