"""Wall time of the TOPOLOGY computations on synthetic layer clouds (no model needed).

    nice python bench/topology_timing.py [--points 500] [--layers 31] [--k 4] [--max-dim 3]

Layer clouds are a random walk across layers, ``X_{l+1} = X_l + drift * noise``, in three regimes: a low-dimensional
cloud (width 3, many triangles and tetrahedra), a 64-dimensional one that drifts slowly (kNN graphs shared between
layers) and one redrawn independently at every layer (the worst case: almost nothing persists). Prints, per regime,
the estimate made before running and the measured times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analysis.persistence import estimate_rips_seconds, layer_diagrams
from analysis.zigzag import estimate_simplex_count, estimate_zigzag_seconds, zigzag_bars

REGIMES = {  # name: (width, drift; None = redrawn at every layer)
    "width 3, drift 0.05": (3, 0.05),
    "width 64, drift 0.3": (64, 0.3),
    "width 64, independent": (64, None),
}


def layer_clouds(n: int, n_layers: int, width: int, drift: float | None, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width))
    clouds = [X]
    for _ in range(n_layers - 1):
        X = rng.normal(size=(n, width)) if drift is None else X + drift * rng.normal(size=X.shape)
        clouds.append(X)
    return clouds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--layers", type=int, default=31)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-dim", type=int, default=3)
    parser.add_argument("--rips-points", type=int, default=300)
    args = parser.parse_args()

    print(f"zigzag: {args.points} points x {args.layers} layers, k={args.k}, m={args.max_dim}")
    for name, (width, drift) in REGIMES.items():
        clouds = layer_clouds(args.points, args.layers, width, drift)
        t = time.perf_counter()
        count = estimate_simplex_count(clouds, args.k, args.max_dim)
        t_count = time.perf_counter() - t
        t = time.perf_counter()
        bars = zigzag_bars(clouds, k=args.k, max_dim=args.max_dim)
        t_total = time.perf_counter() - t
        print(
            f"  {name:24s} simplices/layer-sum {count.total:7d}  events {count.n_events:7d}  "
            f"estimate {estimate_zigzag_seconds(count):5.1f} s (took {t_count:.2f} s)  "
            f"measured {t_total:5.1f} s (Dionysus {bars.attrs['zigzag_seconds']:.1f} s)  bars {len(bars)}"
        )

    print(f"Rips H0+H1 of one layer, {args.rips_points} farthest points of 2000 (width 256, spectrum 1/i):")
    X = np.random.default_rng(1).normal(size=(2000, 256)) / np.arange(1, 257)
    layer_diagrams(X[:10], n_points=10)  # pay the imports before timing
    t = time.perf_counter()
    layer_diagrams(X, n_points=args.rips_points, max_dim=1)
    seconds = time.perf_counter() - t
    print(f"  measured {seconds:.2f} s, estimate {estimate_rips_seconds(args.rips_points, 1):.2f} s (Rips only)")


if __name__ == "__main__":
    main()
