"""How ReplaceMe's run is chosen, and the leaderboard's ReplaceMe rows.

**The rules** (:data:`RULES`; the key goes into the action as ``chosen_by``, so every recipe says which rule chose):

* ``angular`` — **the ReplaceMe authors' rule** (the default): for a run of ``n`` blocks starting at ``l ≥ 1``, the
  angular distance ``arccos(cos(h_l, h_{l+n}))/π`` between the *last token's* hidden state at the run's input
  (``h_l``, the output of block ``l−1``) and at its output (``h_{l+n}``, the output of block ``l+n−1``), averaged over
  the calibration windows; the smallest wins. This is Gromov et al.'s ``d(l, n)`` and what mts-ai/ReplaceMe's
  ``distance.py`` computes (``get_last_non_padded_tokens`` on Hugging Face's ``hidden_states[1:]``, so a run never
  starts at block 0; ``angular_distance``; the start printed is ``argmin + 1``). The matrix is the one the
  ``angular_distance`` metric shows (:mod:`analysis.metrics.families.baselines`), read from the workspace capture,
  whose last state carries the final norm exactly as Hugging Face's ``hidden_states`` (and hence the authors'
  code) do.
* ``cosine`` — **LayerScope's all-token cosine**: the mean cosine distance ``1 − cos(h_l, h_{l+n})`` over *every*
  calibration token (real block outputs, no final norm; :func:`analysis.changes.replaceme.run_distances`). It was
  this project's default until it was checked against the authors' code; on the bundled model (alice, 32 windows
  of 128 tokens) the two pick the same run at n = 2, 3, 4, 6 and 8 and differ at ``n = 1`` ([14, 15) against the
  authors' [3, 4); docs/authors-rules.md).
* a registered block metric's key — LayerScope's: the metric's per-block score summed over the run.

**The leaderboard rows**: at each k, the run ``[l, l+k)`` chosen by the authors' rule, once **replaced** (the
least-squares map folded into block ``l−1``) and once plainly **removed** — the same blocks, so the two rows differ
only by the map. Registered by :mod:`analysis.search.leaderboard` (:func:`register` adds the rows to its rule
registry); the actions carry the calibration text's hash and windows, so the leaderboard's evaluation cache (keyed by
the action) never mixes two calibrations.
"""

from __future__ import annotations

import numpy as np

from analysis.changes import replaceme as rm
from analysis.metrics import registry
from analysis.metrics.families.baselines import baseline_results

AUTHORS = "angular"
OURS = "cosine"
BY = AUTHORS
RULES = {
    AUTHORS: "ReplaceMe authors' rule: last-token angular distance",
    OURS: "LayerScope's all-token cosine",
}
RULE_DETAILS = {
    AUTHORS: "arccos(cos(h_l, h_(l+n)))/π of the last token of each calibration window, averaged (mts-ai/ReplaceMe's "
    "distance.py; Gromov et al.'s d(l, n)); l ≥ 1",
    OURS: "mean 1 − cos(h_l, h_(l+n)) over every calibration token (LayerScope's earlier default, not the authors'); "
    "l ≥ 1",
}


def rule_label(by: str) -> str:
    """Whose rule ``by`` is, in words (``RULES``; for a block metric: LayerScope's sum of its score over the run)."""
    if by in RULES:
        return RULES[by]
    try:
        m = registry.get(by)
    except KeyError:
        return str(by)
    return f"LayerScope: {m.label} summed over the run"


def chosen_by(by: str, score: float | None = None) -> dict:
    """The action's ``chosen_by`` entry: the rule's key and label (and the chosen run's score)."""
    out = {"rule": str(by), "label": rule_label(by)}
    if score is not None:
        out["score"] = float(score)
    return out


def check_rule(by: str) -> str:
    """``by`` if it names a rule (``angular``, ``cosine`` or a registered block metric), else one clear error."""
    if by in RULES:
        return by
    try:
        registry.get(by)
    except KeyError:
        raise rm.ReplaceMeError(
            f"unknown rule for choosing the run {by!r}: use angular (the {RULES[AUTHORS]}), "
            f"cosine ({RULES[OURS]}) or a block metric's key"
        ) from None
    return by


