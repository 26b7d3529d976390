"""Per-block metrics on the calibration windows, written as CSV.

Writes ``DIR/layers.csv`` (one row per block ``b``, which maps hidden state ``h_b`` to ``h_{b+1}``; one column per
registered metric of the chosen groups), the group's extra files (``linearity.csv``: the (L+1)×(L+1) matrix;
``avss``: ``avss_variance``/``avss_sparsity`` columns; ``id``: ``states.csv``, the intrinsic dimension of every
hidden state) and ``DIR/run.json`` (model, text, windows and settings). Results are cached in ``cache/`` and shared
with the dashboard.

Example:
  python -m analysis metrics --model default --text alice --sequences 32 --seq-len 128 --out out/metrics
  python -m analysis metrics --metrics avss,id --avss-site residual --avss-relative --out out/geometry
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
    g = p.add_argument_group("AVSS (--metrics avss)")
    g.add_argument("--avss-site", default="mlp", choices=["residual", "mlp", "attention"],
                   help="activation site: block output, MLP hidden activation (input of down_proj; default), "
                        "attention output")
    g.add_argument("--avss-eps", type=float, default=None,
                   help="sparsity threshold (default 1e-5; 0.01 with --avss-relative)")
    g.add_argument("--avss-relative", action="store_true", help="threshold eps * RMS(a) per token instead of eps")


def run(args) -> int:
    import pandas as pd

    from .. import registry
    from ._common import TqdmProgress, load, prepare_out_dir, workspace_from, write_csv, write_json

    groups = registry.groups()
    known = registry.group_names()  # metric groups, then file-only groups (id)
    wanted = known if args.metrics == "all" else [g.strip() for g in args.metrics.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in known]
    if unknown:
        raise ValueError(f"unknown metric group(s) {', '.join(unknown)}; known: {', '.join(known)}")
    group_params = {"avss": {"site": getattr(args, "avss_site", "mlp"), "eps": getattr(args, "avss_eps", None),
                             "relative": getattr(args, "avss_relative", False)}}
    out = prepare_out_dir(args.out)
    lm = load(args)
    ws = workspace_from(args, lm)
    ws.capture(TqdmProgress("capture"))
    table = pd.DataFrame({"block": range(ws.n_blocks)})
    run_info = {**ws.describe(), "metrics": {}}
    for g in wanted:
        params = group_params.get(g)
        for m in groups.get(g, []):
            print(f"[metrics] {m.key}", file=sys.stderr)
            table[m.key] = m.scores(ws, params, progress=TqdmProgress(m.key))
            run_info["metrics"][m.key] = {"redundant_when": m.redundant_when, "description": m.description}
        writer = registry.group_writer(g)
        if writer is not None:
            columns, info = writer(ws, out, TqdmProgress(g), **({"params": params} if params else {}))
            for name, values in columns.items():
                table[name] = values
            run_info.update(info)
    write_csv(out / "layers.csv", table)
    write_json(out / "run.json", run_info)
    print(out / "layers.csv")
    return 0
