"""A second model beside the session's one, for charts that compare two models on the same text.

The second model gets its own ``st.cache_resource(max_entries=1)`` slot, so it never evicts the main model (and at
most one extra model is held). A pruned variant from the prune page is wrapped in a ``LoadedModel`` that shares the
original's weights; its fingerprint is computed once per variant and kept in the session.
"""

from __future__ import annotations

import streamlit as st

from analysis.changes.variant import Variant
from analysis.model.architecture import ModelLoadError
from analysis.model.extra_models import GEMMA_LABEL, gemma_gguf_path, gemma_installed
from analysis.model.loading import LoadedModel, ModelSpec, load_model
from components import state

_DERIVED = "comparison_derived_model"


@st.cache_resource(max_entries=1, show_spinner=False)
def _load_second(source: str, device: str, dtype: str) -> LoadedModel:
    return load_model(ModelSpec(source=source, device=device, dtype=dtype))


def pruned_variant(base: LoadedModel) -> Variant | None:
    """The variant chosen under *Compare with* in the sidebar, else the newest one, if made from ``base``."""
    v = state.compare_variant() or state.latest_variant()
    if isinstance(v, Variant) and v.base_fingerprint == base.fingerprint:
        return v
    return None


def variant_model(base: LoadedModel, variant: Variant) -> LoadedModel:
    """The pruned variant as a ``LoadedModel`` (fingerprinted once per variant)."""
    held = st.session_state.get(_DERIVED)
    if held is not None and held[0] is variant.model:
        return held[1]
    lm = variant.as_loaded_model(base)
    st.session_state[_DERIVED] = (variant.model, lm)
    return lm


def options(base: LoadedModel) -> dict[str, str]:
    """What can be compared with ``base``: ``{key: label}``."""
    out = {"none": "nothing"}
    v = pruned_variant(base)
    out["pruned"] = f"the variant {v.name}" if v else "a variant (apply one on the prune or compress page first)"
    out["gemma"] = GEMMA_LABEL if gemma_installed() else f"{GEMMA_LABEL} (not installed: `make gemma`)"
    out["other"] = "another model (id, folder or .gguf)"
    return out


def second_model(kind: str, base: LoadedModel, source: str = "") -> LoadedModel:
    """Load (or wrap) the model to compare with; raises ``ModelLoadError`` with a message a user can act on."""
    if kind == "pruned":
        v = pruned_variant(base)
        if v is None:
            raise ModelLoadError("no variant of this model yet: apply a change on the prune or compress page first")
        return variant_model(base, v)
    if kind == "gemma":
        source = str(gemma_gguf_path())
    elif kind == "other":
        source = source.strip()
        if not source:
            raise ModelLoadError("enter a model: a Hugging Face id, a local checkpoint folder or a .gguf file")
        if source == base.spec.source:
            return base
    else:
        raise ModelLoadError(f"nothing to compare with ({kind!r})")
    return _load_second(source, base.spec.device, base.spec.dtype)


def compared_variant_section(ws, what: str, same: str, key: str):
    """The section of a metric page that draws the sidebar's *Compare with* variant beside the original.

    Shows the header and what is held equal (``same``), and an opt-in toggle (computing ``what`` on the variant
    costs as much as on the original). Returns ``(workspace on the variant, its name)`` once the user asked for it,
    else ``None``.
    """
    other = state.compare_workspace(ws)
    if other is None:
        return None
    name = state.compare_variant().name
    st.header(f"Compared with {name}")
    st.caption(
        f"The variant chosen under *Compare with* in the sidebar, {same}; depth as a fraction of each model's "
        "depth (a pruned variant has fewer blocks)."
    )
    if not st.toggle(f"Compute {what} on {name} too", key=key):
        return None
    return other, name
