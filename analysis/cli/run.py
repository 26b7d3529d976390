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
    p.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    p.add_argument(
        "--text", default=None, help="your calibration text file (a recipe names bundled texts only, never a file)"
    )
    p.add_argument("--device", default=None, help="override the recipe's device (auto, cpu, cuda, mps)")
    p.add_argument("--no-export", action="store_true", help="skip writing the checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty results folder (only one LayerScope wrote; any other is refused)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run custom model code from the checkpoint's folder; a recipe's own \"trust_remote_code\" "
        "is never honoured",
    )


def run(args) -> int:
    import dataclasses

    from analysis import destinations
    from analysis.cache import write_json
    from analysis.capture.workspace import Workspace
    from analysis.changes.low_rank import recipe_sections
    from analysis.changes.variant import candidate_name, describe_action
    from analysis.cli.common import TqdmProgress
    from analysis.evaluation.perplexity import EvalSettings
    from analysis.model.loading import load_model, remote_code_files
    from analysis.workflow import preflight
    from analysis.workflow import recipe as rc
    from analysis.workflow.report import build_report, write_report
    from analysis.workflow.runs import resolve_groups, write_metric_files
    from analysis.workflow.variants import export_variant, make_variant

    say = lambda m: print(f"[model] {m}", file=sys.stderr)  # noqa: E731
    recipe = rc.load(args.recipe)
    rc.check_texts(recipe, args.text)  # a recipe names bundled texts only; a file comes from --text
    dest = destinations.check(args.out, overwrite=args.overwrite, what="--out results folder")
    spec = rc.spec_of(recipe, trust_remote_code=args.trust_remote_code)
    if rc.asks_for_remote_code(recipe) and not args.trust_remote_code:
        print(
            "warning: the recipe was written with trust_remote_code on; it is not honoured from a file (pass "
            "--trust-remote-code yourself if you trust the model's code)",
            file=sys.stderr,
        )
    if args.device:
        spec = dataclasses.replace(spec, device=args.device)
    if spec.trust_remote_code and remote_code_files(spec):
        say("trust_remote_code: running " + ", ".join(map(str, remote_code_files(spec))))
    # the whole recipe against the model's configuration and tokenizer, before any weight is loaded
    checked = preflight.check_recipe(recipe, spec, args.text, export=not args.no_export, say=say)
    lm = load_model(spec, progress=say)
    want = (recipe.get("model") or {}).get("fingerprint")
    if want and want != lm.fingerprint:
        print(f"warning: the model's fingerprint {lm.fingerprint} differs from the recipe's {want}", file=sys.stderr)
    ws = Workspace(lm=lm, text=checked["text"], calibration=rc.calibration_of(recipe))
    # the recipe's metric groups; an empty "metrics" section (a change made on the compress page or by the compress
    # command) computes none, and a recipe without the section gets the default group
    metrics = recipe.get("metrics")
    groups = resolve_groups(list(metrics or {}) or None) if metrics or metrics is None else []
    with destinations.writing(dest, "run") as out:  # nothing appears at --out until the run has finished
        if groups:
            ws.capture(TqdmProgress("capture"))
            write_metric_files(ws, groups, out, progress_factory=TqdmProgress)

        action = recipe.get("action") or {}
        done = rc.variant_recipe(ws, action, metrics={g: (recipe.get("metrics") or {}).get(g, {}) for g in groups})
        done["name"] = recipe.get("name") or describe_action(action)
        changes = []
        if action:
            print(f"[run] {describe_action(action)}", file=sys.stderr)
            settings = EvalSettings(**((recipe.get("evaluation") or {}).get("settings") or {}))
            rc.eval_text_of(recipe)  # a recipe names bundled texts only (refused otherwise, before any work)
            variant = make_variant(ws, action, settings, name=done["name"], progress=TqdmProgress("apply, evaluate"))
            model, table = variant.model, variant.evaluation
            done.update(recipe_sections(model, lm.model, candidate_name(action)))  # what low_rank etc. resolved to
            done["evaluation"] = table.to_dict()
            form = (recipe.get("export") or {}).get("form")
            if form and not args.no_export:
                gguf = (recipe.get("export") or {}).get("gguf")  # "q8_0", or the section an export wrote
                gguf = gguf.get("type") if isinstance(gguf, dict) else gguf
                done = export_variant(
                    model,
                    lm.tokenizer,
                    out / "checkpoint",
                    done,
                    form=form,
                    recorded_path=dest.path / "checkpoint",
                    gguf=gguf,
                )
            changes.append({"name": done["name"], "action": action, "evaluation": done["evaluation"], "recipe": done})
        write_json(out / "recipe.json", done)
        if recipe.get("report", True):
            write_report(out / "report.html", build_report(ws, changes))
    print(dest.path / "recipe.json")
    return 0