def run_scores(ws, by: str = BY, progress: rm.Progress | None = None) -> np.ndarray:
    """The run-score matrix ``S[l, n−1]`` (low = replace first) for a rule: ``angular`` (the authors'), ``cosine``
    (LayerScope's all-token cosine) or a registered block metric's key (its per-block score summed over the run,
    oriented so that low = replace first)."""
    if by == AUTHORS:
        return np.asarray(baseline_results(ws, progress)["angular"], dtype=float)
    if by == OURS:
        return rm.run_distances(ws, progress)
    metric = registry.get(check_rule(by))
    return rm.run_scores_from_blocks(metric.scores(ws, progress=progress), metric.redundant_when)


def choose_run(ws, n: int, by: str = BY, progress: rm.Progress | None = None, exclude=()) -> tuple[int, float]:
    """``(start, score)`` of the best run of ``n`` blocks by ``by`` (see :func:`run_scores`); block 0 never starts a
    run (as in the authors' code: the map is folded into the block before the run)."""
    return rm.best_start(run_scores(ws, by, progress), n, exclude=exclude)


def replaceme_rule(ws, k: int, by: str = BY, method: str = "lstsq", progress: rm.Progress | None = None) -> dict:
    """The leaderboard's "replace (ReplaceMe)" action at ``k``: ``{"replaceme": {start, n, method, calibration,
    chosen_by}}`` with the run ``[l, l+k)`` chosen by ``by`` (:func:`run_scores`). The action names the calibration
    text's hash and windows, so a cache keyed by the action never mixes two calibrations."""
    start, score = choose_run(ws, k, by, progress)
    c = ws.calibration
    return {
        rm.KEY: {
            "start": int(start),
            "n": int(k),
            "method": method,
            "calibration": {
                "text": ws.text.name,
                "sha256": ws.text.sha256,
                "windows": c.n_windows,
                "window_len": c.window_len,
            },
            "chosen_by": chosen_by(by, score),
        }
    }


def removal_rule(ws, k: int, by: str = BY) -> dict:
    """The same run removed without a map: ``{"remove_blocks": [l, …, l+k−1]}``."""
    start, _ = choose_run(ws, int(k), by)
    return {"remove_blocks": list(range(int(start), int(start) + int(k)))}


def _fits(board, k: int) -> bool:
    return 1 <= k <= board.n_blocks - 2


def _in_memory(board) -> bool:
    """ReplaceMe fits a map on the model in memory: no rows for a layer-by-layer model."""
    return not getattr(board.lm, "sequential", False)


def unfoldable(lm) -> str | None:
    """Why this family's blocks cannot take ReplaceMe's map (a norm after the feed-forward, as Gemma-2/3 have; a
    mixture of experts), or None: the check of :func:`analysis.changes.replaceme.fold_target` on the first block."""
    if getattr(lm, "sequential", False) or lm.n_blocks < 2:
        return None
    try:
        rm.fold_target(lm.model, 1, 1)
    except rm.ReplaceMeError as exc:
        return str(exc)
    return None


def _replaceable(board) -> bool:
    return _in_memory(board) and unfoldable(board.lm) is None


def left_out(lm) -> list[str]:
    """The leaderboard's notes on ReplaceMe's rows for ``lm``, in words (none when they run)."""
    why = unfoldable(lm)
    return [f"ReplaceMe's replace rows left out (the same runs removed are kept): {why}"] if why else []


def register(register_rule, Rule) -> None:
    register_rule(
        Rule(
            "replaceme",
            f"Replace (ReplaceMe; run by the {RULES[AUTHORS]})",
            lambda b, k: [replaceme_rule(b.ws, k)] if _fits(b, k) else [],
            kind="replace",
            order=45,
            enabled=_replaceable,
            description=f"the run [l, l+k) chosen by the {RULES[AUTHORS]} ({RULE_DETAILS[AUTHORS]}), "
            "replaced by a least-squares map folded into block l−1 (plain checkpoint)",
        )
    )
    register_rule(
        Rule(
            "replaceme_remove",
            f"Remove (the same run, {RULES[AUTHORS]})",
            lambda b, k: [removal_rule(b.ws, k)] if _fits(b, k) else [],
            kind="baseline",
            order=46,
            enabled=_in_memory,
            description="the same run [l, l+k) removed without a map",
        )
    )
