"""Applying a change, evaluating it against the original, keeping it as a variant, and exporting it.

Shared by every page that changes the model (prune, compress, recipe): one evaluation form, one evaluation table,
one export form, so that depth pruning and rank truncation are evaluated and exported the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from analysis.checkpoint import load_checkpoint, needs_project_loader, save_checkpoint
from analysis.compression import low_rank_ranks, record_of
from analysis.evaluate import EvalSettings, EvaluationError, evaluate
from analysis.models import ModelLoadError
from analysis.recipe import candidate_name, variant_recipe
from analysis.surgery import PruneError, export_checkpoint, verify_export
from analysis.texts import BUNDLED, DEFAULT_EVALUATION_TEXT, TextError, bundled_text
from analysis.variants import Variant, apply_actions, describe_action
from components import state
from components.evaluation import evaluation_view
from components.widgets import run_with_progress, text_bytes_download

# export forms: name -> (label, save_fn(model, directory) or None for save_pretrained, loader for the reload check).
# Both go through analysis.checkpoint: dense multiplies factorised matrices out (plain AutoModelForCausalLM reloads
# it unless blocks were replaced by linear maps, which config.json then records); factorised stores B·A.
EXPORT_FORMS: dict[str, tuple[str, object, object]] = {
    "dense": ("dense: a plain checkpoint AutoModelForCausalLM reloads",
              lambda model, directory: save_checkpoint(model, directory, "dense"), load_checkpoint),
    "factorised": ("factorised: each low-rank matrix stored as B·A (a smaller file; the project's loader)",
                   lambda model, directory: save_checkpoint(model, directory, "factorised"), load_checkpoint),
}


def evaluation_form(key: str, submit_label: str = "Apply and evaluate") -> EvalSettings | None:
    """The evaluation settings form; returns the settings when the user presses the button."""
    with st.form(f"evaluate-{key}"):
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
        if st.form_submit_button(submit_label, type="primary"):
            return EvalSettings(text=eval_name, n_tokens=int(n_tokens), context=int(context), stride=int(stride),
                                prompt=prompt, max_new_tokens=int(new_tokens), measure_speed=speed)
    return None


def apply_and_evaluate(ws, action: dict, settings: EvalSettings, name: str | None = None,
                       metrics: dict | None = None) -> Variant | None:
    """Apply ``action`` to the original, evaluate it, keep it as a session variant; errors end in the page."""
    try:
        settings.validate()
        eval_text = bundled_text(settings.text)
        model = run_with_progress("Applying", lambda p: apply_actions(ws.lm.model, action, ws, progress=p))
        cname = candidate_name(action)
        table = run_with_progress("Evaluating", lambda p: evaluate(
            ws.lm.model, ws.lm.tokenizer, eval_text, settings, candidate=model, candidate_name=cname,
            original_key=ws.lm.fingerprint, progress=p))
    except (PruneError, EvaluationError, TextError, ValueError, ModelLoadError) as exc:
        st.error(str(exc))  # ModelLoadError: a results-only folder has no weights to change
        return None
    recipe = variant_recipe(ws, action, evaluation=table.to_dict(), metrics=metrics, model=model)
    variant = Variant(name=name or describe_action(action), model=model, action=action,
                      base_fingerprint=ws.lm.fingerprint, evaluation=table, recipe=recipe)
    recipe["name"] = variant.name
    state.add_variant(variant)
    for note in (record_of(model).get("low_rank") or {}).get("notes", []):
        st.warning(note)
    return variant


def variant_result(ws, variant: Variant | None) -> None:
    if variant is None:
        return
    st.subheader(f"Original against {variant.name}")
    evaluation_view(variant.evaluation)


def export_section(ws, variant: Variant, key: str, forms: tuple[str, ...] = ("dense",)) -> None:
    """Export a variant: a Hugging Face folder with recipe.json, reloaded and compared with the in-memory model."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ws.lm.name.split(" ")[0]).strip("-").lower()
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", variant.name).strip("-").lower()
    default_dir = Path("exports") / f"{slug}-{suffix}"
    with st.form(f"export-{key}"):
        out_dir = st.text_input("Export folder", str(default_dir),
                                help="a Hugging Face folder: safetensors, tokenizer, config, recipe.json")
        available = [f for f in forms if f in EXPORT_FORMS and (f != "factorised" or low_rank_ranks(variant.model))]
        form = st.radio("Form", available, format_func=lambda f: EXPORT_FORMS[f][0], horizontal=True) \
            if len(available) > 1 else available[0]
        overwrite = st.checkbox("Replace the folder if it is not empty")
        do_export = st.form_submit_button("Export checkpoint")
    if do_export:
        _, save_fn, loader = EXPORT_FORMS[form]
        recipe = dict(variant.recipe, export={"path": str(Path(out_dir).resolve()), "form": form})
        try:
            path = run_with_progress("Exporting", lambda p: export_checkpoint(
                variant.model, ws.lm.tokenizer, out_dir, recipe, overwrite=overwrite, save_fn=save_fn))
            check = run_with_progress("Reloading", lambda p: verify_export(path, variant.model, ws.lm.tokenizer,
                                                                          loader=loader))
            st.session_state[f"last-export-{key}"] = {"path": str(path), "check": check, "form": form,
                                                      "size": sum(f.stat().st_size for f in Path(path).iterdir())}
            variant.recipe = recipe
        except FileExistsError as exc:
            st.warning(f"{exc}. Tick 'Replace the folder' to overwrite it.")
        except OSError as exc:
            st.error(f"Could not write {out_dir}: {exc}")
    export = st.session_state.get(f"last-export-{key}")
    if not export:
        return
    check = export["check"]
    plain = not needs_project_loader(export["path"])
    how = "plain `AutoModelForCausalLM`" if plain else "the project's loader (`analysis.checkpoint.load_checkpoint`)"
    if check["ok"]:
        st.success(f"Exported to `{export['path']}` ({export['size'] / 2**20:,.1f} MiB) and reloaded with {how}: "
                   f"{check['blocks']} blocks, max |Δ logit| = {check['max_abs_logit_diff']:.2e} on "
                   f"{check['tokens']} tokens, same top-1 everywhere.")
    else:
        st.error(f"The reloaded checkpoint differs from the in-memory model: {check}")
    if plain:
        st.code(f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"model = AutoModelForCausalLM.from_pretrained({export['path']!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({export['path']!r})", language="python")
    else:
        st.caption("config.json records the factorised matrices (`layerscope_factorised`) or the linear blocks "
                   "(`layerscope_linear_blocks`): plain `from_pretrained` would fill them with random weights. "
                   "`python -m analysis evaluate --model DIR` and the sidebar load it with the project's loader.")
        st.code(f"from analysis.checkpoint import load_checkpoint  # this repository on PYTHONPATH\n"
                f"from transformers import AutoTokenizer\n"
                f"model = load_checkpoint({export['path']!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({export['path']!r})", language="python")
    text_bytes_download(Path(export["path"], "recipe.json").read_text(), "recipe.json", "⬇ recipe.json")
