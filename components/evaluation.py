"""The evaluation table (original against a changed model) and the side-by-side generation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import formatting as fmt
from analysis.evaluation.perplexity import EvaluationTable
from analysis.workflow.report import speed_lines
from components.widgets import csv_download, format_bytes

COLUMNS = [
    ("perplexity", "Perplexity", fmt.perplexity),
    ("recovery", "Recovery", fmt.ratio),
    ("kl_to_original", "KL to original (nats/token)", fmt.kl),
    ("top1_agreement", "Top-1 agreement", fmt.percent),
    ("parameters", "Parameters", fmt.count),
    ("weight_bytes", "Weights", None),
    ("prefill_tokens_per_s", "Prefill tokens/s", fmt.tokens_per_s),
    ("decode_ms_per_token", "Decode ms/token", fmt.ms),
    ("peak_memory_bytes", "Peak memory", None),
]


def evaluation_frame(table: EvaluationTable) -> pd.DataFrame:
    return pd.DataFrame(table.rows()).drop(columns=["generation"])


def _with_spread(r: dict, key: str, formatter) -> str:
    """``904 (880–921)``: the median and the min–max over the interleaved rounds, when the row has them."""
    return fmt.with_range(r[key], (r.get("speed") or {}).get(key), formatter)


def evaluation_view(table: EvaluationTable, key: str = "evaluation") -> None:
    rows = table.rows()
    shown = []
    for r in rows:
        row = {"model": r["model"]}
        for col, label, formatter in COLUMNS:
            v = r.get(col)
            if v is None:
                row[label] = fmt.MISSING
            elif formatter is None:
                row[label] = format_bytes(v)
            elif col in ("prefill_tokens_per_s", "decode_ms_per_token"):
                row[label] = _with_spread(r, col, formatter)
            else:
                row[label] = formatter(v)
        shown.append(row)
    st.dataframe(pd.DataFrame(shown), hide_index=True)
    speed = rows[-1].get("speed") or {}
    if speed.get("prefill_tokens_per_s"):
        n_p, n_d = speed["prefill_tokens_per_s"]["n"], speed["decode_ms_per_token"]["n"]
        st.caption(
            (
                "Speed: original and changed model timed in the same run, interleaved (A B A B …)"
                if speed.get("interleaved")
                else "Speed: timed in this run"
            )
            + f", after a warm-up: median (min–max) of {n_p} prefill passes of {table.settings['context']} "
            f"tokens and {n_d} greedy generations each. The machine's load moves both alike; compare the "
            "ranges, not only the medians."
        )
        if len(rows) > 1:
            st.markdown(
                "**Speed against the original:** "
                + "; ".join(speed_lines(rows[0], rows[-1]))
                + ". Faster or slower is claimed only when the measured ranges do not overlap."
            )
    s, t = table.settings, table.text
    st.caption(
        f"Perplexity on **{t['name']}** (sha256 {t['sha256'][:12]}…): {rows[0]['tokens']:,} scored tokens of "
        f"the first {s['n_tokens']:,}, sliding window of {s['context']} tokens with stride {s['stride']}. "
        "KL(original ‖ changed) and top-1 agreement on the same positions. Recovery = original perplexity / "
        "changed perplexity. Peak memory: weights plus the growth during one prefill (CPU: sampled RSS, "
        "approximate; CUDA: allocator peak)."
    )
    csv_download(evaluation_frame(table), "evaluation.csv", label="evaluation CSV", key=f"csv-{key}")
    st.markdown(f"**Greedy generation** from: _{s['prompt']}_")
    cols = st.columns(len(rows))
    for col, r in zip(cols, rows):
        col.markdown(f"**{r['model']}**")
        col.info(r["generation"] or "(empty)")
