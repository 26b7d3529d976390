"""Which blocks to cut, measured: the damage scan, greedy search and a leaderboard of selection rules.

Scans the damage of removing each block (with --half-blocks, each half-block too) on the search text, runs greedy
search (SLEB, over SLEB's candidates by default: never the first or the last block; --greedy-candidates all
searches every block; with --half-blocks also BlockPruner's half-block search), and evaluates on the held-out evaluation text, for k in the
range, every metric's suggestion, the consensus of the proxies, greedy search, reverse order [L-1-k, L-1) and
seeded random selections. Writes DIR/damage.csv (block, site, delta_nll, perplexity, kl, top1; site in
block|attention|mlp), DIR/greedy.csv (step, block, site, perplexity, search, candidates), DIR/leaderboard.csv
(rule, k, blocks, perplexity, kl, top1, ..., candidates: the set greedy search searched, on its rows), DIR/correlation.csv (metric, spearman) and DIR/leaderboard.json. Every scan and every
evaluation is cached: a rerun (or the dashboard) reuses them and a stopped run resumes.

Metrics: every metric already cached for the calibration text plus the cheap ones (measured damage, linearity,
block influence, angular distance, AVSS); intrinsic dimension and zigzag persistence only when cached or named in
--metrics.

Example:
  python -m analysis leaderboard --model default --k 1-8 --out out/leaderboard
  python -m analysis leaderboard --k 1-2 --search-tokens 256 --eval-tokens 1024 --also 12,13 --out out/lb
  python -m analysis leaderboard --k 1-4 --workers 2 --out out/lb        # a local Ray, 2 model replicas
  python -m analysis leaderboard --k 1-8 --ray-address head:6379 --out out/lb   # an existing Ray cluster
  python -m analysis leaderboard --model ./big --sequential --k 1-4 --out out/lb  # layer by layer

--workers / --ray-address score the damage scans and the evaluations on Ray actors, one per model replica
(analysis/search/distributed.py, docs/cluster.md); the numbers are the single-process ones.

--sequential (chosen automatically when the weights do not fit) runs every scan and every evaluation layer by
layer, each block loaded once per pass and the selections sharing the blocks they keep (docs/big-models.md): whole
blocks only (no half-block search, damage table of blocks), no ReplaceMe rows and no AVSS; the same numbers.
"""

import sys

from analysis.errors import InputError

NAME = "leaderboard"
HELP = "measured damage, greedy/reverse/random search and a leaderboard of every rule's blocks"


def parse_k(spec: str) -> tuple[int, int] | list[int]:
    """``'K'`` → (1, K), ``'A-B'`` → (A, B), ``'2,4,8'`` → [2, 4, 8]: whole numbers >= 1, a range that does not end
    before it starts, a list without repeats (:class:`InputError`, one line, otherwise)."""
    import re

    s = str(spec).strip().replace(" ", "")
    forms = "a number K (1..K), a range like 1-8 or a list like 2,4,8 (whole numbers >= 1)"
    if re.fullmatch(r"\d{1,6}(,\d{1,6})+,?", s):
        k = [int(x) for x in s.split(",") if x]
        if min(k) < 1 or len(set(k)) != len(k):
            raise InputError(f"--k {spec!r}: sizes are >= 1 and named once; give {forms}")
        return sorted(k)
    m = re.fullmatch(r"(\d{1,6})-(\d{1,6})", s)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a < 1 or b < a:
            raise InputError(
                f"--k {spec!r}: a range starts at 1 or more and does not end before it starts; give {forms}"
            )
        return a, b
    if re.fullmatch(r"\d{1,6}", s) and int(s) >= 1:
        return 1, int(s)
    raise InputError(f"--k must be {forms}, not {str(spec)[:40]!r}")


