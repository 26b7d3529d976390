"""Prune and evaluate: pick blocks, apply, compare with the original, export a checkpoint."""

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import registry
from analysis.evaluate import EvalSettings, EvaluationError, evaluate
from analysis.recipe import pruning_recipe
from analysis.surgery import PruneError, export_checkpoint, validate_removal, verify_export
from analysis.texts import BUNDLED, DEFAULT_EVALUATION_TEXT, TextError, bundled_text
from analysis.variants import Variant, apply_actions
from components import state
from components.evaluation import evaluation_view
from components.widgets import run_with_progress, text_bytes_download, workspace_caption

RESULT = "prune_result"

st.title("Prune and evaluate")
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
L = ws.n_blocks

st.header("1 · Choose blocks to remove")
source = st.session_state.get(state.PRUNE_SOURCE)
state.sync_widget("prune-blocks", state.PRUNE_SELECTION)
if source and st.session_state.get("prune-blocks"):
    st.info(f"Selection from **{source}**.")
available = [m for m in registry.metrics() if m.cached(ws)]
with st.expander("Use a metric's suggestion", expanded=not st.session_state.get("prune-blocks")):
    if not available:
        st.caption("No metric has been computed for this model and text yet: open a view (e.g. Linearity) first.")
    else:
        c = st.columns([3, 1, 1])
        metric = c[0].selectbox("Metric", available, format_func=lambda m: f"{m.label} ({m.direction_text})")
        k = c[1].number_input("Blocks", 1, L - 1, max(1, L // 8))
        c[2].write("")
        if c[2].button("Use suggestion"):
            state.set_prune_selection(metric.suggest(ws, int(k)), f"{metric.label} (k={k})")
            st.rerun()
st.multiselect("Blocks to remove (0-based)", list(range(L)), key="prune-blocks",
               on_change=state.widget_to_selection, args=("prune-blocks",),
               help="block b maps hidden state h_b to h_(b+1)")

st.header("2 · Evaluate against the original")
with st.form("evaluate-form"):
    c = st.columns(4)
    names = list(BUNDLED)
    eval_name = c[0].selectbox("Held-out text", names, index=names.index(DEFAULT_EVALUATION_TEXT),
                               help="evaluate on text different from the calibration text")
    n_tokens = c[1].number_input("Tokens", 256, 65536, 4096, step=256)
    context = c[2].number_input("Context", 16, 8192, 512, step=64)
    stride = c[3].number_input("Stride", 1, 8192, 256, step=64)
    c = st.columns([3, 1, 1])
    prompt = c[0].text_input("Generation prompt", EvalSettings().prompt)
    new_tokens = c[1].number_input("New tokens", 1, 512, 32)
    speed = c[2].checkbox("Measure speed", True)
    applied = st.form_submit_button("Apply and evaluate", type="primary")

if applied:
    blocks = st.session_state.get("prune-blocks") or []
    settings = EvalSettings(text=eval_name, n_tokens=int(n_tokens), context=int(context), stride=int(stride),
                            prompt=prompt, max_new_tokens=int(new_tokens), measure_speed=speed)
    try:
        blocks = validate_removal(blocks, L)
        settings.validate()
        eval_text = bundled_text(eval_name)
        action = {"remove_blocks": blocks}
        pruned = apply_actions(ws.lm.model, action)
        table = run_with_progress("Evaluating", lambda p: evaluate(
            ws.lm.model, ws.lm.tokenizer, eval_text, settings, candidate=pruned, candidate_name="pruned",
            original_key=ws.lm.fingerprint, progress=p))
        recipe = pruning_recipe(ws, blocks, evaluation=table.to_dict(),
                                metrics={"selection_source": st.session_state.get(state.PRUNE_SOURCE)})
        st.session_state[RESULT] = Variant(name=f"minus {','.join(map(str, blocks))}", model=pruned, action=action,
                                           base_fingerprint=ws.lm.fingerprint, evaluation=table, recipe=recipe)
    except (PruneError, EvaluationError, TextError) as exc:
        st.error(str(exc))

variant: Variant | None = st.session_state.get(RESULT)
if variant is not None and variant.base_fingerprint != ws.lm.fingerprint:
    variant = None  # evaluated on another model
if variant is None:
    st.caption("Nothing applied yet: pick blocks and press **Apply and evaluate**.")
    st.stop()

st.subheader(f"Original against {variant.name}")
evaluation_view(variant.evaluation)

st.header("3 · Export")
slug = re.sub(r"[^A-Za-z0-9]+", "-", ws.lm.name.split(" ")[0]).strip("-").lower()
default_dir = Path("exports") / f"{slug}-minus-{'-'.join(map(str, variant.removed_blocks))}"
with st.form("export-form"):
    out_dir = st.text_input("Export folder", str(default_dir),
                            help="a Hugging Face folder: safetensors, tokenizer, config, recipe.json")
    overwrite = st.checkbox("Replace the folder if it is not empty")
    do_export = st.form_submit_button("Export checkpoint")
if do_export:
    recipe = dict(variant.recipe, export={"path": str(Path(out_dir).resolve()), "form": "dense"})
    try:
        path = run_with_progress("Exporting", lambda p: export_checkpoint(
            variant.model, ws.lm.tokenizer, out_dir, recipe, overwrite=overwrite))
        check = run_with_progress("Reloading with plain AutoModelForCausalLM",
                                  lambda p: verify_export(path, variant.model, ws.lm.tokenizer))
        st.session_state["last_export"] = {"path": str(path), "check": check}
        variant.recipe = recipe
    except FileExistsError as exc:
        st.warning(f"{exc}. Tick 'Replace the folder' to overwrite it.")
    except OSError as exc:
        st.error(f"Could not write {out_dir}: {exc}")
export = st.session_state.get("last_export")
if export:
    check = export["check"]
    if check["ok"]:
        st.success(f"Exported to `{export['path']}` and reloaded with plain `AutoModelForCausalLM`: "
                   f"{check['blocks']} blocks, max |Δ logit| = {check['max_abs_logit_diff']:.2e} on "
                   f"{check['tokens']} tokens, same top-1 everywhere.")
    else:
        st.error(f"The reloaded checkpoint differs from the in-memory model: {check}")
    st.code(f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained({export['path']!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({export['path']!r})", language="python")
    text_bytes_download(Path(export["path"], "recipe.json").read_text(), "recipe.json", "⬇ recipe.json")
