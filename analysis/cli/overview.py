"""Every registered metric side by side: rank-normalised scores, suggestions, consensus and their overlap.

Writes ``DIR/overview.csv`` (one row per block: each metric's raw score and its rank-normalised redundancy, 1 = most
redundant), ``DIR/suggestions.json`` (each metric's k blocks, the votes and the consensus) and ``DIR/overlap.csv``
(pairwise Jaccard overlap of the suggestions). By default only metrics already in the cache take part (as in the
dashboard); ``--compute`` computes the others with their default settings.

Example:
  python -m analysis overview --model default --text alice --k 4 --out out/overview
"""

from analysis.errors import InputError

NAME = "overview"
HELP = "compare every metric's suggested blocks and their consensus"


def add_arguments(p):
    from analysis.cli.common import add_calibration_args, add_model_args, positive_int

    add_model_args(p)
    add_calibration_args(p)
    p.add_argument("--k", type=positive_int, default=4, help="blocks each metric suggests")
    p.add_argument("--metrics", default=None, help="comma-separated metric keys (default: every registered one)")
    p.add_argument("--compute", action="store_true", help="compute metrics that are not cached yet")
    p.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    from analysis.cli.common import add_overwrite_arg

    add_overwrite_arg(p)


def run(args) -> int:
    import pandas as pd

    from analysis import destinations
    from analysis.cache import write_csv, write_json
    from analysis.cli.common import (
        TqdmProgress,
        load,
        out_destination,
        preflight_calibration,
        spec_from,
        workspace_from,
    )
    from analysis.metrics import consensus, registry
    from analysis.model.loading import read_config
    from analysis.workflow import preflight

    chosen = registry.metrics() if not args.metrics else [registry.get(k.strip()) for k in args.metrics.split(",")]
    dest = out_destination(args)
    n = preflight.n_layers(read_config(spec_from(args)) or {}) if args.model else None
    if n is not None and not 1 <= args.k < n:
        raise InputError(f"--k must lie in 1..{n - 1} (the model has {n} blocks), got {args.k}")
    preflight_calibration(args)
    ws = workspace_from(args, load(args))
    if not args.compute:
        chosen = consensus.computed_metrics(ws, chosen)
        if not chosen:
            raise InputError("no metric is cached for this model and text; pass --compute or run `metrics` first")
    if not 1 <= args.k < ws.n_blocks:
        raise InputError(f"--k must lie in 1..{ws.n_blocks - 1}")
    scores = consensus.score_table(ws, chosen, progress=TqdmProgress("metrics"))
    ranks = consensus.rank_table(scores, chosen)
    suggested = consensus.suggestions(ws, chosen, args.k, scores)
    agreed = consensus.consensus(suggested, ranks, args.k)
    table = pd.concat([scores, ranks.add_suffix("_rank")], axis=1).reset_index()
    with destinations.writing(dest, "overview") as out:
        write_csv(out / "overview.csv", table)
        write_csv(out / "overlap.csv", consensus.pairwise_overlap(suggested), index=True)
        write_json(
            out / "suggestions.json",
            {
                "k": args.k,
                "metrics": {m.key: {"blocks": suggested[m.key], "redundant_when": m.redundant_when} for m in chosen},
                "votes": consensus.votes(suggested, ws.n_blocks).tolist(),
                "consensus": agreed,
                **ws.describe(),
            },
        )
    print(dest.path / "suggestions.json")
    return 0
