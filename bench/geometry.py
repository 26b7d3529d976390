"""Geometry benchmarks, each comparison measured in the same run:

1. **TwoNN per hidden state**: ``analysis.methods.intrinsic_dimension.twonn`` against scikit-dimension's ``TwoNN`` (the test
   oracle) on 5000 × 576 clouds — every chosen hidden state of the bundled model on the calibration text (40
   windows of 128 tokens, deduplicated, 5000 rows drawn with a fixed seed), and a synthetic cloud (a 10-dimensional
   Gaussian embedded in R^576 with 1e-3 noise). Both get the same float32 rows; best and median of ``--repeats``.
2. **AVSS overhead on top of capture**: the capture loop (forward with ``output_hidden_states`` and a copy of every
   state into memory, as ``capture_hidden_states`` does minus the disk) alone, then with the AVSS hooks of each site
   attached, on the same windows; runs alternate and the best of ``--repeats`` is kept (the machine is shared).

    PYTHONPATH=. python bench/geometry.py [--states 1,8,15,22,29,30 | --all-states] [--repeats 3]
                                           [--windows 16] [--skip-twonn] [--skip-avss]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

N_POINTS = 5000


def _timed(fn: Callable[[], float], repeats: int) -> tuple[float, float, float, float]:
    """``(value, best wall s, median wall s, best CPU s)``: CPU time of this process (all its threads), which
    other people's jobs on a shared machine inflate far less than wall time."""
    walls, cpus, value = [], [], float("nan")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return value, min(walls), statistics.median(walls), min(cpus)


