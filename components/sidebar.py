"""The sidebar every page shares: which model, which calibration text, which windows."""

from __future__ import annotations

import dataclasses

import streamlit as st

from analysis.capture.workspace import Calibration
from analysis.model.loading import DTYPES, ModelSpec, remote_code_files
from analysis.texts import (
    BUNDLED,
    TextError,
    bundled_text,
    text_from_bytes,
    text_from_string,
    token_ids,
)
from components import jobs, state
from components.widgets import format_bytes

REMOTE_CODE_PENDING = "remote-code-pending"
MODEL_HELP = (
    "'default' is the bundled SmolLM2-135M-Instruct. Or a Hugging Face id (from the local hub cache, or "
    "downloaded when the hub is reachable), a local checkpoint folder, or a path to a .gguf file."
)


def render() -> None:
    with st.sidebar:
        _model_section()
        st.divider()
        _text_section()
        _compare_section()
        jobs.sidebar()  # this session's background jobs; finished ones announced, their variants taken


def _compare_section() -> None:
    kept = state.variants()
    if not kept:
        return
    st.divider()
    names = ["(none)"] + [v.name for v in kept]
    current = st.session_state.get(state.COMPARE)
    choice = st.selectbox(
        "Compare with",
        names,
        index=names.index(current) if current in names else 0,
        help="metric pages that support it draw the original and this variant on one chart",
    )
    if choice == "(none)":
        st.session_state.pop(state.COMPARE, None)
    else:
        st.session_state[state.COMPARE] = choice


def _model_section() -> None:
    st.subheader("Model")
    current: ModelSpec = st.session_state.get(state.SPEC) or ModelSpec()
    with st.form("model-form", border=False):
        source = st.text_input("Model", value=current.source, help=MODEL_HELP, key="model-source")
        with st.expander("Device and precision"):
            devices = ["auto", "cpu", "cuda", "mps"]
            device = st.selectbox(
                "Device",
                devices,
                index=devices.index(current.device) if current.device in devices else 0,
                help="auto picks cuda, then mps, then cpu",
            )
            dtypes = list(DTYPES)
            dtype = st.selectbox("Weights dtype", dtypes, index=dtypes.index(current.dtype))
            dmap = st.checkbox(
                "Spread over devices (device_map='auto')",
                value=current.device_map_auto,
                help="for models larger than one device; layers may be offloaded to CPU or disk",
            )
            max_mem = st.text_input(
                "Memory per device",
                value=current.max_memory,
                placeholder="0=20GiB,cpu=30GiB",
                help="with device_map='auto': what does not fit is offloaded to disk (cache/offload)",
            )
            trust = st.checkbox(
                "Trust remote code",
                value=current.trust_remote_code,
                help="runs Python code shipped with the checkpoint; off unless you trust it",
            )
        if st.form_submit_button("Load model", type="primary"):
            spec = ModelSpec(source.strip(), device, dtype, dmap, trust, max_mem.strip())
            st.session_state.pop(REMOTE_CODE_PENDING, None)
            files = remote_code_files(spec) if trust else None
            if files is not None:  # show the code it would run, and ask, before anything runs
                st.session_state[REMOTE_CODE_PENDING] = (spec, [str(f) for f in files])
            else:
                state.request_model(spec)
    pending = st.session_state.get(REMOTE_CODE_PENDING)
    if pending:
        spec, files = pending
        st.warning(
            "**Trust remote code** runs this Python code from the model's folder with your permissions:\n\n"
            + (
                "\n".join(f"- `{f}`" for f in files)
                if files
                else f"- code from the hub repository `{spec.source}` (downloaded; not yet on this machine)"
            )
            + "\n\nRead it first. Run it and load the model?"
        )
        c = st.columns(2)
        if c[0].button("Run this code and load", key="remote-code-yes", type="primary"):
            st.session_state.pop(REMOTE_CODE_PENDING, None)
            state.request_model(spec)
            st.rerun()
        if c[1].button("Cancel", key="remote-code-no"):
            st.session_state.pop(REMOTE_CODE_PENDING, None)
            st.rerun()
    lm = state.loaded_model()
    err = st.session_state.get(state.MODEL_ERROR)
    if err:
        st.error(err)
        if lm is not None:
            st.caption(f"Still using the previous model: {lm.spec.source}")
    if lm is not None:
        card = lm.card()
        st.caption(
            f"**{card['architecture']}** · {card['blocks']} blocks · width {card['width']} · "
            f"{card['parameters'] / 1e6:.1f} M parameters · {card['dtype']} on {card['device']} · "
            f"{format_bytes(card['memory_bytes'])}"
        )


