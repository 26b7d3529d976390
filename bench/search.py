"""The damage scan against the naive scan, and the leaderboard, timed in one run on the default model.

1. The single-block damage scan over every block on the search text two ways, cold (nothing cached): reusing the
   reference pass (each candidate runs only the blocks after the removed one, from the recorded hidden state) and
   naively (a full forward of each pruned model). Both give the same numbers (the largest |Δ NLL| is printed).
2. The leaderboard for k = 1..K with a private, empty cache (scans, greedy search, every rule's evaluations), in
   the same run as one plain evaluation of the original on the same evaluation settings: the board's cost in
   evaluations of the original (counted work, ``Result.cost``, and measured time / the evaluation's time); the
   estimate printed before it against the time it took, cold and then warm (the same board again, all cached).
3. ``--old-path``: every distinct selection of the board evaluated the old way (``evaluate`` of each pruned model,
   one after the other) against the board's one shared pass: time ratio and the largest relative difference.
4. ``--quick``: the quick board (``leaderboard --quick``) cold, its time against the full board's, its estimate, and
   whether its winner at each k is the full board's.

    python bench/search.py                                   # the scan, and the board for k = 1..2
    python bench/search.py --skip-scan --k 2 --search-tokens 256 --search-context 128 --eval-tokens 1024 \
        --context 256 --stride 128 --old-path --quick      # docs/fast-board.md

Timings on a shared CPU are noisy (other work runs beside it); the ratio of the two scans, measured back to back,
is the figure to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_search_arguments,
    machine,
    matmul_gflops,
    print_table,
    private_cache,
    save,
    search_settings,
)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_search_arguments(p)
    p.add_argument("--k", type=int, default=2, help="largest k of the timed leaderboard")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--metrics", default="block_influence,angular_distance,measured_damage")
    p.add_argument("--skip-leaderboard", action="store_true")
    p.add_argument("--skip-scan", action="store_true", help="skip the fast-vs-naive scan comparison")
    p.add_argument("--random", type=int, default=5)
    p.add_argument("--old-path", action="store_true", help="also evaluate every selection the old way")
    p.add_argument("--quick", action="store_true", help="also the quick board")
    p.add_argument(
        "--plan",
        action="store_true",
        help="only the planned work of the board (cold), full and quick, in evaluations of the original; no timing",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from analysis.model.loading import ModelSpec, load_model

    lm = load_model(ModelSpec(source=args.model, device="auto"))
    settings = search_settings(args)
    text = settings.resolve()
    payload = {"settings": settings.to_dict()}
    if args.plan:
        payload["plan"] = plan_section(args, lm, settings)
        print(save("search-plan", payload))
        return 0
    if not args.skip_scan:
        payload.update(scan_section(lm, settings, text))
    if not args.skip_leaderboard:
        payload["leaderboard"] = board_section(args, lm, settings)
    print(f"machine: {machine()}")
    print(save("search", payload))
    return 0


def scan_section(lm, settings, text) -> dict:
    from analysis.metrics import damage

    t0 = time.perf_counter()
    damage.reference(lm, settings, text)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = damage.scan(lm, settings, text=text, method="fast")
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = damage.scan(lm, settings, text=text, method="naive")
    t_naive = time.perf_counter() - t0
    diff = max(abs(a["nll"] - b["nll"]) for a, b in zip(fast, naive))
    rows = [
        {
            "scan": "reuse the reference pass",
            "candidates": len(fast),
            "seconds": t_fast,
            "per candidate s": t_fast / len(fast),
            "speed-up": t_naive / t_fast,
        },
        {
            "scan": "naive (full forward each)",
            "candidates": len(naive),
            "seconds": t_naive,
            "per candidate s": t_naive / len(naive),
            "speed-up": 1.0,
        },
    ]
    print(
        f"model {lm.name}, {lm.n_blocks} blocks; search text {text.label}: {settings.n_tokens} tokens in windows of "
        f"{settings.context}; reference pass {t_ref:.1f} s (shared by both scans)"
    )
    print_table("Single-block damage scan, cold", rows)
    print(f"largest |ΔNLL| between the two scans: {diff:.2e}")
    return {"scan": rows, "max_abs_nll_diff": diff, "reference_s": t_ref}


def plan_section(args, lm, settings) -> dict:
    """The planned work of a cold board (lb.estimate with a unit probe), full and quick, against the old path's
    (every selection a whole forward of the pruned model; same scans)."""
    from analysis.capture.workspace import Workspace
    from analysis.search import leaderboard as lb
    from analysis.texts import bundled_text

    ev = lb.default_eval_settings(n_tokens=args.eval_tokens, context=args.context, stride=args.stride)
    full = lb.LeaderboardSettings(
        k_max=args.k,
        search=settings,
        evaluation=ev,
        random_samples=args.random,
        metrics=tuple(args.metrics.split(",")) if args.metrics else None,
    )
    unit = {"seconds_per_work": 1.0, "seconds": 0.0, "seconds_per_token": 0.0, "tokens": 0}
    rows = []
    with private_cache():
        ws = Workspace(lm=lm, text=bundled_text("alice"))
        for name, s in (("full", full), ("quick", lb.quick_settings(full))):
            e = lb.estimate(ws, s, probe=unit)
            one = lb.estimate(ws, full, probe=unit)["original_work"]
            L, ks = lm.n_blocks, s.ks(lm.n_blocks)
            # the old path: the original once, then each selection a whole forward of the pruned model
            per_k = e["evaluations"] / len(ks)  # selections to evaluate per k (cold: all of them)
            old_eval = e["original_work"] * (1 + sum((L - k) / L * per_k for k in ks))
            rows.append(
                {
                    "board": name,
                    "scans": e["scans"],
                    "selections": e["evaluations"],
                    "scans (evals)": e["scan_work"] / one,
                    "calibration (evals)": e["calibration_work"] / one,
                    "evaluations (evals)": e["evaluation_work"] / one,
                    "total (evals)": e["work"] / one,
                    "old path total (evals)": (e["scan_work"] + e["calibration_work"] + old_eval) / one,
                }
            )
    print_table(
        f"Planned work of a cold board k = 1..{args.k}, in evaluations of the original "
        f"({ev.n_tokens} tokens, context {ev.context}, stride {ev.stride})",
        rows,
    )
    return {"rows": rows}


def board_section(args, lm, settings) -> dict:
    import math

    from analysis.capture.estimate import forward_probe
    from analysis.capture.workspace import Workspace
    from analysis.changes.variant import apply_actions
    from analysis.evaluation.perplexity import evaluate, evaluation_ids, perplexity
    from analysis.search import leaderboard as lb
    from analysis.texts import bundled_text, resolve_text

    ev = lb.default_eval_settings(n_tokens=args.eval_tokens, context=args.context, stride=args.stride)
    lbs = lb.LeaderboardSettings(
        k_max=args.k,
        search=settings,
        evaluation=ev,
        random_samples=args.random,
        metrics=tuple(args.metrics.split(",")) if args.metrics else None,
    )
    eval_text = resolve_text(ev.text)
    out: dict = {"k": args.k, "eval_tokens": args.eval_tokens, "context": args.context, "stride": args.stride}
    with private_cache():
        ws = Workspace(lm=lm, text=bundled_text("alice"))
        # one plain evaluation of the original: the unit
        t0 = time.perf_counter()
        perplexity(lm.model, lm.tokenizer, eval_text, ev)
        t_one = time.perf_counter() - t0
        runs = {}
        for name, s in [("full, cold", lbs), ("full, warm", lbs)] + (
            [("quick, cold", lb.quick_settings(lbs)), ("quick, warm", lb.quick_settings(lbs))] if args.quick else []
        ):
            t0 = time.perf_counter()
            probe = forward_probe(lm)
            est = lb.estimate(ws, s, probe=probe)
            t_est = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = lb.run(ws, s)
            t = time.perf_counter() - t0
            runs[name] = {
                "estimate s": est["seconds"],
                "estimate took s": t_est,
                "measured s": t,
                "estimate / measured": est["seconds"] / t,
                "measured / one evaluation": t / t_one,
                "cost (counted, evaluations)": result.cost["evaluations"],
                "of which scans": result.cost["scan_evaluations"],
                "selections": result.cost["selections"],
                "rows": result.cost["rows"],
                "result": result,
            }
    # how close one evaluation is to what the machine's cores do (batching candidates cannot beat that rate)
    from analysis.capture.estimate import work_model
    from analysis.evaluation.shared_prefix import original_work

    n_ids = len(evaluation_ids(lm.tokenizer, eval_text, ev.n_tokens))
    rate = 2 * original_work(work_model(lm.model), n_ids, ev.context, ev.stride) / t_one / 1e9
    peak = matmul_gflops()
    print(
        f"one plain evaluation of the original ({ev.n_tokens} tokens, context {ev.context}, stride {ev.stride}): "
        f"{t_one:.1f} s, {rate:.0f} GFLOP/s; a 2048 x 2048 fp32 matrix product here: {peak:.0f} GFLOP/s"
    )
    out.update(evaluation_gflops=rate, matmul_gflops=peak)
    print_table(
        f"Leaderboard k = 1..{args.k}",
        [{"run": n, **{k: v for k, v in r.items() if k != "result"}} for n, r in runs.items()],
    )
    full = runs["full, cold"]["result"]
    print(full.winners().to_string(index=False))
    out["least_exact_work"] = floor = least_exact_work(lm, lbs, full, n_ids)
    print(
        f"least forward work that gives these {floor['selections']} selections and {floor['scans']} scans exactly: "
        f"{floor['total']:.1f} evaluations of the original (scans {floor['scan_evaluations']:.1f}, of which heads "
        f"{floor['scan_heads']:.1f}; evaluations {floor['evaluation_evaluations']:.1f}, of which heads "
        f"{floor['evaluation_heads']:.1f}); this board counted {full.cost['evaluations']:.1f}"
    )
    out.update(one_evaluation_s=t_one, runs={n: {k: v for k, v in r.items() if k != "result"} for n, r in runs.items()})
    if args.quick:
        qw, fw = runs["quick, cold"]["result"].winners(), full.winners()
        agree = list(qw["rule"]) == list(fw["rule"])
        ratio = runs["quick, cold"]["measured s"] / runs["full, cold"]["measured s"]
        print(
            f"quick / full time (cold): {ratio:.3f}; winners agree at every k: {agree} "
            f"(quick {list(qw['rule'])}, full {list(fw['rule'])})"
        )
        out["quick"] = {
            "time_ratio": ratio,
            "winners_agree": agree,
            "quick_winners": list(qw["rule"]),
            "full_winners": list(fw["rule"]),
        }
    if args.old_path:
        import json

        actions = {a: json.loads(a) for a in full.rows["action"].unique()}
        t0 = time.perf_counter()
        worst = 0.0
        for a, action in actions.items():
            cand = apply_actions(lm.model, action, ws)
            old = evaluate(lm.model, lm.tokenizer, eval_text, ev, candidate=cand, original_key=lm.fingerprint).candidate
            new = full.rows[full.rows["action"] == a].iloc[0]
            for x, y in (
                (new["perplexity"], old.perplexity),
                (new["kl"], old.kl_to_original),
                (new["top1"], old.top1_agreement),
            ):
                worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
        t_old = time.perf_counter() - t0
        # the new path's evaluation share of the cold board, re-run alone for a like-for-like time
        from analysis.evaluation.shared_prefix import evaluate_actions

        t0 = time.perf_counter()
        evaluate_actions(lm, list(actions.values()), ev, eval_text, ws=ws)
        t_new = time.perf_counter() - t0
        print(
            f"{len(actions)} distinct selections: old path (evaluate each) {t_old:.1f} s, shared pass {t_new:.1f} s, "
            f"speed-up {t_old / t_new:.2f}×; largest relative difference {worst:.2e}"
        )
        out["old_path"] = {
            "selections": len(actions),
            "old_s": t_old,
            "new_s": t_new,
            "speedup": t_old / t_new,
            "max_rel_diff": worst if math.isfinite(worst) else None,
        }
    return out


def last_changed_block(action: dict) -> int | None:
    """The last block an action changes (None when it names none the floor can read: then only its head counts)."""
    blocks = [b for key in ("remove_blocks", "skip_attention", "skip_mlp") for b in action.get(key, [])]
    r = action.get("replaceme")
    if r:
        blocks.append(int(r["start"]) + int(r["n"]) - 1)
    return max(blocks) if blocks else None


def least_exact_work(lm, lbs, result, n_ids: int) -> dict:
    """A lower bound on the forward work of ``result``'s board for exact numbers, in evaluations of the original
    (``n_ids``: the evaluation text's token ids that the board's windows cover, as the board counts them).

    Whatever is shared or cached, an exact row needs its own head on every scored position and every block after
    the last block its selection changes, on every token of every window (their inputs differ from the original's
    and from every other selection's); the original's own pass is one evaluation (its log-probabilities are the KL's
    reference). A damage scan needs, per candidate, the blocks after the removed one and the head on every search
    position (:func:`analysis.metrics.damage.scan_work` without its recording pass). Block runs between a
    selection's first and last change, the scans' recording passes and ReplaceMe's calibration pass come on top."""
    import json

    import numpy as np

    from analysis.capture.estimate import work_model
    from analysis.evaluation.perplexity import windows_for
    from analysis.evaluation.shared_prefix import original_work
    from analysis.metrics.damage import recording_work, scan_work

    wm = work_model(lm.model)
    ev, search = lbs.evaluation, lbs.search
    wins = windows_for(np.zeros(n_ids), ev.context, ev.stride)
    tokens = sum(e - s for s, e, _ in wins)
    scored = sum(e - f + 1 for _, e, f in wins)
    one = original_work(wm, n_ids, ev.context, ev.stride)
    head = scored * wm.head_params
    ev_heads = ev_blocks = 0.0
    actions = [json.loads(a) for a in result.rows["action"].unique()]
    for action in actions:
        last = last_changed_block(action)
        ev_heads += head
        if last is not None:
            ev_blocks += tokens * sum(wm.block_params[last + 1 :])
    # scans: the damage table of the original, then one greedy step per k after the first (SLEB); each what
    # damage.scan_work counts less the pass that records the block inputs
    n_scans = result.cost.get("scans_computed") or len(lbs.ks(wm.n_blocks))
    scan_heads = scan_blocks = 0.0
    for step in range(n_scans):
        n_kept = wm.n_blocks - step
        heads = n_kept * search.positions * wm.head_params
        scan_heads += heads
        scan_blocks += scan_work(wm, search, n_kept, "block") - recording_work(wm, search, n_kept) - heads
    total = one + ev_heads + ev_blocks + scan_heads + scan_blocks
    return {
        "selections": len(actions),
        "scans": n_scans,
        "total": total / one,
        "original": 1.0,
        "evaluation_evaluations": (ev_heads + ev_blocks) / one,
        "evaluation_heads": ev_heads / one,
        "scan_evaluations": (scan_heads + scan_blocks) / one,
        "scan_heads": scan_heads / one,
    }


if __name__ == "__main__":
    sys.exit(main())
