"""Capture hidden states into the cache (the step every view starts from), with an estimate first.

For models larger than memory, ``--sequential`` runs the checkpoint one block at a time (chosen automatically
when the weights do not fit). For models larger than one device, alternatively combine ``--device-map-auto`` (and ``--max-memory``) with ``--states`` (only
the hidden states you need) and ``--storage float16`` (half the disk). ``--estimate-only`` prints the time, disk
and memory estimate and stops. The result is keyed by (model fingerprint, text hash, N, T, storage, states), so the
dashboard — or ``metrics`` — finds it.

Example:
  python -m analysis capture --model default --text alice --sequences 32 --seq-len 128 --states 0-10 --storage float16
"""

from analysis.errors import InputError

NAME = "capture"
HELP = "capture hidden states into the cache (estimate first)"


def add_arguments(p):
    from analysis.cli.common import add_calibration_args, add_model_args, add_sequential_arg, block_list

    add_model_args(p)
    add_sequential_arg(p)
    add_calibration_args(p)
    p.add_argument(
        "--states",
        default=None,
        type=block_list("--states"),
        help="hidden states to keep, e.g. '0,10,20' or '0-10' (default: all)",
    )
    p.add_argument("--last-only", action="store_true", help="keep only the last position of every window")
    p.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")


def run(args) -> int:
    from analysis.capture import estimate
    from analysis.capture.hidden_states import capture_hidden_states
    from analysis.changes.remove_blocks import parse_blocks
    from analysis.cli.common import (
        TqdmProgress,
        announce_estimate,
        load,
        preflight_calibration,
        print_json,
    )
    from analysis.texts import resolve_text

    states = parse_blocks(args.states, what="--states") if args.states else None
    preflight_calibration(args)  # windows, text length, positions: before any weight is loaded
    lm = load(args, sequential_ok=True)
    if states is not None and (states[0] < 0 or states[-1] > lm.n_blocks):
        raise InputError(f"--states must lie in 0..{lm.n_blocks}")
    positions = "last" if args.last_only else "all"
    text = resolve_text(args.text)
    from analysis import cache
    from analysis.capture.hidden_states import capture_params

    params = capture_params(lm, text, args.sequences, args.seq_len, args.storage, states, positions)
    cached = cache.entry("capture", params).exists()
    if cached:  # read from the cache: nothing to compute
        announce_estimate("capture", 0.0, "cached: read from the cache, nothing to compute")
    if not cached or args.estimate_only:  # the forward probe only when its figures are used
        est = estimate.capture_estimate(
            lm,
            args.sequences,
            args.seq_len,
            n_states=len(states) if states else None,
            storage=args.storage,
            positions=positions,
        )
        if not cached:
            announce_estimate("capture", est["seconds"], estimate.footprint(est))
        if args.estimate_only:
            print_json(est)
            return 0
    cap = capture_hidden_states(
        lm,
        text,
        args.sequences,
        args.seq_len,
        storage=args.storage,
        states=states,
        positions=positions,
        progress=TqdmProgress("capture"),
    )
    print_json(
        {
            "path": str(cap.outcome.path),
            "status": cap.outcome.status,
            "shape": list(cap.states.shape),
            "states": cap.state_ids,
            "storage": args.storage,
            "seconds": cap.meta.get("seconds"),
        }
    )
    return 0
