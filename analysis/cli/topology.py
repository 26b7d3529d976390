"""Zigzag persistence across layers and per-layer persistence barcodes, written as CSV and JSON.

Zigzag (Gardinazzi et al., arXiv 2410.11042; METHODS.md §5): the last-token cloud of every hidden state for the
first N windows of T tokens of the text, symmetrised kNN graphs (k), clique complexes up to dimension m, zigzag
bars from Dionysus 2. Per-layer persistence: Vietoris-Rips (GUDHI) of every state's scale-normalised cloud,
farthest-point subsampled. Results are cached in cache/ and shared with the dashboard.

Writes
  DIR/zigzag_bars.csv         dim, birth_index, death_index, birth_layer, death_layer (alive in layers
                              birth_layer .. death_layer - 1; same-layer bars and H_m truncation artefacts dropped,
                              then bars shorter than --min-lifetime layers)
  DIR/zigzag_layers.csv       one row per hidden state: state, block, betti_0.., births_p, zP_mean (Z̄_p with α),
                              z1_mean, simplices_0.., suggested_<fraction>
  DIR/suggestion.json         remove_blocks (the --threshold rule, default 0.9 · max Z̄), the 0.8 blocks, settings
  DIR/persistence_layers.csv  per state: total persistence and persistent entropy of H0, H1 (H2), bars, bars above
                              the noise threshold, the normalising scale

The paper scanned k = 1..15, used m = 4, α = 0 and the 0.9 rule on the normalised MLP inputs; here the states are
the residual stream (h_0 .. h_L, the last with the final norm for Llama-style models).

Example:
  python -m analysis topology --model default --text alice --sequences 500 --seq-len 32 --out out/topology
"""

import sys

NAME = "topology"
HELP = "zigzag persistence across layers and per-layer barcodes; writes CSV and suggestion.json"


def add_arguments(p):
    from analysis.cli.common import (
        add_model_args,
        finite_float,
        float_in,
        int_in,
        non_negative_float,
        non_negative_int,
        positive_int,
        window_length,
    )

    add_model_args(p)
    g = p.add_argument_group("text and windows (zigzag and last-token clouds)")
    g.add_argument(
        "--text",
        "--calib-text",
        dest="text",
        default="alice",
        help="bundled text name (alice, asyoulik, lcet10, plrabn12) or a path to a text file",
    )
    g.add_argument(
        "--sequences", type=positive_int, default=500, help="number of windows N, one point per window (500)"
    )
    g.add_argument("--seq-len", type=window_length, default=32, help="tokens per window T (32)")
    g = p.add_argument_group("zigzag")
    g.add_argument(
        "--k", type=positive_int, default=4, help="nearest neighbours of the kNN graph (4; the paper scanned 1-15)"
    )
    g.add_argument(
        "--max-dim",
        "--m",
        dest="max_dim",
        type=int_in(1, 4),
        default=3,
        help="clique dimension m, 1..4 (3; the paper used 4). Only H_p with p < m are meaningful",
    )
    g.add_argument("--p", type=non_negative_int, default=1, help="homology dimension of Z_p and of the suggestion (1)")
    g.add_argument("--alpha", type=finite_float, default=0.0, help="weight exponent α of Z̄_p: w = |l - i|^α (0)")
    g.add_argument(
        "--threshold",
        type=float_in(0.0, 1.0, lo_open=True),
        default=0.9,
        help="suggest the blocks with Z̄_p >= threshold · max (0.9); 0.8 is always reported too",
    )
    g.add_argument(
        "--min-lifetime",
        type=positive_int,
        default=1,
        help="keep bars alive in at least this many layers (1 = all); 2 drops one-layer loops",
    )
    g.add_argument(
        "--estimate-only", action="store_true", help="capture, count the simplices, print the estimate and stop"
    )
    g = p.add_argument_group("per-layer persistence")
    g.add_argument("--points", type=int_in(3), default=300, help="farthest-point subsample per state (300)")
    g.add_argument(
        "--cloud",
        choices=["all", "last"],
        default="all",
        help="all: every token of the calibration windows below (the dashboard's default cloud); "
        "last: the last token of the N zigzag windows (no second model run)",
    )
    g.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean", help="Rips distance")
    g.add_argument("--rips-max-dim", type=int, choices=[1, 2], default=1, help="H0, H1 (1) or also H2 (2)")
    g.add_argument(
        "--noise",
        type=non_negative_float,
        default=0.05,
        help="count H1 bars longer than this (units of the median pairwise distance; 0.05)",
    )
    g.add_argument("--calib-sequences", type=positive_int, default=32, help="windows of the all-token cloud (32)")
    g.add_argument(
        "--calib-seq-len", type=window_length, default=128, help="tokens per window of the all-token cloud (128)"
    )
    g.add_argument(
        "--exclude-first",
        type=non_negative_int,
        default=0,
        help="drop the first positions of each window from the all-token cloud (attention sink)",
    )
    g.add_argument("--no-persistence", action="store_true", help="skip the per-layer persistence")
    p.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    from analysis.cli.common import add_overwrite_arg

    add_overwrite_arg(p)


