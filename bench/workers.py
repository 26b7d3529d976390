"""Throughput of the damage scan and the leaderboard's evaluations against the number of Ray workers.

One damage scan (every block of the bundled model, ``--search-tokens`` tokens of lcet10) and ``--evaluations``
evaluations of block selections (``--eval-tokens`` tokens of asyoulik), timed in this process and on a local Ray
with 1 and with 2 workers (``analysis.search.distributed.ReplicaPool``), each in a fresh cache. Ray's start (the
local Ray and the replicas loading the model) is timed apart from the work. The ratio is in-process seconds /
Ray seconds (> 1: faster on Ray), and every Ray row is checked equal to the in-process one.

    PYTHONPATH=. python bench/workers.py [--workers 1,2] [--search-tokens 512] [--evaluations 4]

On a machine with C cores, the in-process run already uses C torch threads; W workers get C / W threads each.
No speed-up is expected when the in-process run keeps every core busy (docs/cluster.md says what 2 cores can show).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, print_table, private_cache, save  # noqa: E402

SELECTIONS = ([12, 13], [27, 28], [5], [20, 21, 22], [9, 10], [3, 4], [15], [24, 25])


def _work(lm, search, evaluation, actions, pool=None) -> tuple[dict, list, list]:
    from analysis.metrics import damage
    from analysis.search import leaderboard as lb
    from analysis.texts import resolve_text

    text = resolve_text(evaluation.text)
    t0 = time.perf_counter()
    rows = damage.scan(lm, search, None, ("block",))
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if pool is not None:
        pool.evaluate_missing(actions, evaluation, text)
    evals = [lb.evaluate_action(lm, a, evaluation, text) for a in actions]
    eval_s = time.perf_counter() - t0
    return {"scan_s": scan_s, "eval_s": eval_s}, rows, evals


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--search-tokens", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--evaluations", type=int, default=4)
    args = ap.parse_args(argv)

    import torch

    from analysis.metrics.damage import SearchSettings
    from analysis.model.loading import ModelSpec, load_model
    from analysis.search import leaderboard as lb
    from analysis.search.distributed import Cluster, ReplicaPool

    lm = load_model(ModelSpec(device="cpu"))
    search = SearchSettings(n_tokens=args.search_tokens, context=min(256, args.search_tokens))
    evaluation = lb.default_eval_settings(n_tokens=args.eval_tokens, context=256, stride=128)
    actions = [{"remove_blocks": s} for s in SELECTIONS[: args.evaluations]]
    candidates = lm.n_blocks
    rows = []
    with private_cache():
        base, ref_rows, ref_evals = _work(lm, search, evaluation, actions)
    rows.append(
        {
            "where": f"in process ({torch.get_num_threads()} threads)",
            "start s": 0.0,
            **base,
            "scan candidates/s": candidates / base["scan_s"],
            "evaluations/s": len(actions) / base["eval_s"],
            "ratio": 1.0,
            "equal": True,
        }
    )
    for n in [int(w) for w in args.workers.split(",") if w.strip()]:
        with private_cache():
            t0 = time.perf_counter()
            with ReplicaPool(lm, Cluster(workers=n)) as pool:
                start = time.perf_counter() - t0
                threads = pool.replicas[0]["threads"]
                timing, scan_rows, evals = _work(lm, search, evaluation, actions, pool)
        equal = all(
            abs(a["delta_nll"] - b["delta_nll"]) <= 1e-6 * abs(b["delta_nll"]) + 1e-9
            for a, b in zip(scan_rows, ref_rows)
        ) and all(abs(a["perplexity"] - b["perplexity"]) <= 1e-6 * b["perplexity"] for a, b in zip(evals, ref_evals))
        total, base_total = timing["scan_s"] + timing["eval_s"], base["scan_s"] + base["eval_s"]
        rows.append(
            {
                "where": f"Ray, {n} worker{'s' if n > 1 else ''} × {threads} thread{'s' if threads > 1 else ''}",
                "start s": start,
                **timing,
                "scan candidates/s": candidates / timing["scan_s"],
                "evaluations/s": len(actions) / timing["eval_s"],
                "ratio": base_total / total,
                "equal": equal,
            }
        )
    print_table(
        f"damage scan ({candidates} candidates, {args.search_tokens} tokens) + {len(actions)} evaluations "
        f"({args.eval_tokens} tokens), bundled model, CPU",
        rows,
    )
    path = save("workers", {"settings": vars(args), "rows": rows})
    print(path)
    return {"machine": machine(), "rows": rows}


if __name__ == "__main__":
    main()
