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

NAME = "metrics"
HELP = "compute per-block metrics and write layers.csv"


def add_arguments(p):
    from analysis.cli.common import add_calibration_args, add_model_args, add_sequential_arg, positive_float

    add_model_args(p)
    add_sequential_arg(p)
    add_calibration_args(p)
    p.add_argument(
        "--metrics",
        default="linearity",
        help="comma-separated metric groups (default: linearity = linearity, linearity_no_residual, "
        "block_influence, angular_distance); 'all' for every registered group",
    )
    p.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    from analysis.cli.common import add_overwrite_arg

    add_overwrite_arg(p)
    g = p.add_argument_group("AVSS (--metrics avss)")
    g.add_argument(
        "--avss-site",
        default="mlp",
        choices=["residual", "mlp", "attention"],
        help="activation site: block output, MLP hidden activation (input of down_proj; default), attention output",
    )
    g.add_argument(
        "--avss-eps",
        type=positive_float,
        default=None,
        help="sparsity threshold (default 1e-5; 0.01 with --avss-relative)",
    )
    g.add_argument("--avss-relative", action="store_true", help="threshold eps * RMS(a) per token instead of eps")


def _announce(ws, groups: list[str], announce_estimate) -> None:
    """One estimate before the work: the capture when missing, and each group's metrics not cached yet (each group
    estimates its own work, timed on this machine now; a group without an estimate is named)."""
    from analysis.capture import estimate
    from analysis.metrics.registry import group_estimate

    parts, seconds, missing = [], 0.0, []
    sequential = getattr(ws.lm, "sequential", False)
    probe = None if sequential else estimate.forward_probe(ws.lm)  # one probe for the capture and the groups
    if not ws.is_captured():
        c = ws.calibration
        est = estimate.capture_estimate(ws.lm, c.n_windows, c.window_len, storage=c.storage, probe=probe)
        seconds += est["seconds"]
        parts.append(f"capture {est['seconds']:.0f} s {estimate.footprint(est)}")
    for g in groups:
        fn = group_estimate(g)
        if fn is None or (sequential and g not in ("linearity", "id")):  # layer by layer: no forward to time
            missing.append(g)
            continue
        s = fn(ws, probe)
        seconds += s
        parts.append(f"{g} {s:.0f} s" if s else f"{g} cached")
    if missing:
        parts.append(f"not estimated: {', '.join(missing)}")
    announce_estimate("metrics", seconds, "; ".join(parts))


def run(args) -> int:
    from analysis import destinations
    from analysis.cli.common import (
        TqdmProgress,
        announce_estimate,
        load,
        out_destination,
        preflight_calibration,
        workspace_from,
    )
    from analysis.workflow.runs import resolve_groups, write_metric_files

    groups = resolve_groups(args.metrics)
    group_params = {"avss": {"site": args.avss_site, "eps": args.avss_eps, "relative": args.avss_relative}}
    dest = out_destination(args)
    preflight_calibration(args)  # windows, text length, positions: before any weight is loaded
    if "linearity" in groups:
        from analysis.cli.common import spec_from
        from analysis.model.loading import read_config
        from analysis.workflow import preflight

        preflight.check_linearity_tokens(
            read_config(spec_from(args)), args.sequences, args.seq_len, args.exclude_first, args.n_max
        )
    ws = workspace_from(args, load(args, sequential_ok=True))
    if getattr(ws.lm, "sequential", False):
        from analysis.errors import InputError
        from analysis.metrics.registry import SEQUENTIAL_GROUPS

        need_model = [g for g in groups if g not in SEQUENTIAL_GROUPS]
        if need_model:
            raise InputError(
                f"layer by layer, only the metrics computed from the captured states and the measured damage run "
                f"({', '.join(SEQUENTIAL_GROUPS)}); {', '.join(need_model)} need the model in memory: "
                "leave them out of --metrics, or run without --sequential on a machine it fits"
            )
    _announce(ws, groups, announce_estimate)
    with destinations.writing(dest, "metrics") as out:
        ws.capture(TqdmProgress("capture"))
        write_metric_files(ws, groups, out, progress_factory=TqdmProgress, group_params=group_params)
    print(dest.path / "layers.csv")
    return 0
