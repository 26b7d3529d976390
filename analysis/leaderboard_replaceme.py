"""The leaderboard's ReplaceMe rows: at each k, the run ``[l, l+k)`` chosen by ReplaceMe's rule (the smallest mean
cosine distance between the input of block ``l`` and the output of block ``l+k−1`` on the calibration tokens,
``l ≥ 1``), once **replaced** (ReplaceMe's least-squares map folded into block ``l−1``) and once plainly
**removed** — the same blocks, so the two rows differ only by the map.

Imported at the end of :mod:`analysis.leaderboard` (its rule registry); the actions carry the calibration text's
hash and windows, so the leaderboard's evaluation cache (keyed by the action) never mixes two calibrations.
"""

from __future__ import annotations

from . import replaceme as rm

BY = "cosine"


def replaceme_rule(ws, k: int, by: str = BY, method: str = "lstsq") -> dict:
    """The "replace (ReplaceMe)" action at ``k`` (:func:`analysis.replaceme.replaceme_rule`)."""
    return rm.replaceme_rule(ws, k, by, method)


def removal_rule(ws, k: int, by: str = BY) -> dict:
    """The same run removed without a map: ``{"remove_blocks": [l, …, l+k−1]}``."""
    start, _ = rm.choose_run(ws, int(k), by)
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
