"""Reproduce a whole run from its recipe, headless, with progress.

Loads the recipe's model and text, computes its metric groups (``layers.csv`` and the groups' files, as the
``metrics`` command writes them), applies its ``action``, evaluates against the original with its evaluation
settings, exports the checkpoint when the recipe asks for one (``export.form``), and writes the completed
``recipe.json`` and a self-contained ``report.html`` into DIR — the same artefacts the dashboard shows. A recipe
written by the dashboard reproduces the dashboard's numbers.

Example:
  python -m analysis run out/pruned/recipe.json --out out/rerun
"""

import sys

NAME = "run"
HELP = "reproduce a recipe.json headless (metrics, change, evaluation, export, report)"


def add_arguments(p):
    p.add_argument("recipe", help="path to a recipe.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--text", default=None, help="the calibration text file, when the recipe's text was uploaded")
    p.add_argument("--device", default=None, help="override the recipe's device (auto, cpu, cuda, mps)")
    p.add_argument("--no-export", action="store_true", help="skip writing the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty checkpoint folder")


def run(args) -> int:
    import dataclasses

    from .. import recipe as rc
    from ..checkpoint import FORMS, load_checkpoint, save_checkpoint
    from ..compression import recipe_sections
    from ..evaluate import EvalSettings, evaluate
    from ..models import load_model
    from ..report import build_report, write_report
    from ..runs import resolve_groups, write_json, write_metric_files
    from ..surgery import export_checkpoint, verify_export
    from ..texts import resolve_text
    from ..variants import apply_actions, describe_action
    from ..workspace import Workspace
    from ._common import TqdmProgress, prepare_out_dir

    recipe = rc.load(args.recipe)
    out = prepare_out_dir(args.out)
    spec = rc.spec_of(recipe)
    if args.device:
        spec = dataclasses.replace(spec, device=args.device)
    lm = load_model(spec, progress=lambda m: print(f"[model] {m}", file=sys.stderr))
    want = (recipe.get("model") or {}).get("fingerprint")
    if want and want != lm.fingerprint:
        print(f"warning: the model's fingerprint {lm.fingerprint} differs from the recipe's {want}", file=sys.stderr)
    ws = Workspace(lm=lm, text=rc.text_of(recipe, args.text), calibration=rc.calibration_of(recipe))
    # the recipe's metric groups; an empty "metrics" section (a change made on the compress page or by the compress
    # command) computes none, and a recipe without the section gets the default group
    metrics = recipe.get("metrics")
    groups = resolve_groups(list(metrics or {}) or None) if metrics or metrics is None else []
    if groups:
        ws.capture(TqdmProgress("capture"))
        write_metric_files(ws, groups, out, progress_factory=TqdmProgress)

    action = recipe.get("action") or {}
    done = rc.variant_recipe(ws, action, metrics={g: (recipe.get("metrics") or {}).get(g, {}) for g in groups})
    done["name"] = recipe.get("name") or describe_action(action)
    changes = []
    if action:
        print(f"[run] {describe_action(action)}", file=sys.stderr)
        model = apply_actions(lm.model, action, ws, progress=TqdmProgress("apply"))
        settings = EvalSettings(**((recipe.get("evaluation") or {}).get("settings") or {}))
        name = rc.candidate_name(action)
        table = evaluate(lm.model, lm.tokenizer, resolve_text(settings.text), settings, candidate=model,
                         candidate_name=name, original_key=lm.fingerprint, progress=TqdmProgress("evaluate"))
        done.update(recipe_sections(model, lm.model, name))  # what low_rank / replace_linear resolved to
        done["evaluation"] = table.to_dict()
        form = (recipe.get("export") or {}).get("form")
        if form and not args.no_export:
            if form not in FORMS:
                raise ValueError(f"unknown export form {form!r}; use one of {', '.join(FORMS)}")
            target = out / "checkpoint"
            done["export"] = {"form": form, "path": str(target)}
            export_checkpoint(model, lm.tokenizer, target, done, overwrite=args.overwrite,
                              save_fn=lambda m, d: save_checkpoint(m, d, form))
            done["export"]["reload_check"] = verify_export(target, model, lm.tokenizer, loader=load_checkpoint)
            done["export"]["size_bytes"] = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        changes.append({"name": done["name"], "action": action, "evaluation": done["evaluation"], "recipe": done})
    write_json(out / "recipe.json", done)
    if recipe.get("report", True):
        write_report(out / "report.html", build_report(ws, changes), overwrite=True)  # out was prepared above
    print(out / "recipe.json")
    return 0
