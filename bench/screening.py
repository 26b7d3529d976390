"""Two-stage greedy search (EvoPress-style screening) against SLEB's full scan, on the default model.

Issue 18 allows screening SLEB's greedy steps on a short prefix of the search text and re-scoring only the best few
in full, "only where its choices equal the full search's". This measures whether it can: for each greedy step of
the full search (SLEB's chain on the search text), every candidate is scored on the full search text (the
baseline, timed in the same run) and on the first P tokens of it (one window of P tokens), for each P. A two-stage
step keeps SLEB's choice only if it re-scores at least as many candidates as the rank the full search's best has
on the prefix ("re-score"); its work is the prefix scan plus the full scan's recording pass and those candidates
(:func:`analysis.metrics.damage.candidate_work`), against the full scan's.

    python bench/screening.py                     # k = 1..4 on lcet10 (1024 tokens, context 512): the board's
    python bench/screening.py --k 2 --prefixes 128,512

Step 1's scan is the board's damage table, which it prints whole: only the steps after it could be screened.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_search_arguments, machine, print_table, save, search_settings  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_search_arguments(p)
    p.add_argument("--k", type=int, default=4, help="greedy steps (the board's largest k)")
    p.add_argument("--prefixes", default="64,128,256,512", help="prefix lengths P to screen on, in tokens")
    return p.parse_args(argv)


def ranked(rows: list[dict], allowed: set[int]) -> list[dict]:
    """The rows greedy chooses among, best first (its own order: perplexity, then block)."""
    return sorted((r for r in rows if r["block"] in allowed), key=lambda r: (r["perplexity"], r["block"]))


def main(argv=None) -> int:
    args = parse(argv)
    from analysis.capture.estimate import work_model
    from analysis.evaluation.shared_prefix import original_work
    from analysis.metrics import damage
    from analysis.model.loading import ModelSpec, load_model
    from analysis.search.leaderboard import default_eval_settings

    lm = load_model(ModelSpec(source=args.model, device="auto"))
    full = search_settings(args)
    text = full.resolve()
    prefixes = [int(p) for p in args.prefixes.split(",")]
    wm = work_model(lm.model)
    ev = default_eval_settings()
    one = original_work(wm, ev.n_tokens, ev.context, ev.stride)
    allowed = set(damage.candidate_blocks(lm.n_blocks))
    state = damage.normalise_state(None)
    rows, steps, works = [], [], {}
    for step in range(1, args.k + 1):
        n_kept = lm.n_blocks - len(state["blocks"])
        t0 = time.perf_counter()
        full_rows = ranked(damage.scan(lm, full, state, ("block",), text=text), allowed)
        full_s = time.perf_counter() - t0
        best = full_rows[0]
        kept = damage.scan_candidates(lm.n_blocks, state)
        position = {b: j for j, b, _ in kept}
        full_work = damage.scan_work(wm, full, n_kept, "block")
        steps.append({"step": step, "block": best["block"], "perplexity": best["perplexity"], "full_s": full_s})
        for p in prefixes:
            screen = replace(full, n_tokens=p, context=p)
            t0 = time.perf_counter()
            order = ranked(damage.scan(lm, screen, state, ("block",), text=text), allowed)
            screen_s = time.perf_counter() - t0
            rank = [r["block"] for r in order].index(best["block"]) + 1

            def two_stage(m, order=order, screen=screen, n_kept=n_kept, position=position):
                """Work of the step screened on ``screen`` with its best ``m`` re-scored in full."""
                return (
                    damage.scan_work(wm, screen, n_kept, "block")
                    + damage.recording_work(wm, full, n_kept)
                    + sum(damage.candidate_work(wm, full, n_kept, position[r["block"]], "block") for r in order[:m])
                )

            work = two_stage(rank)
            works[(step, p)] = (full_work, two_stage)
            rows.append(
                {
                    "step": step,
                    "SLEB's block": best["block"],
                    "prefix P": p,
                    "its rank on P": rank,
                    "re-score": f"{rank} of {len(order)}",
                    "two-stage / full work": work / full_work,
                    "saved (evals)": (full_work - work) / one,
                    "prefix scan s": screen_s,
                    "full scan s": full_s,
                }
            )
        state = damage.state_with(state, best["block"], "block")
    print_table(
        f"Greedy steps screened on the first P of {full.n_tokens} search tokens ({full.text}): what keeps SLEB's "
        f"choice (work in evaluations of the original: {ev.n_tokens} tokens, context {ev.context}, stride "
        f"{ev.stride})",
        rows,
    )
    print("SLEB's chain: " + ", ".join(f"{s['block']} ({s['perplexity']:.4f})" for s in steps))
    later = [r for r in rows if r["step"] > 1]
    summary = []
    for p in prefixes:
        mine = [r for r in later if r["prefix P"] == p]
        if mine:
            # a two-stage search fixes how many it re-scores beforehand: the most any of these steps needed
            m = max(r["its rank on P"] for r in mine)
            saved = sum(works[(r["step"], p)][0] - works[(r["step"], p)][1](m) for r in mine) / one
            summary.append(
                {"prefix P": p, "re-score (the most a step needed)": m, "saved over steps 2..k (evals)": saved}
            )
    print_table(
        "What screening steps 2..k would save on the board, re-scoring in every step as many as the worst step "
        "needed (no margin: one more draw of the text could need more)",
        summary,
    )
    print(f"machine: {machine()}")
    print(save("screening", {"settings": full.to_dict(), "rows": rows, "chain": steps, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
