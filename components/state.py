"""Session state shared by every page: the loaded model, the calibration text, and the workspace built on them.

Pages never load models themselves: they ask :func:`workspace` (or :func:`loaded_model`) and get ``None`` plus a
message in the page when nothing usable is loaded. The model is cached with ``st.cache_resource(max_entries=1)``
(one model in memory per server); a failed load keeps the previous model and says why.

**Per-tab store.** ``st.session_state`` is lost when the browser tab is reloaded (a new Streamlit session).
What must survive a reload (the pages' settings, kept with :func:`keep_widgets`, and the prune page's selection)
is also kept on the server in :func:`tab_store`, keyed by the tab's id (``?session=`` in the URL, the same id
that owns the tab's background jobs: :func:`components.jobs.owner`). See docs/dashboard-state.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from analysis.capture.workspace import Calibration, Workspace
from analysis.model.architecture import ModelLoadError
from analysis.model.loading import LoadedModel, ModelSpec, load_model
from analysis.texts import DEFAULT_CALIBRATION_TEXT, Text, TextError, bundled_text
from components import jobs

SPEC = "model_spec"
GOOD_SPEC = "model_spec_loaded"
MODEL_ERROR = "model_error"
TEXT = "calibration_text"
TEXT_ERROR = "text_error"
CALIBRATION = "calibration"
CALIBRATION_CHOICE = "calibration_choice"  # (fingerprint, CalibrationChoice) of the model's default calibration
CALIBRATION_BY_USER = "calibration_by_user"  # the user applied windows in the sidebar: keep them for every model
PRUNE_SELECTION = "prune_selection"
VARIANTS = "variants"
COMPARE = "compare_variant"
PRUNE_SOURCE = "prune_selection_source"


@st.cache_resource(max_entries=1, show_spinner=False)
def _load(
    source: str, device: str, dtype: str, device_map_auto: bool, trust_remote_code: bool, max_memory: str = ""
) -> LoadedModel:
    return load_model(ModelSpec(source, device, dtype, device_map_auto, trust_remote_code, max_memory))


def request_model(spec: ModelSpec) -> None:
    """Ask for another model; it is loaded on the next call to :func:`loaded_model`."""
    st.session_state[SPEC] = spec
    st.session_state.pop(MODEL_ERROR, None)


def loaded_model() -> LoadedModel | None:
    """The model of this session, loading it if needed; on failure the previous model and an error message."""
    spec: ModelSpec = st.session_state.get(SPEC) or ModelSpec()
    st.session_state.setdefault(SPEC, spec)
    try:
        with st.spinner(f"Loading {spec.source} … (the bundled GGUF is de-quantised once, ~20 s, then cached)"):
            lm = _load(
                spec.source, spec.device, spec.dtype, spec.device_map_auto, spec.trust_remote_code, spec.max_memory
            )
        st.session_state[GOOD_SPEC] = spec
        _default_calibration(lm)
        return lm
    except ModelLoadError as exc:
        st.session_state[MODEL_ERROR] = str(exc)
    except Exception as exc:  # an unexpected failure inside transformers: still a message, never a traceback
        st.session_state[MODEL_ERROR] = f"loading {spec.source!r} failed: {type(exc).__name__}: {exc}"
    good = st.session_state.get(GOOD_SPEC)
    if good is not None and good != spec:
        st.session_state[SPEC] = good
        try:
            return _load(
                good.source, good.device, good.dtype, good.device_map_auto, good.trust_remote_code, good.max_memory
            )
        except Exception:
            return None
    return None


def calibration_text() -> Text | None:
    if TEXT not in st.session_state:
        try:
            st.session_state[TEXT] = bundled_text(DEFAULT_CALIBRATION_TEXT)
        except TextError as exc:
            st.session_state[TEXT_ERROR] = str(exc)
            return None
    return st.session_state[TEXT]


def set_calibration_text(text: Text) -> None:
    st.session_state[TEXT] = text
    st.session_state.pop(TEXT_ERROR, None)


def calibration() -> Calibration:
    return st.session_state.setdefault(CALIBRATION, Calibration())


def set_calibration(cal: Calibration) -> None:
    """The windows the user applied in the sidebar (kept for every model from then on)."""
    st.session_state[CALIBRATION] = cal
    st.session_state[CALIBRATION_BY_USER] = True


def _default_calibration(lm: LoadedModel) -> None:
    """Until the user applies windows of their own, the calibration is the one chosen for the loaded model's width
    and depth (:func:`analysis.capture.defaults.default_calibration`)."""
    from dataclasses import replace

    from analysis.capture.defaults import default_calibration

    done = st.session_state.get(CALIBRATION_CHOICE)
    if done is not None and done[0] == lm.fingerprint:
        return
    try:
        choice = default_calibration(lm.config)
    except ModelLoadError:  # a results folder computed elsewhere has no configuration to choose from
        return
    st.session_state[CALIBRATION_CHOICE] = (lm.fingerprint, choice)
    cal = calibration()
    before = done[1] if done is not None else Calibration()  # the default the windows were set to, if untouched
    untouched = (cal.n_windows, cal.window_len, cal.storage) == (before.n_windows, before.window_len, before.storage)
    if untouched and not st.session_state.get(CALIBRATION_BY_USER):
        st.session_state[CALIBRATION] = replace(
            cal, n_windows=choice.n_windows, window_len=choice.window_len, storage=choice.storage
        )


def calibration_choice():
    """The default calibration chosen for the loaded model (a ``CalibrationChoice``), or ``None``."""
    done = st.session_state.get(CALIBRATION_CHOICE)
    return done[1] if done else None


def workspace() -> Workspace | None:
    """The workspace of this session, or ``None`` (with the reason shown in the page)."""
    lm = loaded_model()
    if lm is None:
        st.error(st.session_state.get(MODEL_ERROR, "No model is loaded."))
        st.info("Choose a model in the sidebar: 'default', a Hugging Face id, a local folder or a .gguf file.")
        return None
    if lm.source_kind == "results":
        return results_workspace(lm)
    text = calibration_text()
    if text is None:
        st.error(st.session_state.get(TEXT_ERROR, "No calibration text."))
        return None
    return Workspace(lm=lm, text=text, calibration=calibration())


def results_workspace(lm) -> Workspace:
    """A results folder brings its own text and windows: the cached results are keyed by them."""
    from pathlib import Path

    from analysis.texts import text_from_string

    info = lm.calibration
    text_info = info.get("text") or {}
    content = Path(info["text_file"]).read_text(encoding="utf-8")
    text = text_from_string(content, name=text_info.get("name", "text"), source=text_info.get("source", "bundled"))
    cal = Calibration(
        **{k: v for k, v in (info.get("calibration") or {}).items() if k in Calibration.__dataclass_fields__}
    )
    st.caption(
        f"Results-only model: text **{text.label}** and windows {cal.n_windows} × {cal.window_len} come from "
        "the results folder."
    )
    return Workspace(lm=lm, text=text, calibration=cal)


# ---- the per-tab store ---------------------------------------------------------------------------------------------

_TABS: OrderedDict[str, dict] = OrderedDict()
_TABS_LOCK = threading.Lock()
MAX_TABS = 256  # tabs remembered per server process (the least recently used is forgotten first)


def tab_store() -> dict:
    """This browser tab's store on the server: a dict that outlives the Streamlit session (a reload) and page
    switches, keyed by the tab's id in the URL (:func:`components.jobs.owner`). Small plain values only."""
    tab = jobs.owner()
    with _TABS_LOCK:
        store = _TABS.pop(tab, None)
        if store is None:
            store = {}
        _TABS[tab] = store  # most recently used last
        while len(_TABS) > MAX_TABS:
            _TABS.popitem(last=False)
        return store