def _settings(args):
    from analysis.profiles.topology import (
        PersistenceSettings,
        TopologyError,
        ZigzagSettings,
        check_persistence_settings,
    )

    zs = ZigzagSettings(n_windows=args.sequences, window_len=args.seq_len, k=args.k, max_dim=args.max_dim).validate()
    if not 0 <= args.p < zs.max_dim:
        raise TopologyError(
            f"--p must be between 0 and m - 1 = {zs.max_dim - 1} (H_{zs.max_dim} bars are artefacts "
            f"of cutting the complex at m = {zs.max_dim}); got {args.p}"
        )
    if not 0 < args.threshold <= 1:
        raise TopologyError(f"--threshold is a fraction of the maximum in (0, 1], got {args.threshold}")
    if args.min_lifetime < 1:
        raise TopologyError(f"--min-lifetime is a number of layers >= 1, got {args.min_lifetime}")
    ps = check_persistence_settings(
        PersistenceSettings(
            cloud=args.cloud,
            metric=args.metric,
            n_points=args.points,
            max_dim=args.rips_max_dim,
            last_windows=args.sequences,
            last_window_len=args.seq_len,
        )
    )
    return zs, ps


def run(args) -> int:
    from analysis import destinations
    from analysis.cache import write_csv, write_json
    from analysis.capture import estimate as capture_estimate
    from analysis.capture.workspace import Calibration, Workspace
    from analysis.cli.common import TqdmProgress, announce_estimate, load, out_destination
    from analysis.profiles import topology as topo
    from analysis.texts import resolve_text

    zs, ps = _settings(args)  # bad settings fail before the model is loaded
    dest = out_destination(args)
    text = resolve_text(args.text)
    lm = load(args)
    topo.check_zigzag_settings(zs, lm, text)  # text too short -> TextError with its token count

    with destinations.writing(dest, "topology") as out:
        estimate = topo.zigzag_estimate(lm, text, zs, progress=TqdmProgress("capture"))
        ws = None
        seconds, detail = estimate.seconds, estimate.describe()
        if topo.zigzag_is_cached(lm, text, zs):
            seconds, detail = 0.0, "zigzag persistence cached"
        if not args.no_persistence:
            cal = Calibration(
                n_windows=args.calib_sequences, window_len=args.calib_seq_len, exclude_first=args.exclude_first
            )
            ws = Workspace(lm=lm, text=text, calibration=cal)
        if ws is not None and topo.persistence_is_cached(ws, ps):
            detail += "; per-layer Rips persistence cached"
        elif ws is not None:
            rips = topo.persistence_seconds_now(ps, ws.n_states, topo.cloud_size(ws, ps), lm.width)
            seconds += rips
            detail += f"; then per-layer Rips persistence, about {rips:.0f} s at this machine's speed now"
            if not ws.is_captured():
                cap = capture_estimate.capture_estimate(lm, cal.n_windows, cal.window_len, storage=cal.storage)
                seconds += cap["seconds"]
                detail += f", after a capture of {cap['tokens']:,} tokens ({cap['seconds']:.0f} s)"
        announce_estimate("topology", seconds, detail)
        if estimate.too_large:
            print(f"warning: {estimate.warning()}", file=sys.stderr)
        if args.estimate_only:
            print_estimate = {
                "estimate": {
                    "simplices": estimate.total,
                    "events": estimate.n_events,
                    "exact": estimate.exact,
                    "seconds": estimate.seconds,
                    "too_large": estimate.too_large,
                }
            }
            write_json(out / "estimate.json", {**print_estimate, "settings": zs.to_dict()})
            print(dest.path / "estimate.json")
            return 0

        result = topo.compute_zigzag(lm, text, zs, progress=TqdmProgress("zigzag"), allow_large=True)
        fractions = tuple(dict.fromkeys([float(args.threshold), 0.8]))
        view = topo.describe_zigzag(
            result, p=args.p, alpha=args.alpha, min_lifetime=args.min_lifetime, fractions=fractions
        )
        write_csv(
            out / "zigzag_bars.csv", view.bars[["dim", "birth_index", "death_index", "birth_layer", "death_layer"]]
        )
        write_csv(out / "zigzag_layers.csv", topo.zigzag_layers_frame(result, view))
        suggestion = topo.zigzag_suggestion(result, view, lm, text)

        if ws is not None:
            cal = ws.calibration
            pres = topo.layer_persistence(ws, ps, progress=TqdmProgress("persistence"))
            write_csv(out / "persistence_layers.csv", topo.persistence_summary(pres, noise=args.noise))
            cloud = (
                f"all tokens of {cal.n_windows} windows of {cal.window_len} tokens"
                if ps.cloud == "all"
                else f"last token of {ps.last_windows} windows of {ps.last_window_len} tokens"
            )
            suggestion["persistence"] = {
                **ps.to_dict(),
                "noise": args.noise,
                "cloud_description": cloud,
                "normalisation": "each state's cloud divided by its median pairwise distance",
                "subsample": "greedy farthest-point",
            }
        write_json(out / "suggestion.json", suggestion)

        first = view.suggestions[fractions[0]]
        print(
            f"[topology] zigzag: {result.info['n_simplices']:,} simplices, {len(view.bars):,} bars, "
            f"{result.info.get('seconds', 0):.1f} s ({result.outcome.status})",
            file=sys.stderr,
        )
        print(
            f"[topology] Z̄_{args.p} >= {fractions[0]:g} · max: remove blocks {first['blocks']} "
            f"(ranges {[f'[{a}, {b})' for a, b in first['ranges']]})",
            file=sys.stderr,
        )
    print(dest.path)
    return 0