def k_sizes(text: str) -> str:
    """An argparse ``type`` for ``--k`` (checked at parse time; its sizes against the model before loading)."""
    import argparse

    try:
        parse_k(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--k ")) from None
    return text


def add_arguments(p):
    from analysis.cli.common import (
        add_calibration_args,
        add_eval_args,
        add_model_args,
        add_overwrite_arg,
        add_sequential_arg,
        block_list,
        non_negative_int,
        positive_int,
        seed_int,
        window_length,
    )

    add_model_args(p)
    add_sequential_arg(p)
    add_calibration_args(p)
    add_eval_args(p)
    g = p.add_argument_group("search")
    g.add_argument(
        "--k", default=None, type=k_sizes, help="sizes: K (1..K), a range '1-8' or a list '2,4,8' (default 1..L/4)"
    )
    g.add_argument(
        "--search-text",
        default="lcet10",
        help="text of the damage scan and the searches (bundled name or path; not the evaluation or calibration text)",
    )
    g.add_argument("--search-tokens", type=window_length, default=1024, help="tokens of the search text")
    g.add_argument("--search-context", type=window_length, default=512, help="window of the search text")
    g.add_argument(
        "--half-blocks",
        action="store_true",
        help="also half-block greedy search (BlockPruner) and the halves' damage table",
    )
    g.add_argument(
        "--greedy-candidates",
        choices=["sleb", "all"],
        default="sleb",
        help="blocks greedy search may remove: sleb (default, as SLEB: never the first or the last block) or all",
    )
    g.add_argument("--random", type=non_negative_int, default=5, help="random selections per k (seeded)")
    g.add_argument("--seed", type=seed_int, default=0)
    g.add_argument("--metrics", default=None, help="comma-separated metric keys (default: cached + cheap ones)")
    g.add_argument(
        "--also",
        action="append",
        type=block_list("--also"),
        default=[],
        help="a selection of your own to rank, e.g. 12,13",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the quick board for 'which rule wins at k': search on an eighth of its tokens, evaluation "
        "on an eighth (one window at least), no random draws, no half-block search, damage table of "
        "whole blocks only (printed before it starts)",
    )
    g = p.add_argument_group("Ray (docs/cluster.md)")
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="score candidates on N model replicas of a local Ray started for the run (one per CPU slot or GPU)",
    )
    g.add_argument(
        "--ray-address",
        default="",
        help="score candidates on an existing Ray cluster (host:port or "
        "'auto'; one replica per GPU, or per node on CPUs, unless "
        "--workers says how many)",
    )
    p.add_argument("--estimate", action="store_true", help="print the estimate and stop")
    p.add_argument("--out", required=True, help="results folder (new or empty unless --overwrite)")

    add_overwrite_arg(p)