def set_prune_selection(blocks: list[int], source: str) -> None:
    """Replace the block selection of the prune page (and say where it came from)."""
    st.session_state[PRUNE_SELECTION] = sorted(int(b) for b in blocks)
    st.session_state[PRUNE_SOURCE] = source
    st.session_state[PRUNE_SELECTION + "_version"] = st.session_state.get(PRUNE_SELECTION + "_version", 0) + 1
    _keep_prune_selection()


def _keep_prune_selection() -> None:
    tab_store()[PRUNE_SELECTION] = (list(st.session_state.get(PRUNE_SELECTION, [])), st.session_state.get(PRUNE_SOURCE))


def restore_prune_selection(n_blocks: int) -> None:
    """After a reload (a new session): the prune page's selection and its source come back from the tab's store
    (blocks beyond this model's ``n_blocks`` are dropped)."""
    if PRUNE_SELECTION in st.session_state:
        return
    kept = tab_store().get(PRUNE_SELECTION)
    if not kept:
        return
    blocks, source = kept
    st.session_state[PRUNE_SELECTION] = sorted(int(b) for b in blocks if 0 <= int(b) < n_blocks)
    if source:
        st.session_state[PRUNE_SOURCE] = source


def send_to_prune(blocks: list[int], source: str) -> None:
    """Hand a block selection to the prune page and open it."""
    set_prune_selection(blocks, source)
    st.switch_page("pages/prune.py")


