"""The leaderboard's ReplaceMe rows: at each k, the run ``[l, l+k)`` chosen by ReplaceMe's rule (the smallest mean
cosine distance between the input of block ``l`` and the output of block ``l+k−1`` on the calibration tokens,
``l ≥ 1``), once **replaced** (ReplaceMe's least-squares map folded into block ``l−1``) and once plainly
**removed** — the same blocks, so the two rows differ only by the map.

Registered by :mod:`analysis.search.leaderboard` (:func:`register` adds the rows to its rule registry); the actions carry the calibration text's
hash and windows, so the leaderboard's evaluation cache (keyed by the action) never mixes two calibrations.
"""

from __future__ import annotations

import numpy as np

from analysis.changes import replaceme as rm
from analysis.metrics import registry
from analysis.metrics.families.baselines import baseline_results

BY = "cosine"


def run_scores(ws, by: str = BY, progress: rm.Progress | None = None) -> np.ndarray:
    """The run-score matrix for a rule: ``cosine`` (ReplaceMe's, :func:`run_distances`), ``angular`` (Gromov et
    al.'s d(l, n) on the last token, :mod:`analysis.methods.baselines`), or a registered block metric's key (its per-block
    score summed over the run, oriented so that low = replace first)."""
    if by == "cosine":
        return rm.run_distances(ws, progress)
    if by == "angular":
        return np.asarray(baseline_results(ws, progress)["angular"], dtype=float)
    try:
        metric = registry.get(by)
    except KeyError as exc:
        raise rm.ReplaceMeError(str(exc).strip("'\"")) from None
    return rm.run_scores_from_blocks(metric.scores(ws, progress=progress), metric.redundant_when)


def choose_run(ws, n: int, by: str = BY, progress: rm.Progress | None = None) -> tuple[int, float]:
    """``(start, score)`` of the best run of ``n`` blocks by ``by`` (see :func:`run_scores`)."""
    return rm.best_start(run_scores(ws, by, progress), n)


def replaceme_rule(ws, k: int, by: str = BY, method: str = "lstsq", progress: rm.Progress | None = None) -> dict:
    """The leaderboard's "replace (ReplaceMe)" action at ``k``: ``{"replaceme": {start, n, method, calibration}}``
    with the run ``[l, l+k)`` chosen by ``by`` (:func:`run_scores`). The action names the calibration text's hash
    and windows, so a cache keyed by the action never mixes two calibrations."""
    start, _ = choose_run(ws, k, by, progress)
    c = ws.calibration
    return {rm.KEY: {"start": int(start), "n": int(k), "method": method,
                  "calibration": {"text": ws.text.name, "sha256": ws.text.sha256, "windows": c.n_windows,
                                  "window_len": c.window_len}}}



def removal_rule(ws, k: int, by: str = BY) -> dict:
    """The same run removed without a map: ``{"remove_blocks": [l, …, l+k−1]}``."""
    start, _ = choose_run(ws, int(k), by)
    return {"remove_blocks": list(range(int(start), int(start) + int(k)))}


def _fits(board, k: int) -> bool:
    return 1 <= k <= board.n_blocks - 2


def register(register_rule, Rule) -> None:
    register_rule(Rule("replaceme", "Replace (ReplaceMe)",
                       lambda b, k: [replaceme_rule(b.ws, k)] if _fits(b, k) else [], kind="replace", order=45,
                       description="the run [l, l+k) with the smallest cosine distance between its input and output "
                                   "(l ≥ 1), replaced by a least-squares map folded into block l−1 (plain checkpoint)"))
    register_rule(Rule("replaceme_remove", "Remove (ReplaceMe's run)",
                       lambda b, k: [removal_rule(b.ws, k)] if _fits(b, k) else [], kind="baseline", order=46,
                       description="the same run [l, l+k) removed without a map"))