def run(args) -> int:
    import time

    from analysis import destinations
    from analysis.cache import write_csv, write_json
    from analysis.changes.remove_blocks import parse_blocks
    from analysis.cli.common import TqdmProgress, announce_estimate, load, out_destination, workspace_from
    from analysis.formatting import format_seconds
    from analysis.metrics.damage import SearchSettings
    from analysis.search import leaderboard as lb
    from analysis.search.distributed import Cluster, run_leaderboard

    cluster = Cluster(workers=args.workers or 0, address=args.ray_address)
    cluster.validate()
    if cluster.enabled and args.sequential:
        raise InputError(
            "--sequential cannot go with --workers or --ray-address: each Ray replica holds the whole model in "
            "memory; choose one"
        )
    k = parse_k(args.k) if args.k else (1, None)
    k_list = tuple(k) if isinstance(k, list) else ()
    k_min, k_max = (1, max(k_list)) if k_list else k
    also = tuple(tuple(parse_blocks(s)) for s in args.also)
    ev = lb.default_eval_settings(
        text=args.eval_text, n_tokens=args.eval_tokens, context=args.context, stride=args.stride
    )
    search = SearchSettings(text=args.search_text, n_tokens=args.search_tokens, context=args.search_context)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    settings = lb.LeaderboardSettings(
        k_min=k_min,
        k_max=k_max,
        search=search,
        evaluation=ev,
        metrics=metrics,
        half_blocks=args.half_blocks,
        random_samples=args.random,
        seed=args.seed,
        greedy_candidates=args.greedy_candidates,
        also=also,
        k_list=k_list,
    )
    # what can be refused without the model is refused before loading it
    dest = out_destination(args) if not args.estimate else None
    search.validate()
    ev.validate()
    if search.resolve().sha256 == lb.resolve_text(ev.text).sha256:
        lb.validate(settings, 10**6)
    if metrics:
        from analysis.metrics import registry

        for m in metrics:
            registry.get(m)
    from analysis.cli.common import spec_from
    from analysis.model.loading import read_config
    from analysis.workflow import preflight

    config = read_config(spec_from(args))  # no weights: k and --also against the number of blocks
    n_config = preflight.n_layers(config) if config is not None else None
    if n_config:
        lb.validate(settings, n_config)
    if args.quick:
        for what in lb.quick_skipped(settings):
            print(f"[leaderboard] quick: {what}", file=sys.stderr)
        settings = lb.quick_settings(settings)
    lm = load(args, sequential_ok=not cluster.enabled)  # Ray's replicas hold the model in memory
    ws = workspace_from(args, lm)
    settings, notes = lb.for_model(settings, lm)
    for note in notes:
        print(f"[leaderboard] {note}", file=sys.stderr)
    lb.validate(settings, ws.n_blocks, ws.text, lm.tokenizer)
    if getattr(lm, "sequential", False):
        print(
            "[leaderboard] layer by layer: no time estimate before it starts (each pass reads the checkpoint "
            "once, block by block; the progress bar counts the blocks)",
            file=sys.stderr,
        )
    else:
        est = lb.estimate(ws, settings)
        announce_estimate(
            "leaderboard",
            est["seconds"],
            f"the work of {est['evaluations_of_original']:.1f} evaluations of the original at "
            f"~{format_seconds(est['per_evaluation_s'])} each: {est['scans']} scans, up to {est['evaluations']} "
            f"selections to evaluate; from a {est['probe_s']:.1f} s forward of the model timed now; cached work is "
            "skipped",
        )
    if args.estimate:
        return 0
    t0 = time.perf_counter()
    if cluster.enabled:
        print(f"[leaderboard] scoring candidates on {cluster.describe()}", file=sys.stderr)
    result = run_leaderboard(ws, settings, progress=TqdmProgress("leaderboard"), cluster=cluster)
    with destinations.writing(dest, "leaderboard") as out:
        write_csv(out / "damage.csv", lb.damage_csv(result))
        write_csv(out / "greedy.csv", lb.greedy_csv(result))
        write_csv(out / "leaderboard.csv", lb.leaderboard_csv(result))
        write_csv(out / "correlation.csv", lb.correlation_csv(result))
        write_json(
            out / "leaderboard.json",
            {**result.to_dict(), "winners": result.winners().to_dict("records"), **ws.describe()},
        )
    print(f"[leaderboard] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    c = result.cost
    print(
        f"[leaderboard] cost: {c['evaluations']:.2f} evaluations of the original ({c['scan_evaluations']:.2f} in "
        f"{c['scans_computed']} damage scans, {c['evaluation_evaluations']:.2f} evaluating "
        f"{c['selections_computed']} of {c['selections']} distinct selections for {c['rows']} rows; cached work "
        "costs nothing)",
        file=sys.stderr,
    )
    print(
        f"[leaderboard] greedy search (SLEB) searched {lb.greedy_candidates(result)}; removed in order: "
        f"{', '.join(str(s['block']) for s in result.greedy)}",
        file=sys.stderr,
    )
    print(result.winners().to_string(index=False))
    print(dest.path / "leaderboard.csv")
    return 0