def sync_widget(widget_key: str, value_key: str) -> bool:
    """Load a value set elsewhere (``value_key``) into a widget's state once per change; True when it did."""
    version = st.session_state.get(value_key + "_version", 0)
    if st.session_state.get(widget_key + "_synced") != version or widget_key not in st.session_state:
        st.session_state[widget_key] = list(st.session_state.get(value_key, []))
        st.session_state[widget_key + "_synced"] = version
        return version > 0
    return False


KEPT = "_kept_widgets"


def keep_widgets(keys: list[str], context: str = "") -> None:
    """Let keyed widgets keep their values across navigation and reload (and while a page's job runs elsewhere).

    Streamlit drops a widget's state once a run does not draw it (another page was opened), and all of it on a
    reload (a new session). Call this before the widgets are drawn: the values of live widgets are copied to the
    tab's store on the server (:func:`tab_store`), and a widget whose state was dropped is re-seeded from it. ``context`` (e.g. the model's fingerprint) keeps values
    from being re-seeded into a page drawn for another model, whose options differ.
    """
    store = tab_store().setdefault(KEPT, {})  # on the server, per tab: survives a reload too
    for k in keys:
        if k in st.session_state:
            store[k] = (context, st.session_state[k])
        elif k in store and store[k][0] == context:
            st.session_state[k] = store[k][1]


def widget_to_selection(widget_key: str) -> None:
    """on_change of the block picker: the widget becomes the selection (typed by hand)."""
    st.session_state[PRUNE_SELECTION] = sorted(st.session_state.get(widget_key, []))
    st.session_state[PRUNE_SOURCE] = "chosen by hand"
    _keep_prune_selection()


def variants() -> list:
    """The variants kept in this session for the current model (newest last)."""
    lm = loaded_model()
    return [v for v in st.session_state.get(VARIANTS, []) if lm is None or v.base_fingerprint == lm.fingerprint]


def add_variant(variant) -> None:
    """Keep a variant (a variant with the same name is replaced)."""
    kept = [v for v in st.session_state.get(VARIANTS, []) if v.name != variant.name]
    st.session_state[VARIANTS] = kept + [variant]


def remove_variant(name: str) -> None:
    st.session_state[VARIANTS] = [v for v in st.session_state.get(VARIANTS, []) if v.name != name]
    if st.session_state.get(COMPARE) == name:
        st.session_state.pop(COMPARE, None)


def latest_variant(kind: str | None = None):
    """The newest variant (optionally only those whose action has key ``kind``)."""
    for v in reversed(variants()):
        if kind is None or v.action.get(kind):
            return v
    return None


def compare_variant():
    """The variant chosen in the sidebar for side-by-side comparison on metric pages, if any."""
    name = st.session_state.get(COMPARE)
    return next((v for v in variants() if v.name == name), None)


def compare_workspace(ws):
    """A workspace on the compared variant (same text and windows), or ``None``."""
    from analysis.capture.workspace import Workspace

    v = compare_variant()
    if v is None or ws is None:
        return None
    cache_key = ("compare-lm", v.name, id(v.model))
    if st.session_state.get("_compare_lm_key") != cache_key:
        st.session_state["_compare_lm"] = v.as_loaded_model(ws.lm)
        st.session_state["_compare_lm_key"] = cache_key
    return Workspace(lm=st.session_state["_compare_lm"], text=ws.text, calibration=ws.calibration)
