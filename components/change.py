"""Applying a change, evaluating it against the original, keeping it as a variant, and exporting it.

Shared by every page that changes the model (prune, compress, recipe): one evaluation form, one evaluation table,
one export form, so that depth pruning and rank truncation are evaluated and exported the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from analysis import destinations
from analysis.cache import stable_hash
from analysis.changes.low_rank import low_rank_ranks, record_of
from analysis.changes.variant import (
    Variant,
    describe_action,
    validate_action,
)
from analysis.errors import LayerScopeError
from analysis.evaluation.perplexity import EvalSettings, EvaluationError, estimate_seconds
from analysis.model.checkpoint import (
    needs_project_loader,
)
from analysis.texts import BUNDLED, DEFAULT_EVALUATION_TEXT, TextError, bundled_text
from analysis.workflow.variants import EXPORT_FORMS, export_variant, make_variant
from components import jobs, state
from components.evaluation import evaluation_view
from components.widgets import run_with_progress, text_bytes_download

# Export forms (analysis.workflow.variants.EXPORT_FORMS): dense multiplies factorised matrices out (plain
# AutoModelForCausalLM reloads it unless blocks were replaced by linear maps, which config.json then records);
# factorised stores B·A. A GGUF file (llama.cpp, Ollama, LM Studio) can be added to a dense export.
GGUF_CHOICES = ("none", "f16", "q8_0", "q4_0")


def evaluation_form(
    key: str, submit_label: str = "Apply and evaluate", ws=None, candidate_share: float = 1.0
) -> EvalSettings | None:
    """The evaluation settings form; returns the settings when the user presses the button.

    With ``ws``: below the form, how long the evaluation will take with the settings shown (a short timed probe
    of the model, once per model; ``candidate_share`` = the candidate's cost relative to the original)."""
    k = f"eval-{key}-"  # keyed and kept (components.state.keep_widgets): the settings survive navigation and reload
    state.keep_widgets([k + n for n in ("text", "tokens", "context", "stride", "prompt", "new", "speed")])
    settings = _evaluation_form(key, k, submit_label)
    if ws is not None and settings is None:
        shown = _settings_from_widgets(k)
        if shown is not None:
            est = evaluation_estimate(ws, shown, candidate_share)
            if est is not None:
                st.caption(
                    f"Estimated time of the evaluation with these settings: about "
                    f"**{jobs.format_seconds(est['seconds'])}** on this machine now (the original and the "
                    f"candidate{', with interleaved speed timing' if shown.measure_speed else ''}; from "
                    f"{est['basis']}). It runs in the background with its progress shown."
                )
    return settings


def _settings_from_widgets(k: str) -> EvalSettings | None:
    """The evaluation settings the form shows now (its keyed widgets' values), or None if not drawn yet."""
    try:
        v = st.session_state
        return EvalSettings(
            text=v[k + "text"],
            n_tokens=int(v[k + "tokens"]),
            context=int(v[k + "context"]),
            stride=int(v[k + "stride"]),
            prompt=v[k + "prompt"],
            max_new_tokens=int(v[k + "new"]),
            measure_speed=bool(v[k + "speed"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def session_probe(ws) -> dict:
    """A forward of the model timed once per session and model (``analysis.capture.estimate.forward_probe``);
    raises LayerScopeError when the model has no weights to time (a results folder computed elsewhere)."""
    from analysis.capture.estimate import forward_probe

    kept = st.session_state.get("_forward_probe")
    if not kept or kept[0] != ws.lm.fingerprint:
        kept = (ws.lm.fingerprint, forward_probe(ws.lm))
        st.session_state["_forward_probe"] = kept
    return kept[1]


def evaluation_estimate(ws, settings: EvalSettings, candidate_share: float = 1.0) -> dict | None:
    """Seconds an Apply-and-evaluate with ``settings`` will take: the original and a candidate of
    ``candidate_share`` of its cost (``analysis.evaluation.perplexity.estimate_seconds``). None when the settings
    are invalid or the model has no weights to time."""
    try:
        settings.validate()
        bundled_text(settings.text)
        return estimate_seconds(
            ws.lm, settings, n_models=2, candidate_fraction=candidate_share, probe=session_probe(ws)
        )
    except (LayerScopeError, ValueError):
        return None


def variant_estimate(ws, action: dict, settings: EvalSettings) -> dict | None:
    """Seconds the Apply job will take (``analysis.workflow.variants.estimate_variant``: the change timed now, then
    the evaluation); None when the model has no weights to time."""
    from analysis.workflow.variants import estimate_variant

    try:
        return estimate_variant(ws, action, settings, probe=session_probe(ws))
    except LayerScopeError:
        return None


def _evaluation_form(key: str, k: str, submit_label: str) -> EvalSettings | None:
    with st.form(f"evaluate-{key}"):
        c = st.columns(4)
        names = list(BUNDLED)
        eval_name = c[0].selectbox(
            "Held-out text",
            names,
            index=names.index(DEFAULT_EVALUATION_TEXT),
            help="evaluate on text different from the calibration text",
            key=k + "text",
        )
        n_tokens = c[1].number_input("Tokens", 256, 65536, 4096, step=256, key=k + "tokens")
        context = c[2].number_input("Context", 16, 8192, 512, step=64, key=k + "context")
        stride = c[3].number_input("Stride", 1, 8192, 256, step=64, key=k + "stride")
        c = st.columns([3, 1, 1])
        prompt = c[0].text_input("Generation prompt", EvalSettings().prompt, key=k + "prompt")
        new_tokens = c[1].number_input("New tokens", 1, 512, 32, key=k + "new")
        speed = c[2].checkbox("Measure speed", True, key=k + "speed")
        if st.form_submit_button(submit_label, type="primary"):
            return EvalSettings(
                text=eval_name,
                n_tokens=int(n_tokens),
                context=int(context),
                stride=int(stride),
                prompt=prompt,
                max_new_tokens=int(new_tokens),
                measure_speed=speed,
            )
    return None


def apply_and_evaluate(
    ws, action: dict, settings: EvalSettings, name: str | None = None, metrics: dict | None = None
) -> Variant | None:
    """Apply ``action`` to the original, evaluate it, keep it as a session variant; errors end in the page."""
    try:
        settings.validate()
        bundled_text(settings.text)
        variant = run_with_progress(
            "Applying and evaluating",
            lambda p: make_variant(ws, action, settings, name=name, metrics=metrics, progress=p),
        )
    except LayerScopeError as exc:  # ModelLoadError too: a results-only folder has no weights to change
        st.error(str(exc))
        return None
    state.add_variant(variant)
    model = variant.model
    for note in (record_of(model).get("low_rank") or {}).get("notes", []):
        st.warning(note)
    return variant


def apply_work(ws, action: dict, settings: EvalSettings, name: str | None = None, metrics: dict | None = None):
    """The job of an Apply: apply ``action`` to the original, evaluate it, return the :class:`Variant`.

    Runs in a worker thread (components.jobs): plain data in, no Streamlit here.
    """

    def work(job):
        variant = make_variant(
            ws, action, settings, name=name, metrics=metrics, progress=job.report, stage=job.set_stage
        )
        job.check()
        return variant

    return work


def start_apply(
    ws, tag: str, action: dict, settings: EvalSettings, name: str | None = None, metrics: dict | None = None
):
    """Start Apply-and-evaluate as this session's background job (checked first: bad input is one message here).

    ``tag`` names the page (``prune``, ``compress``, ``replace``); :func:`apply_panel` draws the job and hands its
    variant to the session. Returns the job, or None after an error message.
    """
    try:
        settings.validate()
        bundled_text(settings.text)
        validate_action(action)
    except (EvaluationError, TextError, ValueError) as exc:
        st.error(str(exc))
        return None
    name = name or describe_action(action)
    est = variant_estimate(ws, action, settings)
    key = (
        "apply:"
        + jobs.owner()
        + ":"
        + stable_hash(
            {
                "base": ws.lm.fingerprint,
                "text": ws.text.sha256,
                "calibration": ws.calibration.__dict__,
                "action": action,
                "settings": settings.to_dict(),
                "name": name,
                "metrics": metrics,
            }
        )
    )
    job = jobs.start(
        key,
        f"Apply and evaluate {name}",
        apply_work(ws, action, settings, name, metrics),
        meta={
            "tag": tag,
            "name": name,
            "action": action,
            "base": ws.lm.fingerprint,
            "estimate_s": est["seconds"] if est else None,
        },
        restart=True,
    )  # pressed again: evaluated again (speed included), unless it is still running
    st.session_state[f"apply-job-{tag}"] = key
    return job


def apply_panel(ws, tag: str):
    """The page's Apply job (this session's, or after a reload the owner's last one): its live panel while it runs;
    once done its variant is in the session's variants (and its warnings shown). Returns the job or None."""
    key = st.session_state.get(f"apply-job-{tag}")
    if jobs.get(key) is None:
        last = jobs.latest(tag)
        key = last.key if last is not None and last.meta.get("base") == ws.lm.fingerprint else None
    if key is None:
        return None
    st.session_state[f"apply-job-{tag}"] = key

    def done(job) -> None:
        for note in (record_of(job.result.model).get("low_rank") or {}).get("notes", []):
            st.warning(note)

    return jobs.show(key, on_done=done)


def result_marker(
    variant: Variant, part: str, selected: list[int], what: str = "selection", evaluated: list[int] | None = None
) -> bool:
    """Say which selection the shown result belongs to; warn when the selection has changed since. True if stale.

    ``evaluated``: the variant's blocks when its action ``part`` is not a plain block list (e.g. ReplaceMe's run)."""
    if evaluated is None:
        evaluated = variant.action.get(part) or []
    evaluated = sorted(int(b) for b in evaluated)
    now = sorted(int(b) for b in selected or [])
    blocks = ", ".join(map(str, evaluated)) or "none"
    if evaluated == now:
        st.caption(f"Result for the current {what}: blocks {blocks} (variant **{variant.name}**).")
        return False
    st.warning(
        f"**Stale result**: the evaluation and export below belong to blocks {blocks} (variant "
        f"**{variant.name}**), not to the current {what} ({', '.join(map(str, now)) or 'none'}). Press "
        "**Apply and evaluate** to evaluate the current one.",
        icon=":material/history:",
    )
    return True


def variant_result(ws, variant: Variant | None) -> None:
    if variant is None:
        return
    st.subheader(f"Original against {variant.name}")
    evaluation_view(variant.evaluation)


def _export(ws, variant: Variant, key: str, out_dir: str, form: str, overwrite: bool, gguf: str | None = None) -> None:
    """Write the export (the destination is checked again inside ``export_checkpoint``) and reload it."""
    try:
        recipe = run_with_progress(
            "Exporting and reloading",
            lambda p: export_variant(
                variant.model,
                ws.lm.tokenizer,
                out_dir,
                variant.recipe,
                form=form,
                overwrite=overwrite,
                gguf=gguf if gguf and gguf != "none" else None,
            ),
        )
        export = recipe["export"]
        st.session_state[f"last-export-{key}"] = {
            "path": export["path"],
            "check": export["reload_check"],
            "form": form,
            "size": export["size_bytes"],
            "gguf": export.get("gguf"),
        }
        variant.recipe = recipe
    except LayerScopeError as exc:  # a refused destination, a family the GGUF writer does not know …
        st.error(f"{exc}")
    except OSError as exc:
        st.error(f"Could not write {out_dir}: {exc}")


def export_section(ws, variant: Variant, key: str, forms: tuple[str, ...] = ("dense",)) -> None:
    """Export a variant: a Hugging Face folder with recipe.json, reloaded and compared with the in-memory model."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ws.lm.name.split(" ")[0]).strip("-").lower()
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", variant.name).strip("-").lower()
    default_dir = Path("exports") / f"{slug}-{suffix}"
    # the folder is kept across navigation, per variant (a session key that is not the widget's, which is re-seeded
    # when Streamlit dropped it or another variant is shown)
    folders = st.session_state.setdefault(f"export-dir-{key}", {})
    widget = f"export-folder-{key}"
    if widget not in st.session_state or st.session_state.get(widget + "-for") != variant.name:
        st.session_state[widget] = folders.get(variant.name, str(default_dir))
        st.session_state[widget + "-for"] = variant.name
    with st.form(f"export-{key}"):
        out_dir = st.text_input(
            "Export folder",
            key=widget,
            help="a new or empty folder (a Hugging Face folder: safetensors, tokenizer, config, "
            "recipe.json). A folder LayerScope exported can be replaced after you confirm; "
            "any other non-empty folder is refused",
        )
        available = [f for f in forms if f in EXPORT_FORMS and (f != "factorised" or low_rank_ranks(variant.model))]
        form = (
            st.radio("Form", available, format_func=lambda f: EXPORT_FORMS[f], horizontal=True)
            if len(available) > 1
            else available[0]
        )
        gguf = st.selectbox(
            "Also write a GGUF file (llama.cpp, Ollama, LM Studio)",
            GGUF_CHOICES,
            key=f"export-gguf-{key}",
            help="f16: exact for these weights; q8_0: 8-bit, the usual choice; q4_0: 4-bit. Dense form "
            "only; read back with transformers' GGUF reader and its top-1 agreement shown",
        )
        do_export = st.form_submit_button("Export checkpoint")
    confirm_key = f"confirm-export-{key}"
    if do_export:
        folders[variant.name] = out_dir
        st.session_state.pop(confirm_key, None)
        try:
            dest = destinations.inspect(out_dir)
            if dest.empty:
                _export(ws, variant, key, out_dir, form, overwrite=False, gguf=gguf)
            else:
                destinations.check(out_dir, overwrite=True, what="The export folder")  # refuses a foreign folder
                st.session_state[confirm_key] = {
                    "path": str(dest.path),
                    "form": form,
                    "entries": dest.entries,
                    "gguf": gguf,
                }
        except destinations.DestinationError as exc:
            st.error(f"{exc}.")
    pending = st.session_state.get(confirm_key)
    if pending:
        entries = pending["entries"]
        st.warning(
            f"`{pending['path']}` is not empty: it holds a LayerScope export ({len(entries)} entries: "
            f"{', '.join(entries[:12])}{' …' if len(entries) > 12 else ''}). Replace everything in it with "
            "this export?"
        )
        c = st.columns([1, 1, 4])
        if c[0].button("Replace it", key=f"replace-export-{key}", type="primary"):
            st.session_state.pop(confirm_key, None)
            _export(ws, variant, key, pending["path"], pending["form"], overwrite=True, gguf=pending.get("gguf"))
        if c[1].button("Cancel", key=f"cancel-export-{key}"):
            st.session_state.pop(confirm_key, None)
            st.rerun()
    export = st.session_state.get(f"last-export-{key}")
    if not export:
        return
    check = export["check"]
    plain = not needs_project_loader(export["path"])
    how = (
        "plain `AutoModelForCausalLM`"
        if plain
        else "the project's loader (`analysis.model.checkpoint.load_checkpoint`)"
    )
    if check["ok"]:
        st.success(
            f"Exported to `{export['path']}` ({export['size'] / 2**20:,.1f} MiB) and reloaded with {how}: "
            f"{check['blocks']} blocks, max |Δ logit| = {check['max_abs_logit_diff']:.2e} on "
            f"{check['tokens']} tokens, same top-1 everywhere."
        )
    else:
        st.error(f"The reloaded checkpoint differs from the in-memory model: {check}")
    g = export.get("gguf")
    if g:
        gc = g["reload_check"]
        st.info(
            f"GGUF `{g['file']}` ({g['type']}, {g['size_bytes'] / 2**20:,.1f} MiB), read back with transformers' "
            f"GGUF reader: top-1 agreement {gc['top1_agreement']:.1%} on {gc['tokens']} tokens. Run it with "
            f"`llama-cli -m {Path(export['path']) / g['file']}` or `ollama create` from a Modelfile naming it."
        )
    if plain:
        st.code(
            f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained({export['path']!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({export['path']!r})",
            language="python",
        )
    else:
        st.caption(
            "config.json records the factorised matrices (`layerscope_factorised`) or the linear blocks "
            "(`layerscope_linear_blocks`): plain `from_pretrained` would fill them with random weights. "
            "`python -m analysis evaluate --model DIR` and the sidebar load it with the project's loader."
        )
        st.code(
            f"from analysis.model.checkpoint import load_checkpoint  # this repository on PYTHONPATH\n"
            f"from transformers import AutoTokenizer\n"
            f"model = load_checkpoint({export['path']!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({export['path']!r})",
            language="python",
        )
    text_bytes_download(Path(export["path"], "recipe.json").read_text(), "recipe.json", "⬇ recipe.json")
