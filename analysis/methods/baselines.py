"""The redundancy baselines users compare against (METHODS.md §2).

* **Block influence** (ShortGPT, arXiv 2403.03853): ``BI_b = 1 − mean_t cos(h_{b,t}, h_{b+1,t})`` over all tokens,
  for block ``b`` mapping ``h_b`` to ``h_{b+1}``. Lowest BI = most redundant block.
* **Angular distance** (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers", arXiv
  2403.17887): ``d(l, n) = arccos(cos(h_l, h_{l+n})) / π`` on the last token of each window, averaged over
  windows. Removing the block range ``[l, l + n)`` replaces ``h_{l+n}`` by ``h_l``; the best range of size ``n``
  is ``argmin_l d(l, n)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from analysis.errors import InputError

Progress = Callable[[int, int, str], None]


def _cosine_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    num = np.einsum("ij,ij->i", A, B)
    den = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    return np.divide(num, den, out=np.ones_like(num), where=den > 0)


def block_influence(
    states: np.ndarray, exclude_first: int = 0, progress: Progress | None = None, windows_per_chunk: int = 64
) -> np.ndarray:
    """BI per block from captured ``states[L+1, N, T, d]`` over all tokens (optionally without the first positions).

    Streamed over chunks of windows, so memory stays O(chunk × d) however many tokens were captured.
    """
    n_blocks = states.shape[0] - 1
    d = states.shape[-1]
    out = np.zeros(n_blocks)
    for b in range(n_blocks):
        total, count = 0.0, 0
        for w0 in range(0, states.shape[1], windows_per_chunk):
            prev = np.asarray(states[b, w0 : w0 + windows_per_chunk, exclude_first:]).reshape(-1, d)
            cur = np.asarray(states[b + 1, w0 : w0 + windows_per_chunk, exclude_first:]).reshape(-1, d)
            total += float(np.sum(_cosine_rows(prev, cur)))
            count += prev.shape[0]
        out[b] = 1.0 - total / count
        if progress:
            progress(b + 1, n_blocks, f"block influence of block {b}")
    return out


def angular_distance_matrix(last_tokens: np.ndarray) -> np.ndarray:
    """``D[l, n − 1] = d(l, n)`` from the last-token clouds ``last_tokens[L+1, N, d]``; NaN where ``l + n > L``.

    Rows are start blocks ``l = 0 … L−1``, columns block sizes ``n = 1 … L``.
    """
    L = last_tokens.shape[0] - 1
    X = np.asarray(last_tokens, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-30)
    D = np.full((L, L), np.nan)
    for l in range(L):
        for n in range(1, L - l + 1):
            cos = np.clip(np.einsum("ij,ij->i", X[l], X[l + n]), -1.0, 1.0)
            D[l, n - 1] = float(np.mean(np.arccos(cos) / np.pi))
    return D


def best_range_of_size(D: np.ndarray, n: int) -> tuple[int, int, float]:
    """The range ``[l, l + n)`` of ``n`` blocks with the smallest angular distance: ``(start, end, distance)``."""
    col = D[:, n - 1]
    if np.all(np.isnan(col)):
        raise InputError(f"no range of {n} blocks fits in {D.shape[0]} blocks")
    l = int(np.nanargmin(col))
    return l, l + n, float(col[l])


def best_ranges(D: np.ndarray) -> list[tuple[int, int, int, float]]:
    """For every size ``n``: ``(n, start, end, distance)`` of the best range (the PruneMe table)."""
    return [(n, *best_range_of_size(D, n)) for n in range(1, D.shape[0] + 1)]
