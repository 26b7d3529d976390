"""Cost of the topology views on the real default model: zigzag time and simplex count against the number of points,
and per-layer Rips time against the subsample size.

    PYTHONPATH=. nice python bench/topology.py [--sizes 250,500,1000,2000] [--old-sizes 500,1000] [--no-rips]

Clouds: the last token of every hidden state (31 states of the bundled SmolLM2-135M) for the first 2000 windows of
``--window-len`` tokens of alice; size N uses the first N windows. Windows of 8 tokens keep the model run at the
cost of the dashboard's default capture (2000 x 8 = 500 x 32 = 16,000 tokens; alice has 39k tokens, so 2000 windows
of 32 would need another text and 4x the capture). When the default 500 x 32 capture is in the cache (the zigzag
page or ``python -m analysis topology`` made it), the default setting is timed too, as the reference row.

Zigzag rows: FastZigzag (the engine) and, for ``--old-sizes`` (500 and 1000) and the default setting, the old
engine ``zigzag_homology_persistence`` on the same clouds in the same run: Dionysus time and total (graphs + cliques
+ Dionysus), the speed-ups, and whether the two bar multisets are identical. The old engine grows like
events ** 2.27, so a size whose old-engine time, predicted from the previous one, exceeds what is left of
``--old-budget`` seconds is not run with it. Also: the default 500 x 32 at m = 4 (the paper's value) and the
representatives of the longest bars at the default. The load average is printed: the machine is shared.

Rips rows: the middle state's cloud, scale-normalised and farthest-point subsampled once (a greedy farthest-point
subsample of n points is the first n of a larger one), then Rips alone per size, best of ``--repeat`` runs, against
``analysis.methods.persistence.estimate_rips_seconds``; the preparation (median distance, subsample) is timed apart. Ratios
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
    from analysis.methods.zigzag import estimate_simplex_count, estimate_zigzag_seconds

    t = time.perf_counter()
    count = estimate_simplex_count(clouds, k, m)
    return {
        "n": clouds[0].shape[0],
        "sum": count.total,
        "distinct": count.n_distinct,
        "events": count.n_events,
        "estimate": estimate_zigzag_seconds(count),
        "count_s": time.perf_counter() - t,
    }


def time_zigzag(clouds: list[np.ndarray], k: int, m: int, engine: str = "fast", count: dict | None = None) -> dict:
    from analysis.methods.zigzag import zigzag_bars

    r = dict(count) if count is not None else count_zigzag(clouds, k, m)
    t = time.perf_counter()
    bars = zigzag_bars(clouds, k=k, max_dim=m, keep_top_dim=True, engine=engine)
    r.update(
        total_s=time.perf_counter() - t,
        dionysus_s=bars.attrs["zigzag_seconds"],
        bars=len(bars),
        multiset=sorted(map(tuple, bars[["dim", "birth_index", "death_index"]].to_numpy().tolist())),
    )
    return r


def _load() -> str:
    return "load average %.1f / %.1f / %.1f" % os.getloadavg()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000", help="numbers of points (windows) for the zigzag")
    parser.add_argument(
        "--old-sizes",
        default="500,1000",
        help="sizes also run with the old engine (zigzag_homology_persistence), same run",
    )
    parser.add_argument("--window-len", type=int, default=8, help="tokens per window of the scaling clouds (8)")
    parser.add_argument("--text", default="alice")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-dim", type=int, default=3)
    parser.add_argument("--rips-sizes", default="100,200,300,500,1000,1500")
    parser.add_argument("--rips-h2-sizes", default="100,200,300")
    parser.add_argument("--no-reference", action="store_true", help="skip the cached 500 x 32 default setting")
    parser.add_argument("--no-rips", action="store_true", help="skip the per-layer Rips rows")
    parser.add_argument(
        "--old-budget",
        type=float,
        default=1200.0,
        help="seconds of old-engine runs; a size predicted to exceed what is left is not run (0: no limit)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="Rips runs per size (the best is kept)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    old_sizes = {int(s) for s in args.old_sizes.split(",") if s}

    from analysis.methods.persistence import estimate_rips_seconds, layer_diagrams
    from analysis.model.loading import ModelSpec, load_model
    from analysis.profiles import topology as topo
    from analysis.texts import bundled_text

    t0 = time.perf_counter()
    print(f"start: {_load()} on {os.cpu_count()} CPUs (the machine is shared: timings move with the load)")
    lm = load_model(ModelSpec(device="cpu"))
    text = bundled_text(args.text)
    n_max = max(sizes)
    cached = topo.last_token_is_captured(lm, text, n_max, args.window_len)
    t = time.perf_counter()
    cap = topo.last_token_capture(lm, text, n_max, args.window_len)
    print(f"model {lm.name}, {lm.n_blocks + 1} states, width {lm.width}; text {text.label}")
    print(
        f"capture: last token of {n_max} windows of {args.window_len} tokens "
        f"({'cache' if cached else f'computed in {time.perf_counter() - t:.0f} s'})\n"
    )
    full = [cap.last_token_cloud(s) for s in cap.state_ids]

    print(
        f"Zigzag, {len(full)} states, k = {args.k}, m = {args.max_dim} (N = first N windows): FastZigzag (the "
        "engine) against zigzag_homology_persistence (the old engine, the oracle), same clouds, same run"
    )
    rows, spent_old = [], 0.0
    last_old = None

    def run(label, clouds, m, with_old):
        nonlocal spent_old, last_old
        c = count_zigzag(clouds, args.k, m)
        f = time_zigzag(clouds, args.k, m, "fast", c)
        o = None
        if with_old:
            predicted = (last_old["total_s"] * (c["events"] / last_old["events"]) ** 2.27) if last_old else 0.0
            if args.old_budget and spent_old + predicted > args.old_budget:
                print(f"  {label}: old engine predicted {predicted:.0f} s, over --old-budget: not run", file=sys.stderr)
            else:
                o = time_zigzag(clouds, args.k, m, "zigzag", c)
                spent_old += o["total_s"]
                last_old = o
        print(
            f"  {label}: fast {f['total_s']:.1f} s" + (f", old {o['total_s']:.1f} s" if o else "") + f"; {_load()}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(
            [
                label,
                m,
                f"{c['distinct']:,}",
                f"{c['events']:,}",
                f"{c['estimate']:.1f}",
                f"{f['dionysus_s']:.2f}",
                f"{f['total_s']:.2f}",
                f"{o['dionysus_s']:.1f}" if o else "-",
                f"{o['total_s']:.1f}" if o else "-",
                f"{o['dionysus_s'] / f['dionysus_s']:.0f}x" if o else "-",
                f"{o['total_s'] / f['total_s']:.0f}x" if o else "-",
                ("yes" if o["multiset"] == f["multiset"] else "NO") if o else "-",
                f"{f['bars']:,}",
            ]
        )
        return f

    for n in sizes:
        run(str(n), [X[:n] for X in full], args.max_dim, n in old_sizes)
    rep_note = ""
    if not args.no_reference:
        if topo.last_token_is_captured(lm, text, 500, 32):
            ref = topo.last_token_capture(lm, text, 500, 32)
            clouds = [ref.last_token_cloud(s) for s in ref.state_ids]
            run("500 x 32 (default)", clouds, args.max_dim, True)
            run("500 x 32, m = 4", clouds, 4, False)
            from analysis.methods.zigzag import representatives_of_clouds

            t = time.perf_counter()
            bars, cells = representatives_of_clouds(clouds, args.k, args.max_dim, top=topo.REPRESENTATIVE_TOP)
            rep_note = (
                f"  representatives of the {len(bars)} longest bars ({dict(topo.REPRESENTATIVE_TOP)} per "
                f"dimension) at the default, every layer: {time.perf_counter() - t:.1f} s (graphs, cliques, "
                f"FastZigzag with the V matrix, lifts); {len(cells.attrs['unverified'])} (bar, layer) chains "
                "failed the cycle check and are not shown"
            )
        else:
            rep_note = (
                "  (the default 500 x 32 capture is not cached: open the zigzag page or run "
                "`python -m analysis topology` once to add it as a reference row)"
            )
    headers = [
        "N",
        "m",
        "simplices",
        "events",
        "estimate s",
        "fast Dionysus s",
        "fast total s",
        "old Dionysus s",
        "old total s",
        "speed-up Dionysus",
        "speed-up total",
        "same bars",
        "bars",
    ]
    print(_table(headers, rows))
    if rep_note:
        print(rep_note)
    print(
        "  simplices = distinct simplices over all layers; events = entries + exits of the zigzag; the estimate is "
        "made before running (analysis.methods.zigzag.estimate_zigzag_seconds, FastZigzag total); total = kNN graphs + "
        "cliques + Dionysus; same bars = identical (dim, birth, death) multisets, H_m artefacts included"
    )
    print(f"  after the zigzag rows: {_load()}\n")
    if args.no_rips:
        print(f"total bench time {time.perf_counter() - t0:.0f} s")
        return 0

    from analysis.methods.clouds import farthest_point_subsample, normalise_scale
    from analysis.methods.persistence import rips_diagrams

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
    with threadpool_limits(1):  # as analysis.profiles.topology does it
        order = farthest_point_subsample(Xn, max(rips_sizes + h2_sizes))
    t_fps = time.perf_counter() - t
    print(
        f"Per-layer Rips (GUDHI), state h{middle}: last-token cloud of {X.shape[0]} points, width {X.shape[1]}; "
        f"preparation: median pairwise distance {t_scale:.2f} s, farthest-point subsample of "
        f"{len(order)} points {t_fps:.2f} s"
    )
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
            all_states = topo.estimate_persistence_seconds(
                topo.PersistenceSettings(n_points=n, max_dim=max_dim), len(full), X.shape[0], X.shape[1]
            )
            rows.append(
                [
                    f"H0..H{max_dim}",
                    n,
                    f"{best:.3f}",
                    f"{estimate_rips_seconds(n, max_dim):.3f}",
                    f"{all_states:.0f}",
                    len(d[1]),
                    len(d[2]) if max_dim >= 2 else "-",
                    best,
                ]
            )
    for r in rows:
        b = base.get(int(r[0][-1]))
        r[-1] = f"{r[-1] / b:.2f}" if b else "-"
    print(
        _table(
            ["homology", "points", "Rips s", "estimate s", "31 states est. s", "H1 bars", "H2 bars", "time / 300 pts"],
            rows,
        )
    )
    print(
        "  Rips s: GUDHI alone, best of the runs; '31 states est.' is what the persistence page announces "
        "(Rips estimate + preparation, for this cloud of "
        f"{X.shape[0]} points)"
    )
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
