"""The damage scan against the naive scan, and the leaderboard, timed in one run on the default model.

1. The single-block damage scan over every block on the search text two ways, cold (nothing cached): reusing the
   reference pass (each candidate runs only the blocks after the removed one, from the recorded hidden state) and
   naively (a full forward of each pruned model). Both give the same numbers (the largest |Δ NLL| is printed).
2. The leaderboard for k = 1..K with a private, empty cache (scans, greedy search, every rule's evaluations).

    python bench/search.py                                   # the README numbers (2 shared CPU cores)
    python bench/search.py --search-tokens 512 --k 2 --eval-tokens 1024

Timings on a shared CPU are noisy (other work runs beside it); the ratio of the two scans, measured back to back,
is the figure to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, print_table, private_cache, save  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--search-text", default="lcet10")
    p.add_argument("--search-tokens", type=int, default=1024)
    p.add_argument("--search-context", type=int, default=512)
    p.add_argument("--k", type=int, default=2, help="largest k of the timed leaderboard")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--metrics", default="block_influence,angular_distance,measured_damage")
    p.add_argument("--skip-leaderboard", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from analysis.metrics import damage
    from analysis.search import leaderboard as lb
    from analysis.model.loading import ModelSpec, load_model
    from analysis.texts import bundled_text
    from analysis.capture.workspace import Workspace

    lm = load_model(ModelSpec(source=args.model, device="auto"))
    settings = damage.SearchSettings(text=args.search_text, n_tokens=args.search_tokens, context=args.search_context)
    text = settings.resolve()
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
    rows = [{"scan": "reuse the reference pass", "candidates": len(fast), "seconds": t_fast,
             "per candidate s": t_fast / len(fast), "speed-up": t_naive / t_fast},
            {"scan": "naive (full forward each)", "candidates": len(naive), "seconds": t_naive,
             "per candidate s": t_naive / len(naive), "speed-up": 1.0}]
    print(f"model {lm.name}, {lm.n_blocks} blocks; search text {text.label}: {settings.n_tokens} tokens in windows of "
          f"{settings.context}; reference pass {t_ref:.1f} s (shared by both scans)")
    print_table("Single-block damage scan, cold", rows)
    print(f"largest |ΔNLL| between the two scans: {diff:.2e}")
    payload = {"scan": rows, "max_abs_nll_diff": diff, "reference_s": t_ref, "settings": settings.to_dict()}
    if not args.skip_leaderboard:
        ev = lb.default_eval_settings(n_tokens=args.eval_tokens, context=args.context, stride=args.stride)
        lbs = lb.LeaderboardSettings(k_max=args.k, search=settings, evaluation=ev,
                                     metrics=tuple(args.metrics.split(",")))
        with private_cache():
            ws = Workspace(lm=lm, text=bundled_text("alice"))
            est = lb.estimate(ws, lbs)
            t0 = time.perf_counter()
            result = lb.run(ws, lbs)
            t_lb = time.perf_counter() - t0
        n_eval = result.rows["action"].nunique()
        print_table(f"Leaderboard k = 1..{args.k}, cold cache", [
            {"estimated s": est["seconds"], "measured s": t_lb, "evaluations": n_eval, "rows": len(result.rows),
             "metrics": args.metrics}])
        print(result.winners().to_string(index=False))
        payload["leaderboard"] = {"seconds": t_lb, "estimate": est["seconds"], "evaluations": n_eval,
                                  "k": args.k, "eval_tokens": args.eval_tokens}
    print(f"machine: {machine()}")
    print(save("search", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
