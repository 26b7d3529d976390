"""Write the self-contained HTML report (figures embedded, opens offline) from what is in the cache.

The report shows the model card, every view already computed for this model, text and windows, where the metrics
agree, and — with ``--recipe`` — the recipe's change and its evaluation table. Nothing is computed to write it:
run ``metrics``/``topology``/… first (or ``run`` a recipe, which writes its own report).

An existing file is never replaced unless --overwrite is given (the check runs before the model is loaded).

Example:
  python -m analysis report --model default --text alice --out out/report.html
  python -m analysis report --recipe out/pruned/recipe.json --out out/report.html --overwrite
"""

NAME = "report"
HELP = "write the self-contained HTML report from cached results"


def add_arguments(p):
    from analysis.cli.common import add_calibration_args, add_model_args

    add_model_args(p)
    add_calibration_args(p)
    p.add_argument("--recipe", default=None, help="take model, text and windows from this recipe and show its change")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="the .html file to write (a new file unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier LayerScope report at --out")


def run(args) -> int:
    from analysis import destinations
    from analysis.capture.workspace import Workspace
    from analysis.changes.variant import describe_action
    from analysis.cli.common import load, workspace_from
    from analysis.model.loading import load_model
    from analysis.workflow import recipe as rc
    from analysis.workflow.report import build_report, write_report

    dest = destinations.check(args.out, overwrite=args.overwrite, what="--out report", kind="file")
    changes = []
    if args.recipe:
        recipe = rc.load(args.recipe)  # its trust_remote_code is never honoured: only --trust-remote-code
        ws = Workspace(
            lm=load_model(rc.spec_of(recipe, trust_remote_code=args.trust_remote_code)),
            text=rc.text_of(recipe),
            calibration=rc.calibration_of(recipe),
        )
        if recipe.get("action"):
            changes.append(
                {
                    "name": recipe.get("name") or describe_action(recipe["action"]),
                    "action": recipe["action"],
                    "evaluation": recipe.get("evaluation"),
                    "recipe": recipe,
                }
            )
    else:
        ws = workspace_from(args, load(args))
    path = write_report(dest.path, build_report(ws, changes, title=args.title), overwrite=args.overwrite)
    print(path)
    return 0