def _synthetic(n: int = N_POINTS, width: int = 576, k: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame, _ = np.linalg.qr(rng.standard_normal((width, k)))
    return (rng.standard_normal((n, k)) @ frame.T + 1e-3 * rng.standard_normal((n, width))).astype(np.float32)


def bench_twonn(lm, text, states: list[int], repeats: int) -> list[dict]:
    import skdim

    from analysis.capture.workspace import Calibration, Workspace
    from analysis.methods.clouds import dedupe_rows, subsample_rows
    from analysis.methods.intrinsic_dimension import twonn

    n_windows = -(-N_POINTS // 128) + 1  # 41 windows of 128 tokens: 5248 tokens, 5000 distinct rows drawn
    ws = Workspace(lm=lm, text=text, calibration=Calibration(n_windows=n_windows, window_len=128))
    cap = ws.capture()
    clouds = [("synthetic (10-d Gaussian in R^576)", _synthetic())]
    for s in states:
        X = dedupe_rows(cap.all_token_cloud(s))
        clouds.append((f"h{s}", subsample_rows(X, N_POINTS, seed=0)))
    twonn(clouds[0][1][:200])  # warm up torch
    rows = []
    print(f"\nTwoNN on {N_POINTS} x {lm.width} float32 clouds, best of {repeats} runs each (wall and CPU seconds)")
    print(
        f"{'cloud':<36}{'ours':>8}{'skdim':>8}{'ours s':>8}{'skdim s':>9}{'ratio':>7}"
        f"{'ours cpu':>10}{'skdim cpu':>10}{'ratio':>7}"
    )
    for name, X in clouds:
        ours, best_o, med_o, cpu_o = _timed(lambda: twonn(X), repeats)
        theirs, best_t, med_t, cpu_t = _timed(lambda: float(skdim.id.TwoNN().fit(X).dimension_), repeats)
        rows.append(
            {
                "cloud": name,
                "n": X.shape[0],
                "ours": ours,
                "skdim": theirs,
                "ours_s": best_o,
                "skdim_s": best_t,
                "ours_cpu_s": cpu_o,
                "skdim_cpu_s": cpu_t,
            }
        )
        print(
            f"{name:<36}{ours:8.3f}{theirs:8.3f}{best_o:8.2f}{best_t:9.2f}{best_t / best_o:6.2f}x"
            f"{cpu_o:10.2f}{cpu_t:10.2f}{cpu_t / cpu_o:6.2f}x",
            flush=True,
        )
    for key, what in (("s", "wall"), ("cpu_s", "CPU")):
        speedups = [r[f"skdim_{key}"] / r[f"ours_{key}"] for r in rows]
        print(
            f"skdim time / ours ({what}, best of {repeats}): min {min(speedups):.2f}x, median "
            f"{statistics.median(speedups):.2f}x, max {max(speedups):.2f}x"
        )
    print(f"largest |ours - skdim| / skdim = {max(abs(r['ours'] - r['skdim']) / r['skdim'] for r in rows):.1e}")
    return rows


@torch.no_grad()
def bench_avss(lm, text, n_windows: int, repeats: int) -> list[dict]:
    from analysis.capture.hidden_states import iter_hidden_states
    from analysis.methods import avss as avss_math
    from analysis.profiles.avss import SITES, _CountMask, avss_hooks
    from analysis.texts import calibration_windows

    windows = calibration_windows(lm.tokenizer, text, n_windows, 128)
    n_states = lm.n_blocks + 1
    buffer = np.empty((n_states, n_windows, 128, lm.width), dtype=np.float32)

    def loop() -> None:
        for start, hidden in iter_hidden_states(lm, windows):
            for s in range(n_states):
                buffer[s, start : start + hidden[s].shape[0]] = hidden[s].float().cpu().numpy()

    def capture_loop(site: str | None) -> float:
        if site is None:
            loop()
            return 0.0
        acc = avss_math.AVSSAccumulator(lm.n_blocks)
        with avss_hooks(lm, site, acc, _CountMask()):  # mask None: every position counts (no exclusion)
            loop()
        acc.result()
        return 0.0

    capture_loop(None)  # warm-up
    runs: dict[str | None, list[tuple[float, float]]] = {None: [], **{s: [] for s in SITES}}
    for _ in range(repeats):
        for site in runs:  # alternate, so that a burst of load hits every variant alike
            _, wall, _, cpu = _timed(lambda: capture_loop(site), 1)
            runs[site].append((wall, cpu))
    base_wall = min(w for w, _ in runs[None])
    base_cpu = min(c for _, c in runs[None])
    print(
        f"\nAVSS overhead on top of capture: {n_windows} windows x 128 tokens, {lm.n_blocks} blocks, best of "
        f"{repeats} alternating runs"
    )
    print(f"{'run':<34}{'wall s':>8}{'ratio':>8}{'CPU s':>8}{'ratio':>8}")
    rows = []
    for site, times in runs.items():
        name = "capture alone" if site is None else f"capture + AVSS hooks ({site})"
        wall, cpu = min(w for w, _ in times), min(c for _, c in times)
        rows.append(
            {"run": name, "wall_s": wall, "cpu_s": cpu, "wall_ratio": wall / base_wall, "cpu_ratio": cpu / base_cpu}
        )
        print(f"{name:<34}{wall:8.2f}{wall / base_wall:8.3f}{cpu:8.2f}{cpu / base_cpu:8.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--states", default="1,8,15,22,29,30", help="hidden states for the TwoNN timing")
    p.add_argument("--all-states", action="store_true", help="time TwoNN on every hidden state")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--windows", type=int, default=16, help="windows of 128 tokens for the AVSS overhead")
    p.add_argument("--skip-twonn", action="store_true")
    p.add_argument("--skip-avss", action="store_true")
    args = p.parse_args(argv)

    from analysis.model.loading import ModelSpec, load_model
    from analysis.texts import bundled_text

    lm = load_model(ModelSpec(device="cpu"))
    text = bundled_text("alice")
    print(
        f"{lm.name}: {lm.n_blocks} blocks, width {lm.width}; torch threads {torch.get_num_threads()}; "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})"
    )
    states = list(range(lm.n_blocks + 1)) if args.all_states else [int(s) for s in args.states.split(",") if s]
    if not args.skip_twonn:
        bench_twonn(lm, text, states, args.repeats)
    if not args.skip_avss:
        bench_avss(lm, text, args.windows, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
