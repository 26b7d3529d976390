"""Putting the metrics side by side: rank-normalised scores, each metric's suggestion, and their agreement.

Every registered :class:`~analysis.metrics.base.BlockMetric` takes part; nothing here names a metric. Scores are
rank-normalised per metric so that 1 is the most redundant block and 0 the least (the metric's own direction
decides which end that is). The consensus is the ``k`` blocks suggested by the most metrics; ties are broken by
the mean rank-normalised score.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from analysis.metrics import registry


def computed_metrics(ws, metrics=None) -> list:
    """The registered metrics whose scores are already in the cache for this workspace."""
    return [m for m in (metrics if metrics is not None else registry.metrics()) if m.cached(ws)]


def score_table(ws, metrics, progress=None) -> pd.DataFrame:
    """Raw per-block scores, one column per metric key (computing any that are not cached)."""
    table = pd.DataFrame({"block": range(ws.n_blocks)})
    for i, m in enumerate(metrics):
        table[m.key] = m.scores(ws)
        if progress:
            progress(i + 1, len(metrics), m.label)
    return table.set_index("block")


def rank_table(scores: pd.DataFrame, metrics) -> pd.DataFrame:
    """Rank-normalised scores: 1 = most redundant for every metric."""
    return pd.DataFrame(
        {m.key: registry.rank_normalise(scores[m.key].to_numpy(), m.redundant_when) for m in metrics},
        index=scores.index,
    )


def suggestions(ws, metrics, k: int, scores: pd.DataFrame | None = None) -> dict[str, list[int]]:
    return {m.key: m.suggest(ws, k, scores=None if scores is None else scores[m.key].to_numpy()) for m in metrics}


def votes(suggested: dict[str, list[int]], n_blocks: int) -> np.ndarray:
    v = np.zeros(n_blocks, dtype=int)
    for blocks in suggested.values():
        for b in blocks:
            v[b] += 1
    return v


def consensus(suggested: dict[str, list[int]], ranks: pd.DataFrame, k: int) -> list[int]:
    """The ``k`` blocks most metrics suggest (ties: higher mean rank-normalised score first)."""
    n = len(ranks)
    v = votes(suggested, n)
    mean_rank = ranks.mean(axis=1, skipna=True).fillna(0).to_numpy()
    order = sorted(range(n), key=lambda b: (-v[b], -mean_rank[b], b))
    return sorted(b for b in order[:k] if v[b] > 0)


def pairwise_overlap(suggested: dict[str, list[int]]) -> pd.DataFrame:
    """Jaccard overlap |A ∩ B| / |A ∪ B| between every two metrics' suggestions (1 on the diagonal)."""
    keys = list(suggested)
    M = pd.DataFrame(np.eye(len(keys)), index=keys, columns=keys)
    for a, b in combinations(keys, 2):
        A, B = set(suggested[a]), set(suggested[b])
        j = len(A & B) / len(A | B) if A | B else 1.0
        M.loc[a, b] = M.loc[b, a] = j
    return M
