"""Small reusable UI pieces: progress bars, downloads, captions, suggestion pickers."""

from __future__ import annotations

import io
from typing import Callable

import pandas as pd
import streamlit as st

from analysis.capture.workspace import Workspace


class StreamlitProgress:
    """A ``progress(done, total, message)`` callable drawing an ``st.progress`` bar; ``clear()`` removes it."""

    def __init__(self, label: str):
        self.label = label
        self.bar = st.progress(0.0, text=label)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        self.bar.progress(frac, text=f"{self.label}: {message}" if message else self.label)

    def clear(self) -> None:
        self.bar.empty()


def run_with_progress(label: str, fn: Callable[[Callable], object]):
    """Run ``fn(progress)`` with a progress bar that disappears afterwards."""
    progress = StreamlitProgress(label)
    try:
        return fn(progress)
    finally:
        progress.clear()


def ensure_capture(ws: Workspace):
    """The workspace's hidden states, captured with a progress bar on the first visit (cached afterwards)."""
    cap = run_with_progress(
        f"Capturing hidden states of {ws.calibration.n_windows} × {ws.calibration.window_len} tokens",
        lambda p: ws.capture(progress=p),
    )
    if cap.outcome.message:
        st.warning(cap.outcome.message)
    return cap


def csv_download(
    frame: pd.DataFrame, filename: str, label: str = "CSV", key: str | None = None, index: bool = False
) -> None:
    st.download_button(
        f"⬇ {label}",
        frame.to_csv(index=index).encode(),
        file_name=filename,
        mime="text/csv",
        key=key or f"dl-{filename}",
    )


def figure_with_csv(fig, frame: pd.DataFrame, filename: str, index: bool = False, key: str | None = None) -> None:
    """A plotly figure (PNG/SVG from its toolbar) with a CSV of its numbers below it."""
    st.plotly_chart(
        fig,
        config={"toImageButtonOptions": {"format": "png", "scale": 2}, "displaylogo": False},
        key=key and f"fig-{key}",
    )
    csv_download(frame, filename, key=key and f"csv-{key}", index=index)


def workspace_caption(ws: Workspace) -> None:
    c = ws.calibration
    extra = f", first {c.exclude_first} position(s) of each window excluded" if c.exclude_first else ""
    sub = f", subsampled to {c.n_max} tokens (seed {c.seed})" if c.n_max else ""
    st.caption(
        f"**{ws.lm.name}** · {ws.n_blocks} blocks · width {ws.lm.width} · calibration text "
        f"**{ws.text.label}**: first {c.n_windows} windows of {c.window_len} tokens{extra}{sub}. Blocks are "
        "0-based; block b maps hidden state h_b to h_(b+1); ranges are [start, end)."
    )


def suggestion_row(ws: Workspace, metric, k: int, key: str, blocks: list[int] | None = None) -> None:
    """A metric's suggested blocks with a button that sends them to the prune page."""
    from components.state import send_to_prune

    if blocks is None:
        blocks = metric.suggest(ws, k)
    cols = st.columns([3, 1])
    cols[0].markdown(
        f"**{metric.label}** ({metric.direction_text}): remove blocks `{', '.join(map(str, blocks)) or '—'}`"
    )
    if cols[1].button("Send to prune", key=f"send-{key}", disabled=not blocks):
        send_to_prune(blocks, f"{metric.label} (k={k})")


def format_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):  # powers of 1024: binary units
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def text_bytes_download(text: str, filename: str, label: str, mime: str = "application/json") -> None:
    st.download_button(label, io.BytesIO(text.encode()), file_name=filename, mime=mime, key=f"dl-{filename}")
