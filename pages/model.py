"""Model and text: what is loaded, what it is calibrated on, and whether its hidden states are captured."""

import pandas as pd
import streamlit as st

from analysis.capture import estimate
from analysis.texts import TextError, calibration_windows, token_ids
from components import state
from components.widgets import ensure_capture, format_bytes, workspace_caption

st.title("LayerScope")
st.markdown(
    "Look inside a causal language model layer by layer, choose what to remove, re-evaluate against the "
    "original, and export a checkpoint plain `transformers` reloads."
)

ws = state.workspace()
if ws is None:
    st.stop()
card = ws.lm.card()

st.header("Model card")
c = st.columns(6)
c[0].metric("Blocks", card["blocks"])
c[1].metric("Width", card["width"])
c[2].metric("Parameters", f"{card['parameters'] / 1e6:.1f} M")
c[3].metric("Memory (weights)", format_bytes(card["memory_bytes"]))
c[4].metric("Device", card["device"])
c[5].metric("dtype", card["dtype"])
details = {
    k: card[k]
    for k in (
        "name",
        "source",
        "architecture",
        "model_type",
        "mlp_width",
        "attention_heads",
        "kv_heads",
        "vocabulary",
        "fingerprint",
        "load_seconds",
    )
}
st.dataframe(pd.DataFrame({"": list(details), "value": [str(v) for v in details.values()]}), hide_index=True)
for note in ws.lm.notes:
    st.caption(note)
if card["last_state_is_normed"]:
    st.info(
        f"Hidden states are h_0 (embeddings) … h_{card['blocks']} as Hugging Face returns them: the last one, "
        f"h_{card['blocks']}, already has the model's final norm applied, so block {card['blocks'] - 1} is "
        "measured across that norm too."
    )

st.header("Calibration text")
workspace_caption(ws)
try:
    n_tokens = int(token_ids(ws.lm.tokenizer, ws.text).size)
    windows = calibration_windows(ws.lm.tokenizer, ws.text, ws.calibration.n_windows, ws.calibration.window_len)
except TextError as exc:
    st.error(str(exc))
    st.stop()
c = st.columns(4)
c[0].metric("Text tokens", f"{n_tokens:,}")
c[1].metric("Windows × tokens", f"{windows.shape[0]} × {windows.shape[1]}")
c[2].metric("Tokens used", f"{windows.size:,}")
c[3].metric("Text sha256", ws.text.sha256[:12])
with st.expander("First window, as the model sees it"):
    st.code(ws.lm.tokenizer.decode(windows[0]), language=None)

st.header("Hidden states")
if ws.is_captured():
    cap = ws.capture()
    st.success(
        f"Captured: {cap.states.shape[0]} states × {cap.n_tokens:,} tokens × width {cap.width} "
        f"({format_bytes(cap.states.nbytes)}, {cap.meta.get('storage', 'float32')}) in `{cap.outcome.path}`. "
        "Every view reads this cache; the command line writes and reads the same files."
    )
else:
    st.write("Every view needs the residual stream of every calibration token. It is captured once and cached.")
    st.caption(
        "Estimate: "
        + estimate.describe(
            estimate.capture_estimate(
                ws.lm, ws.calibration.n_windows, ws.calibration.window_len, storage=ws.calibration.storage
            )
        )
    )
    if st.button("Capture hidden states now", type="primary"):
        cap = ensure_capture(ws)
        st.rerun()
