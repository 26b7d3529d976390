"""Cost of the topology views on the real default model: zigzag time and simplex count against the number of points,
and per-layer Rips time against the subsample size.

    PYTHONPATH=. nice python bench/topology.py [--sizes 250,500,1000,2000] [--window-len 8] [--k 4] [--max-dim 3]

Clouds: the last token of every hidden state (31 states of the bundled SmolLM2-135M) for the first 2000 windows of
``--window-len`` tokens of alice; size N uses the first N windows. Windows of 8 tokens keep the model run at the
cost of the dashboard's default capture (2000 x 8 = 500 x 32 = 16,000 tokens; alice has 39k tokens, so 2000 windows
of 32 would need another text and 4x the capture). When the default 500 x 32 capture is in the cache (the zigzag
page or ``python -m analysis topology`` made it), the default setting is timed too, as the reference row.

Zigzag rows: the counts made before running (distinct simplices, simplices summed over layers, zigzag events) and
the estimated seconds, against the measured time; ratios are against the first size of the same run. Dionysus' time
grows like events ** 2.27, so N = 2000 takes minutes: a size whose time, predicted from the previous measured size,
would exceed what is left of ``--budget`` seconds is counted but not run, and its row says so (``--budget 0`` runs
everything; on the loaded 2-core development machine N = 2000 took 446 s).

Rips rows: the middle state's cloud, scale-normalised and farthest-point subsampled once (a greedy farthest-point
subsample of n points is the first n of a larger one), then Rips alone per size, best of ``--repeat`` runs, against
``analysis.persistence.estimate_rips_seconds``; the preparation (median distance, subsample) is timed apart. Ratios
against 300 points, the default. Total runtime: about 3-5 minutes, plus about 100 s of capture on a first run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def count_zigzag(clouds: list[np.ndarray], k: int, m: int) -> dict:
    from analysis.zigzag import estimate_simplex_count, estimate_zigzag_seconds

    t = time.perf_counter()
    count = estimate_simplex_count(clouds, k, m)
    return {"n": clouds[0].shape[0], "sum": count.total, "distinct": count.n_distinct, "events": count.n_events,
            "estimate": estimate_zigzag_seconds(count), "count_s": time.perf_counter() - t}


def time_zigzag(clouds: list[np.ndarray], k: int, m: int) -> dict:
    from analysis.zigzag import zigzag_bars

    r = count_zigzag(clouds, k, m)
    t = time.perf_counter()
    bars = zigzag_bars(clouds, k=k, max_dim=m)
    r.update(total_s=time.perf_counter() - t, dionysus_s=bars.attrs["zigzag_seconds"], bars=len(bars))
    return r


def _row(label, r: dict, base: dict) -> list:
    measured = "total_s" in r
    return [label, f"{r['distinct']:,}", f"{r['sum']:,}", f"{r['events']:,}", f"{r['estimate']:.1f}",
            f"{r['dionysus_s']:.1f}" if measured else "-",
            f"{r['total_s']:.1f}" if measured else f"~{r['predicted']:.0f} (not run)",
            f"{r['bars']:,}" if measured else "-", f"{r['distinct'] / base['distinct']:.2f}",
            f"{r['total_s'] / base['total_s']:.2f}" if measured else f"~{r['predicted'] / base['total_s']:.0f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000", help="numbers of points (windows) for the zigzag")
    parser.add_argument("--window-len", type=int, default=8, help="tokens per window of the scaling clouds (8)")
    parser.add_argument("--text", default="alice")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-dim", type=int, default=3)
    parser.add_argument("--rips-sizes", default="100,200,300,500,1000,1500")
    parser.add_argument("--rips-h2-sizes", default="100,200,300")
    parser.add_argument("--no-reference", action="store_true", help="skip the cached 500 x 32 default setting")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds of zigzag runs; a size predicted to exceed what is left is not run (0: no limit)")
    parser.add_argument("--repeat", type=int, default=2, help="Rips runs per size (the best is kept)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from analysis import topology as topo
    from analysis.models import ModelSpec, load_model
    from analysis.persistence import estimate_rips_seconds, layer_diagrams
    from analysis.texts import bundled_text

    t0 = time.perf_counter()
    lm = load_model(ModelSpec(device="cpu"))
    text = bundled_text(args.text)
    n_max = max(sizes)
    cached = topo.last_token_is_captured(lm, text, n_max, args.window_len)
    t = time.perf_counter()
    cap = topo.last_token_capture(lm, text, n_max, args.window_len)
    print(f"model {lm.name}, {lm.n_blocks + 1} states, width {lm.width}; text {text.label}")
    print(f"capture: last token of {n_max} windows of {args.window_len} tokens "
          f"({'cache' if cached else f'computed in {time.perf_counter() - t:.0f} s'})\n")
    full = [cap.last_token_cloud(s) for s in cap.state_ids]

    print(f"Zigzag, {len(full)} states, k = {args.k}, m = {args.max_dim} (N = first N windows)")
    from analysis.zigzag import ZIGZAG_EVENTS_EXPONENT

    rows, base, last, spent = [], None, None, 0.0
    for n in sizes:
        clouds = [X[:n] for X in full]
        r = count_zigzag(clouds, args.k, args.max_dim)
        predicted = (last["total_s"] * (r["events"] / last["events"]) ** ZIGZAG_EVENTS_EXPONENT if last
                     else r["estimate"])
        if args.budget and last is not None and spent + predicted > args.budget:
            r["predicted"] = predicted
            print(f"  N = {n}: predicted {predicted:.0f} s, over the budget: not run", file=sys.stderr)
        else:
            r = time_zigzag(clouds, args.k, args.max_dim)
            spent += r["total_s"]
            last = r
            print(f"  N = {n}: {r['total_s']:.1f} s", file=sys.stderr)
        base = base or r
        rows.append(_row(n, r, base))
    headers = ["N", "simplices", "sum over layers", "events", "estimate s", "Dionysus s", "total s", "bars",
               f"simplices / N={sizes[0]}", f"time / N={sizes[0]}"]
    ref_note = ""
    if not args.no_reference:
        if topo.last_token_is_captured(lm, text, 500, 32):
            ref = topo.last_token_capture(lm, text, 500, 32)
            r = time_zigzag([ref.last_token_cloud(s) for s in ref.state_ids], args.k, args.max_dim)
            rows.append(_row("500 x 32 (default)", r, base))
        else:
            ref_note = ("  (the default 500 x 32 capture is not cached: open the zigzag page or run "
                        "`python -m analysis topology` once to add it as a reference row)")
    print(_table(headers, rows))
    if ref_note:
        print(ref_note)
    print("  simplices = distinct simplices over all layers; events = entries + exits Dionysus performs; the "
          "estimate is made before running (analysis.zigzag.estimate_zigzag_seconds); total = kNN graphs + cliques "
          "+ Dionysus\n")

    from analysis.clouds import farthest_point_subsample, normalise_scale
    from analysis.persistence import rips_diagrams

    middle = len(full) // 2
    X = full[middle]
    rips_sizes = [int(s) for s in args.rips_sizes.split(",") if int(s) <= X.shape[0]]
    h2_sizes = [int(s) for s in args.rips_h2_sizes.split(",") if int(s) <= X.shape[0]]
    layer_diagrams(X[:20], n_points=20)  # imports before timing
    t = time.perf_counter()
    Xn, _ = normalise_scale(X)
    t_scale = time.perf_counter() - t
    from threadpoolctl import threadpool_limits

    t = time.perf_counter()
    with threadpool_limits(1):  # as analysis.topology does it
        order = farthest_point_subsample(Xn, max(rips_sizes + h2_sizes))
    t_fps = time.perf_counter() - t
    print(f"Per-layer Rips (GUDHI), state h{middle}: last-token cloud of {X.shape[0]} points, width {X.shape[1]}; "
          f"preparation: median pairwise distance {t_scale:.2f} s, farthest-point subsample of "
          f"{len(order)} points {t_fps:.2f} s")
    rows, base = [], {}
    for max_dim, ns in ((1, rips_sizes), (2, h2_sizes)):
        for n in ns:
            best = float("inf")
            for _ in range(max(1, args.repeat)):
                t = time.perf_counter()
                d = rips_diagrams(Xn[order[:n]], max_dim=max_dim)
                best = min(best, time.perf_counter() - t)
            if n == 300:
                base[max_dim] = best
            all_states = topo.estimate_persistence_seconds(topo.PersistenceSettings(n_points=n, max_dim=max_dim),
                                                           len(full), X.shape[0], X.shape[1])
            rows.append([f"H0..H{max_dim}", n, f"{best:.3f}", f"{estimate_rips_seconds(n, max_dim):.3f}",
                         f"{all_states:.0f}", len(d[1]), len(d[2]) if max_dim >= 2 else "-", best])
    for r in rows:
        b = base.get(int(r[0][-1]))
        r[-1] = f"{r[-1] / b:.2f}" if b else "-"
    print(_table(["homology", "points", "Rips s", "estimate s", "31 states est. s", "H1 bars", "H2 bars",
                  "time / 300 pts"], rows))
    print("  Rips s: GUDHI alone, best of the runs; '31 states est.' is what the persistence page announces "
          "(Rips estimate + preparation, for this cloud of "
          f"{X.shape[0]} points)")
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
