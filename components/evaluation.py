"""The evaluation table (original against a changed model) and the side-by-side generation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.evaluation.perplexity import EvaluationTable
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


def _with_spread(r: dict, key: str, fmt: str) -> str:
    """``904 (880–921)``: the median and the min–max over the interleaved rounds, when the row has them."""
    spread = (r.get("speed") or {}).get(key)
    text = fmt.format(r[key])
    if spread and spread.get("n", 0) > 1:
        text += f" ({fmt.format(spread['min'])}–{fmt.format(spread['max'])})"
    return text


def evaluation_view(table: EvaluationTable, key: str = "evaluation") -> None:
    rows = table.rows()
    shown = []
    for r in rows:
        row = {"model": r["model"]}
        for col, label, fmt in COLUMNS:
            v = r.get(col)
            if v is None:
                row[label] = "—"
            elif fmt is None:
                row[label] = format_bytes(v)
            elif col in ("prefill_tokens_per_s", "decode_ms_per_token"):
                row[label] = _with_spread(r, col, fmt)
            else:
                row[label] = fmt.format(v)
        shown.append(row)
    st.dataframe(pd.DataFrame(shown), hide_index=True)
    speed = rows[-1].get("speed") or {}
    if speed.get("prefill_tokens_per_s"):
        n_p, n_d = speed["prefill_tokens_per_s"]["n"], speed["decode_ms_per_token"]["n"]
        st.caption(("Speed: original and changed model timed in the same run, interleaved (A B A B …)"
                    if speed.get("interleaved") else "Speed: timed in this run")
                   + f", after a warm-up: median (min–max) of {n_p} prefill passes of {table.settings['context']} "
                     f"tokens and {n_d} greedy generations each. The machine's load moves both alike; compare the "
                     "ranges, not only the medians.")
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
