"""The one path from a change to an exported checkpoint: apply → evaluate → recipe → export.

Every command that changes a model (``prune``, ``compress``, ``run``; ``heal`` for its export) and every change page
of the dashboard goes through :func:`make_variant` and :func:`export_variant`, so a change is applied, judged,
recorded and written the same way wherever it is started.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from analysis.cache import atomic_write_text, dumps
from analysis.capture.estimate import forward_probe, work_model
from analysis.changes import low_rank
from analysis.changes.export import export_checkpoint, reference_logits, verify_export, verify_gguf
from analysis.changes.gguf import SUPPORTED_QTYPES, supported_families, vllm_config_problems, write_gguf
from analysis.changes.variant import Variant, apply_actions, candidate_name, describe_action
from analysis.errors import InputError
from analysis.evaluation.perplexity import EvalSettings, estimate_seconds, evaluate
from analysis.model.checkpoint import load_checkpoint, save_checkpoint
from analysis.texts import resolve_text
from analysis.workflow.recipe import variant_recipe

Progress = Callable[..., None]  # (done, total, message)

# The checkpoint forms an export can take: what each is, for the pages' radio and the CLI's --form.
EXPORT_FORMS: dict[str, str] = {
    "dense": "dense: a plain checkpoint AutoModelForCausalLM reloads",
    "factorised": "factorised: each low-rank matrix stored as B·A (a smaller file; the project's loader)",
}


def _phase(progress: Progress | None, what: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{what}: {message}" if message else what)


def make_variant(
    ws,
    action: dict,
    settings: EvalSettings,
    name: str | None = None,
    metrics: dict | None = None,
    progress: Progress | None = None,
    stage: Callable[[str], None] | None = None,
) -> Variant:
    """Apply ``action`` to the workspace's original (never modified), evaluate the result against it on
    ``settings`` and return the :class:`~analysis.changes.variant.Variant` with its recipe.

    ``progress(done, total, message)`` follows both phases; ``stage(name)`` is told when each phase starts."""
    stage = stage or (lambda s: None)
    eval_text = resolve_text(settings.text)
    stage("Applying the change")
    model = apply_actions(ws.lm.model, action, ws, progress=_phase(progress, "Applying"))
    stage("Evaluating against the original")
    table = evaluate(
        ws.lm.model,
        ws.lm.tokenizer,
        eval_text,
        settings,
        candidate=model,
        candidate_name=candidate_name(action),
        original_key=ws.lm.fingerprint,
        progress=_phase(progress, "Evaluating"),
    )
    recipe = variant_recipe(ws, action, evaluation=table.to_dict(), metrics=metrics, model=model)
    variant = Variant(
        name=name or describe_action(action),
        model=model,
        action=action,
        base_fingerprint=ws.lm.fingerprint,
        evaluation=table,
        recipe=recipe,
    )
    recipe["name"] = variant.name
    return variant


def estimate_variant(ws, action: dict, settings: EvalSettings, probe: dict | None = None) -> dict:
    """Seconds :func:`make_variant` will take, measured on this machine now: ``{"seconds", "parts"}``.

    The change: removing blocks or skipping halves costs nothing; low rank, its statistics pass when not cached and
    each matrix shape's decomposition timed now (:func:`analysis.changes.low_rank.estimate_seconds`); a linear
    map (ReplaceMe, linear replacement), one forward of the calibration tokens. Then the evaluation of the original
    and the variant (:func:`analysis.evaluation.perplexity.estimate_seconds`). ``probe``: a
    :func:`analysis.capture.estimate.forward_probe` result to reuse. The export is not included."""
    lm = ws.lm
    probe = probe or forward_probe(lm)
    parts, seconds = [], 0.0
    n = max(1, ws.n_blocks)
    share = 1.0 - len(action.get("remove_blocks") or []) / n
    if "low_rank" in action:
        lr = low_rank.estimate_seconds(lm, action["low_rank"], ws, probe)
        seconds += lr["seconds"]
        share *= 1.0 - float(action["low_rank"].get("ratio") or 0.0)
        parts.append(f"{lr['seconds']:.0f} s for {lr['matrices']} matrices ({lr['basis']})")
    fits = [k for k in ("replaceme", "replace_linear") if k in action]
    if fits:
        fit = len(fits) * work_model(lm.model).calibration_pass(ws.calibration) * probe["seconds_per_work"]
        seconds += fit
        parts.append(f"{fit:.0f} s for the linear map's calibration pass")
    ev = estimate_seconds(lm, settings, n_models=2, candidate_fraction=share, probe=probe)
    seconds += ev["seconds"]
    parts.append(f"{ev['seconds']:.0f} s evaluating the original and the variant ({ev['basis']})")
    return {"seconds": seconds, "parts": parts}


def export_variant(
    model,
    tokenizer,
    out: str | Path,
    recipe: dict,
    form: str = "dense",
    overwrite: bool = False,
    recorded_path: str | Path | None = None,
    also_write: Callable[[object, Path], None] | None = None,
    gguf: str | None = None,
    release: Callable[[], None] | None = None,
) -> dict:
    """Write ``model`` as a checkpoint of ``form`` with ``recipe.json`` into ``out`` (atomically; the destination
    rule of :mod:`analysis.destinations` decides whether ``out`` may be written), reload it and compare logits.

    Returns the recipe as written, whose ``export`` section holds the path, the form, the reload check and the size.
    ``recorded_path`` is the path the recipe names (default ``out``; a run writes into a temporary folder first);
    ``also_write(model, folder)`` adds files of its own to the folder before it is moved into place (healing's
    LoRA adapter). ``gguf`` (a type of :data:`analysis.changes.gguf.SUPPORTED_QTYPES`, e.g. ``f16``, ``q8_0``,
    ``q4_0``) also writes ``model-<type>.gguf`` into the folder for llama.cpp, Ollama and LM Studio, read back with
    transformers' GGUF reader (its top-1 agreement with the in-memory model is recorded). ``release()`` (without
    ``gguf``) frees the in-memory model once its reference logits are taken, before the export is loaded back: one
    model resident at a time (the command line's prune passes it; the model is unusable afterwards)."""
    if form not in EXPORT_FORMS:
        raise InputError(f"unknown export form {form!r}; choose from {', '.join(EXPORT_FORMS)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)  # the model may be released below
    gguf_name = None
    if gguf:
        gguf_name = check_gguf_request(model, form, gguf)
    recipe = dict(recipe)
    recipe["export"] = {"path": str(Path(recorded_path or out).resolve()), "form": form}
    if gguf_name:
        recipe["export"]["gguf"] = {"file": gguf_name, "type": gguf}

    def save(m, directory: Path) -> None:
        save_checkpoint(m, directory, form)
        if also_write is not None:
            also_write(m, directory)

    def finish(directory: Path) -> None:
        if gguf_name:
            write_gguf(directory, directory / gguf_name, gguf, name=recipe.get("name"))

    path = export_checkpoint(model, tokenizer, out, recipe, overwrite=overwrite, save_fn=save, finish_fn=finish)
    if release is not None and not gguf_name:
        reference = reference_logits(model, tokenizer)
        release()
        del model
        gc.collect()
        recipe["export"]["reload_check"] = verify_export(
            path, tokenizer=tokenizer, reference=reference, loader=load_checkpoint
        )
    else:
        recipe["export"]["reload_check"] = verify_export(path, model, tokenizer, loader=load_checkpoint)
    if gguf_name:
        recipe["export"]["gguf"]["size_bytes"] = (Path(path) / gguf_name).stat().st_size
        recipe["export"]["gguf"]["reload_check"] = verify_gguf(path, gguf_name, model, tokenizer)
    if form == "dense" and model_type in supported_families():
        recipe["export"]["vllm_config_problems"] = vllm_config_problems(path)  # [] = what vLLM's loader reads agrees
    recipe["export"]["size_bytes"] = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    atomic_write_text(Path(path) / "recipe.json", dumps(recipe))
    return recipe


def check_gguf_request(model, form: str, qtype: str) -> str:
    """The GGUF file name for ``qtype``, after refusing (one line, before any work) what llama.cpp cannot load:
    an unknown type, a family the GGUF writer does not know, a factorised export."""
    if qtype not in SUPPORTED_QTYPES:
        raise InputError(f"unknown GGUF type {qtype!r}; choose from {', '.join(SUPPORTED_QTYPES)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    families = supported_families()
    if model_type not in families:
        raise InputError(f"GGUF export covers {', '.join(sorted(families))}; this model is {model_type!r}")
    if form != "dense":
        raise InputError("a GGUF file holds plain matrices: export the dense form (--form dense) to add --gguf")
    return f"model-{qtype}.gguf"