def _text_section() -> None:
    st.subheader("Calibration text")
    text = state.calibration_text()
    cal = state.calibration()
    kind = st.radio(
        "Source", ["Bundled", "Upload", "Paste"], horizontal=True, key="text-kind", label_visibility="collapsed"
    )
    with st.form("text-form", border=False):
        uploaded = pasted = None
        name = None
        if kind == "Bundled":
            names = list(BUNDLED)
            default = names.index(text.name) if text is not None and text.source == "bundled" else 0
            name = st.selectbox("Bundled text", names, index=default, format_func=lambda n: f"{n} — {BUNDLED[n][2]}")
        elif kind == "Upload":
            uploaded = st.file_uploader("A plain-text .txt file", type=["txt"])
        else:
            pasted = st.text_area("Paste text", height=150)
        c1, c2 = st.columns(2)
        n = c1.number_input("Windows N", 1, 100000, cal.n_windows, help="the first N non-overlapping windows")
        t = c2.number_input("Tokens per window T", 2, 32768, cal.window_len)
        with st.expander("Clouds"):
            excl = st.number_input(
                "Exclude first positions",
                0,
                64,
                cal.exclude_first,
                help="drop the first position(s) of every window from all-token clouds: they "
                "have no context and often carry massive 'attention sink' activations",
            )
            n_max = st.number_input(
                "Subsample all-token clouds to (0 = all tokens)", 0, 10_000_000, cal.n_max or 0, step=1024
            )
            storage = st.selectbox(
                "Store captured states as",
                ["float32", "float16"],
                index=["float32", "float16"].index(cal.storage),
                help="float16 halves the disk a capture takes (large models)",
            )
        applied = st.form_submit_button("Use this text")
    if applied:
        _apply_text(
            kind,
            name,
            uploaded,
            pasted,
            Calibration(
                n_windows=int(n),
                window_len=int(t),
                exclude_first=int(excl),
                n_max=int(n_max) or None,
                seed=cal.seed,
                storage=storage,
            ),
        )
    err = st.session_state.get(state.TEXT_ERROR)
    if err:
        st.error(err)
    text = state.calibration_text()
    if text is not None:
        cal = state.calibration()
        st.caption(
            f"**{text.label}** · {len(text.content):,} characters · sha256 {text.sha256[:12]}… · "
            f"{cal.n_windows} × {cal.window_len} tokens"
        )
        _calibration_caption(cal)


def _calibration_caption(cal: Calibration) -> None:
    """Why these windows (the default chosen for the model's width and depth) and what capturing them costs."""
    from analysis.capture import estimate

    lm = state.loaded_model()
    choice = state.calibration_choice()
    if lm is None:
        return
    if choice is not None and (choice.n_windows, choice.window_len, choice.storage) == (
        cal.n_windows,
        cal.window_len,
        cal.storage,
    ):
        why = f"Chosen for this model: {choice.reason}."
    else:
        why = (
            "Your windows"
            + (
                f" (the default for this model is {choice.n_windows} × {choice.window_len}, {choice.storage})"
                if choice is not None
                else ""
            )
            + "."
        )
    est = estimate.capture_estimate(lm, cal.n_windows, cal.window_len, storage=cal.storage)
    st.caption(
        why + f" Capture: about {estimate.format_seconds(est['seconds'])}, {format_bytes(est['disk_bytes'])} "
        f"on disk, peak memory about {format_bytes(est['peak_memory_bytes'])}."
    )


def _apply_text(kind, name, uploaded, pasted, cal: Calibration) -> None:
    try:
        if kind == "Bundled":
            new = bundled_text(name)
        elif kind == "Upload":
            if uploaded is None:
                raise TextError("choose a .txt file to upload first")
            new = text_from_bytes(uploaded.getvalue(), name=uploaded.name)
        else:
            new = text_from_string(pasted or "", name="pasted", source="pasted")
        lm = state.loaded_model()
        if lm is not None:
            have = int(token_ids(lm.tokenizer, new).size)
            need = cal.n_windows * cal.window_len
            if have < cal.window_len:
                raise TextError(
                    f"{new.label} has only {have:,} tokens, fewer than one window of {cal.window_len}: "
                    f"use a longer text, or at most {have} tokens per window (T)."
                )
            if have < need:
                raise TextError(
                    f"{new.label} has {have:,} tokens; {cal.n_windows} windows of {cal.window_len} "
                    f"tokens need {need:,}. Use at most {have // cal.window_len} windows of "
                    f"{cal.window_len} tokens, or a longer text."
                )
        if cal.exclude_first >= cal.window_len:
            raise TextError("excluding every position of the window leaves no tokens")
    except TextError as exc:
        st.session_state[state.TEXT_ERROR] = str(exc)  # the previous text and windows stay in use
        return
    state.set_calibration_text(new)
    state.set_calibration(dataclasses.replace(cal))
