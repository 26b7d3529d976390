"""Time analysis.intrinsic_dimension.twonn against scikit-dimension's TwoNN on one cloud.

    nice python bench/twonn_vs_skdim.py [n_points] [width] [intrinsic_dim] [repeats]

The cloud is a Gaussian of ``intrinsic_dim`` dimensions embedded by a random orthonormal map in ``width``
dimensions, plus 1e-3 isotropic noise (so every row is distinct), float32 as captured hidden states are.
Prints both estimates and the best and median wall time of ``repeats`` runs each (the machine is shared:
the best time is the fairest comparison).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from analysis.intrinsic_dimension import twonn


def _timed(fn: Callable[[], float], repeats: int) -> tuple[float, float, float]:
    times, value = [], float("nan")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, min(times), statistics.median(times)


def main() -> None:
    defaults = ["5000", "576", "10", "5"]
    n, width, k, repeats = (int(a) for a in sys.argv[1:] + defaults[len(sys.argv) - 1 :])
    rng = np.random.default_rng(0)
    frame, _ = np.linalg.qr(rng.standard_normal((width, k)))
    X = (rng.standard_normal((n, k)) @ frame.T + 1e-3 * rng.standard_normal((n, width))).astype(np.float32)

    import skdim

    twonn(X[:100])  # warm up torch
    ours, best_ours, med_ours = _timed(lambda: twonn(X), repeats)
    theirs, best_theirs, med_theirs = _timed(lambda: skdim.id.TwoNN().fit(X).dimension_, repeats)
    print(f"cloud {n} x {width} float32, intrinsic dim {k}, {repeats} runs each")
    print(f"analysis.intrinsic_dimension.twonn : {ours:.4f}  best {best_ours:.3f} s  median {med_ours:.3f} s")
    print(f"skdim.id.TwoNN().fit               : {theirs:.4f}  best {best_theirs:.3f} s  median {med_theirs:.3f} s")
    print(f"speed-up (best / median)           : {best_theirs / best_ours:.1f}x / {med_theirs / med_ours:.1f}x")


if __name__ == "__main__":
    main()
