"""Per-block metrics on the calibration windows, written as CSV.

Writes ``DIR/layers.csv`` (one row per block ``b``, which maps hidden state ``h_b`` to ``h_{b+1}``; one column per
registered metric of the chosen groups), the group's extra files (``linearity.csv``: the (L+1)×(L+1) matrix) and
``DIR/run.json`` (model, text, windows and settings). Results are cached in ``cache/`` and shared with the dashboard.

Example:
  python -m analysis metrics --model default --text alice --sequences 32 --seq-len 128 --out out/metrics
"""

import sys

NAME = "metrics"
HELP = "compute per-block metrics and write layers.csv"


def add_arguments(p):
    from ._common import add_calibration_args, add_model_args

    add_model_args(p)
    add_calibration_args(p)
    p.add_argument("--metrics", default="linearity",
                   help="comma-separated metric groups (default: linearity = linearity, linearity_no_residual, "
                        "block_influence, angular_distance); 'all' for every registered group")
    p.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import pandas as pd

    from .. import registry
    from ._common import TqdmProgress, load, prepare_out_dir, workspace_from, write_csv, write_json

    groups = registry.groups()
    wanted = list(groups) if args.metrics == "all" else [g.strip() for g in args.metrics.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        raise ValueError(f"unknown metric group(s) {', '.join(unknown)}; known: {', '.join(groups)}")
    out = prepare_out_dir(args.out)
    lm = load(args)
    ws = workspace_from(args, lm)
    ws.capture(TqdmProgress("capture"))
    table = pd.DataFrame({"block": range(ws.n_blocks)})
    run_info = {**ws.describe(), "metrics": {}}
    for g in wanted:
        for m in groups[g]:
            print(f"[metrics] {m.key}", file=sys.stderr)
            table[m.key] = m.scores(ws, progress=TqdmProgress(m.key))
            run_info["metrics"][m.key] = {"redundant_when": m.redundant_when, "description": m.description}
        writer = registry.group_writer(g)
        if writer is not None:
            columns, info = writer(ws, out, TqdmProgress(g))
            for name, values in columns.items():
                table[name] = values
            run_info.update(info)
    write_csv(out / "layers.csv", table)
    write_json(out / "run.json", run_info)
    print(out / "layers.csv")
    return 0
