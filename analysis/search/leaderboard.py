"""The leaderboard: every selection rule's k blocks, evaluated on held-out text against the original.

A **rule** turns a size ``k`` into one or more *actions* (``analysis.changes.variant`` action dicts, e.g.
``{"remove_blocks": [12, 13]}``): each registered metric's own suggestion, the consensus of the proxies (every
metric but measured damage), greedy search (SLEB) and, as an option, half-block greedy search (BlockPruner),
reverse order ``[L−1−k, L−1)`` and a band of seeded random selections. Rules live in a registry
(:func:`register_rule`): a rule whose action is not ``remove_blocks`` (e.g. ReplaceMe's ``replace_me``) is one more
:class:`Rule`; rows are keyed by ``(rule, k, sample)``.

Every action is evaluated by :func:`evaluate_action`, which calls :func:`analysis.evaluation.perplexity.evaluate` — the function
``python -m analysis prune`` uses — on the evaluation text and settings (default: the prune page's, ``asyoulik``,
4096 tokens, context 512, stride 256; no speed timing, no generation), and caches the result in
``cache/leaderboard-eval/`` under (model fingerprint, text hash, settings, action). A rerun, the command line and
the page reuse it; a stopped run resumes where it was. The finished board of a model is also kept in
``cache/leaderboard-latest/`` for the HTML report.

Rank correlation: Spearman's ρ between each metric's score, oriented so that low = redundant (a "high = redundant"
metric is negated), and the measured single-block damage (ΔNLL on the search text); +1 = the metric orders blocks
exactly as removing them hurts.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import xxhash

from analysis import cache
from analysis.capture.estimate import forward_probe, machine_speed, work_model
from analysis.changes import replaceme
from analysis.changes.variant import apply_actions, candidate_name, describe_action
from analysis.errors import InputError
from analysis.evaluation.perplexity import EvalSettings, evaluate, evaluation_ids
from analysis.evaluation.shared_prefix import action_signature, evaluate_actions, original_work, prefix_plan, tail_work
from analysis.metrics import consensus, registry
from analysis.metrics.damage import (
    CANDIDATE_SETS,
    DEFAULT_CANDIDATES,
    HALVES,
    DamageError,
    SearchSettings,
    damage_table,
    greedy,
    normalise_state,
    random_selections,
    reference_work,
    reverse_order,
    scan_is_cached,
    scan_params,
    scan_work,
    search_windows,
    single_block_damage,
    state_action,
)
from analysis.metrics.registry import ReportSection
from analysis.search import replaceme_rows
from analysis.texts import Text, resolve_text

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

# metrics computed for the leaderboard when they are not cached yet (a few seconds each on the bundled model);
# the others (intrinsic dimension, zigzag persistence) take part only when cached or named
CHEAP_METRICS = ("measured_damage", "linearity", "linearity_no_residual", "block_influence", "angular_distance", "avss")
DAMAGE_KEY = "measured_damage"


class LeaderboardError(InputError):
    """The leaderboard cannot run as asked (the message says why)."""


def default_eval_settings(**kw) -> EvalSettings:
    return EvalSettings(**{"measure_speed": False, "max_new_tokens": 0, **kw})


@dataclass(frozen=True)
class LeaderboardSettings:
    k_max: int | None = None  # default: L // 4
    k_min: int = 1
    search: SearchSettings = field(default_factory=SearchSettings)
    evaluation: EvalSettings = field(default_factory=default_eval_settings)
    metrics: tuple[str, ...] | None = None  # None: every cached metric and the cheap ones
    half_blocks: bool = False
    greedy_candidates: str = DEFAULT_CANDIDATES  # SLEB's (never the first or last block) or "all"
    random_samples: int = 5
    seed: int = 0
    also: tuple[tuple[int, ...], ...] = ()  # extra fixed selections ("chosen" rows)
    k_list: tuple[int, ...] = ()  # only these sizes (e.g. 2, 4, 8) instead of k_min..k_max
    # sites of the damage table; default: whole blocks, and the attention / feed-forward halves when the half-block
    # search runs (it reads their scans anyway; alone they cost ~5.6 evaluations of a k = 1..4 board)
    damage_sites: tuple[str, ...] | None = None
    quick: bool = False  # made by quick_settings: fewer tokens, no random draws, no half-block search

    def __post_init__(self):
        if self.damage_sites is None:
            sites = ("block", *HALVES) if self.half_blocks else ("block",)
            object.__setattr__(self, "damage_sites", sites)

    def ks(self, n_blocks: int) -> list[int]:
        if self.k_list:
            return sorted(set(int(k) for k in self.k_list))
        k_max = self.k_max if self.k_max is not None else max(1, n_blocks // 4)
        return list(range(self.k_min, k_max + 1))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["search"], d["evaluation"] = self.search.to_dict(), self.evaluation.to_dict()
        return d


#: The quick board (``--quick``): the share of the search tokens and of the evaluation tokens it keeps (the
#: evaluation keeps at least one context window).
QUICK_SEARCH_SHARE = 8
QUICK_EVAL_SHARE = 8


def quick_settings(settings: LeaderboardSettings) -> LeaderboardSettings:
    """The quick board for "which rule wins at k": the same rules and sizes, with the search on the first eighth
    (``1 / QUICK_SEARCH_SHARE``) of the search tokens (windows no longer than that), the evaluation on the first
    eighth (``1 / QUICK_EVAL_SHARE``, at least one context window) of the evaluation
    tokens (same context and stride), no random draws, no half-block search and the damage table of whole blocks
    only (:func:`quick_skipped` says so in words)."""
    from dataclasses import replace

    s_tok = max(2, settings.search.n_tokens // QUICK_SEARCH_SHARE)
    search = replace(settings.search, n_tokens=s_tok, context=min(settings.search.context, s_tok))
    ev = settings.evaluation
    evaluation = replace(ev, n_tokens=max(ev.context, ev.n_tokens // QUICK_EVAL_SHARE))
    return replace(
        settings,
        search=search,
        evaluation=evaluation,
        random_samples=0,
        half_blocks=False,
        damage_sites=("block",),
        quick=True,
    )


def quick_skipped(full: LeaderboardSettings) -> list[str]:
    """What the quick board leaves out of ``full``, in words."""
    q = quick_settings(full)
    out = []
    if q.search.n_tokens < full.search.n_tokens:
        out.append(f"search on {q.search.n_tokens} of {full.search.n_tokens} search tokens")
    if q.evaluation.n_tokens < full.evaluation.n_tokens:
        out.append(f"evaluation on {q.evaluation.n_tokens} of {full.evaluation.n_tokens} tokens")
    if full.random_samples:
        out.append(f"no random draws (full: {full.random_samples} per k)")
    if full.half_blocks:
        out.append("no half-block greedy (BlockPruner)")
    if set(full.damage_sites) - {"block"}:
        out.append("damage table of whole blocks only (no attention / feed-forward halves)")
    return out


def validate(
    settings: LeaderboardSettings, n_blocks: int, calibration: Text | None = None, tokenizer=None
) -> tuple[Text, Text]:
    """Refuse what cannot run (before anything is computed); the search and evaluation texts.

    With the ``tokenizer``, a search or evaluation text too short for its tokens is refused too."""
    ks = settings.ks(n_blocks)
    k_max = max(ks) if ks else 0
    if not ks or min(ks) < 1:
        raise LeaderboardError(f"k must be a range 1 ≤ k_min ≤ k_max or sizes ≥ 1 (got {ks or 'none'})")
    if k_max > n_blocks - 1:
        raise LeaderboardError(
            f"K = {k_max} is more than L − 1 = {n_blocks - 1}: removing {k_max} of {n_blocks} "
            "blocks leaves none (at least one must remain)"
        )
    if settings.random_samples < 0:
        raise LeaderboardError("random samples must be ≥ 0")
    if settings.greedy_candidates not in CANDIDATE_SETS:
        raise LeaderboardError(
            f"unknown greedy candidate set {settings.greedy_candidates!r}; use one of {', '.join(CANDIDATE_SETS)}"
        )
    settings.search.validate()
    settings.evaluation.validate()
    search, evaluation = settings.search.resolve(), resolve_text(settings.evaluation.text)
    if search.sha256 == evaluation.sha256:
        raise LeaderboardError(
            f"the search text ({search.label}) is the evaluation text: the search would tune on "
            "the test; choose another search text"
        )
    if calibration is not None and search.sha256 == calibration.sha256:
        raise LeaderboardError(
            f"the search text ({search.label}) is the calibration text of the metrics; choose another search text"
        )
    for sel in settings.also:
        if len(set(sel)) >= n_blocks:
            raise LeaderboardError(f"the selection {','.join(map(str, sel))} removes every block")
        bad = [b for b in sel if not 0 <= b < n_blocks]
        if bad:
            raise LeaderboardError(f"blocks {bad} out of range 0..{n_blocks - 1}")
    if tokenizer is not None:
        search_windows(tokenizer, search, settings.search)
        evaluation_ids(tokenizer, evaluation, settings.evaluation.n_tokens)
    return search, evaluation


def for_model(settings: LeaderboardSettings, lm) -> tuple[LeaderboardSettings, list[str]]:
    """``settings`` as ``lm`` runs them, and what that leaves out, in words: for a model in memory, the same
    settings and the rows its family cannot have (ReplaceMe's replace rows where the map cannot be folded exactly:
    Gemma-2/3's norm after the feed-forward, mixtures of experts); for a layer-by-layer model
    (:mod:`analysis.model.sequential`), what layer by layer cannot run.

    Layer by layer, every scan and evaluation removes whole blocks (each block loaded once per pass): the damage
    table is of whole blocks, the half-block search is refused, ReplaceMe's rows (its fit needs the model in memory)
    and the metrics that need the model in memory (AVSS) are left out, or refused when named."""
    if not getattr(lm, "sequential", False):
        return settings, replaceme_rows.left_out(lm)
    from dataclasses import replace

    if settings.half_blocks:
        raise LeaderboardError(
            "layer by layer, the search removes whole blocks only: the half-block search needs the model in "
            "memory (leave out --half-blocks, or run without --sequential on a machine it fits)"
        )
    if settings.metrics is not None:
        need = [k for k in settings.metrics if not registry.runs_layer_by_layer(registry.get(k))]
        if need:
            raise LeaderboardError(
                f"layer by layer, {', '.join(need)} cannot be computed (it needs the model in memory); leave it "
                "out of --metrics, or run without --sequential on a machine it fits"
            )
    notes = ["layer by layer: every block is loaded once per pass, and every selection removes whole blocks"]
    if tuple(settings.damage_sites) != ("block",):
        notes.append("damage table of whole blocks only (skipping a half needs the model in memory)")
    if settings.metrics is None:
        notes.append("AVSS left out (its hooks need the model in memory)")
    notes.append("ReplaceMe's rows left out (its fit needs the model in memory)")
    return replace(settings, damage_sites=("block",)), notes


# ---- evaluation of one action -----------------------------------------------------------------------------------


def canonical_action(action: dict) -> dict:
    out = {}
    for key in sorted(action):
        v = action[key]
        if isinstance(v, (list, tuple)) and all(isinstance(x, (int, np.integer)) for x in v):
            v = sorted(int(x) for x in v)
        if v:
            out[key] = v
    return out


def eval_params(lm, action: dict, settings: EvalSettings, text: Text) -> dict:
    return {
        "model": lm.fingerprint,
        "text": text.sha256,
        "settings": settings.to_dict(),
        "action": canonical_action(action),
        "v": 1,
    }


def eval_is_cached(lm, action: dict, settings: EvalSettings, text: Text) -> bool:
    return cache.entry("leaderboard-eval", eval_params(lm, action, settings, text)).exists()


def evaluate_action(
    lm, action: dict, settings: EvalSettings, text: Text | None = None, ws=None, progress: Progress | None = None
) -> dict:
    """The original without/with ``action`` evaluated on ``text`` by :func:`analysis.evaluation.perplexity.evaluate`, cached.

    Returns ``{"perplexity", "nll", "kl", "top1", "tokens", "parameters", "original_perplexity", ...}``.
    """
    text = text or resolve_text(settings.text)

    def compute():
        return {}, evaluation_row(lm, action, settings, text, ws, progress)

    _, data, _ = cache.cached("leaderboard-eval", eval_params(lm, action, settings, text), compute)
    return data


def evaluation_row(
    lm, action: dict, settings: EvalSettings, text: Text, ws=None, progress: Progress | None = None
) -> dict:
    """What :func:`evaluate_action` caches, computed here (a Ray actor calls it on its replica)."""
    model = apply_actions(lm.model, action, ws)
    table = evaluate(
        lm.model,
        lm.tokenizer,
        text,
        settings,
        candidate=model,
        candidate_name=candidate_name(action),
        original_key=lm.fingerprint,
        progress=progress,
    )
    c, o = table.candidate, table.original
    return {
        "perplexity": c.perplexity,
        "nll": c.nll,
        "kl": c.kl_to_original,
        "top1": c.top1_agreement,
        "tokens": c.tokens,
        "parameters": c.parameters,
        "original_perplexity": o.perplexity,
        "original_parameters": o.parameters,
        "seconds": c.seconds,
    }


def store_evaluation(lm, action: dict, settings: EvalSettings, text: Text, data: dict) -> None:
    """Keep a row computed elsewhere (by :func:`evaluation_row` on a replica) as :func:`evaluate_action`'s."""
    cache.cached("leaderboard-eval", eval_params(lm, action, settings, text), lambda: ({}, data))


# ---- rules ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    key: str
    label: str
    select: Callable[["Board", int], list[dict]]  # the actions for size k ([] = no selection at this k)
    kind: str = "rule"  # metric | consensus | search | baseline | random | chosen
    order: int = 100
    enabled: Callable[["Board"], bool] = lambda board: True
    description: str = ""


_RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    _RULES[rule.key] = rule
    return rule


def rules() -> list[Rule]:
    return sorted(_RULES.values(), key=lambda r: (r.order, r.key))


@dataclass
class Board:
    """What the rules need: the model, the calibration workspace, the settings, the searches (computed lazily)."""

    ws: object
    settings: LeaderboardSettings
    progress: Progress | None = None
    _scores: dict = field(default_factory=dict)
    _greedy: dict = field(default_factory=dict)

    @property
    def lm(self):
        return self.ws.lm

    @property
    def n_blocks(self) -> int:
        return self.ws.n_blocks

    @property
    def k_max(self) -> int:
        return self.settings.ks(self.n_blocks)[-1]

    def metric_params(self, metric) -> dict:
        if metric.key == DAMAGE_KEY:
            s = self.settings.search
            return {"search_text": s.text, "search_tokens": s.n_tokens, "search_context": s.context}
        return {}

    def metrics(self) -> list:
        chosen = self.settings.metrics
        if chosen is None:
            out = [m for m in registry.metrics() if m.key in CHEAP_METRICS or m.cached(self.ws, self.metric_params(m))]
            if getattr(self.lm, "sequential", False):
                out = [m for m in out if registry.runs_layer_by_layer(m)]
            return out
        return [registry.get(k) for k in chosen]

    def scores(self, metric) -> np.ndarray:
        if metric.key not in self._scores:
            self._scores[metric.key] = metric.scores(self.ws, self.metric_params(metric))
        return self._scores[metric.key]

    def suggestion(self, metric, k: int) -> list[int]:
        return metric.suggest(self.ws, k, self.metric_params(metric), scores=self.scores(metric))

    def greedy(self, half: bool = False) -> list[dict]:
        if half not in self._greedy:
            steps = self.k_max * (2 if half else 1)
            self._greedy[half] = greedy(
                self.lm,
                self.settings.search,
                steps,
                half=half,
                progress=self.progress,
                candidates=self.settings.greedy_candidates,
            )
        return self._greedy[half]

    def damage(self) -> np.ndarray:
        return single_block_damage(self.lm, self.settings.search)


def _metric_rules(board: Board) -> list[Rule]:
    out = []
    for m in board.metrics():
        out.append(
            Rule(
                key=f"metric:{m.key}",
                label=m.label,
                kind="metric",
                order=10 + m.order / 1000,
                select=lambda b, k, m=m: [{"remove_blocks": b.suggestion(m, k)}],
                description=m.direction_text,
            )
        )
    return out


def _consensus(board: Board, k: int) -> list[dict]:
    proxies = [m for m in board.metrics() if m.key != DAMAGE_KEY]
    if not proxies:
        return []
    scores = pd.DataFrame({m.key: board.scores(m) for m in proxies})
    ranks = consensus.rank_table(scores, proxies)
    suggested = {m.key: board.suggestion(m, k) for m in proxies}
    chosen = consensus.consensus(suggested, ranks, k)
    return [{"remove_blocks": chosen}] if len(chosen) == k else []


def _greedy_rule(board: Board, k: int) -> list[dict]:
    steps = board.greedy(False)
    return [state_action(steps[k - 1]["state"])] if k <= len(steps) else []


def _greedy_half_rule(board: Board, k: int) -> list[dict]:
    steps = board.greedy(True)
    return [state_action(steps[2 * k - 1]["state"])] if 2 * k <= len(steps) else []


def _chosen(board: Board, k: int) -> list[dict]:
    return [{"remove_blocks": sorted(sel)} for sel in board.settings.also if len(sel) == k]


register_rule(
    Rule(
        "consensus",
        "Consensus of the proxies",
        _consensus,
        kind="consensus",
        order=20,
        description="the k blocks most proxy metrics suggest (measured damage not included)",
    )
)
register_rule(
    Rule(
        "greedy",
        "Greedy search (SLEB)",
        _greedy_rule,
        kind="search",
        order=30,
        description="remove the least damaging block on the search text, k times (SLEB's candidates by "
        "default: never the first or the last block; greedy_candidates='all' searches every "
        "block)",
    )
)
register_rule(
    Rule(
        "greedy_half",
        "Half-block greedy (BlockPruner)",
        _greedy_half_rule,
        kind="search",
        order=31,
        enabled=lambda b: b.settings.half_blocks,
        description="remove the least damaging attention or feed-forward half, 2k times",
    )
)
register_rule(
    Rule(
        "reverse",
        "Reverse order",
        lambda b, k: [{"remove_blocks": reverse_order(b.n_blocks, k)}],
        kind="baseline",
        order=40,
        description="the k blocks before the last one, [L−1−k, L−1)",
    )
)
register_rule(
    Rule(
        "random",
        "Random",
        lambda b, k: [
            {"remove_blocks": s} for s in random_selections(b.n_blocks, k, b.settings.random_samples, b.settings.seed)
        ],
        kind="random",
        order=50,
        enabled=lambda b: b.settings.random_samples > 0,
        description="seeded random sets of k blocks (the band)",
    )
)
register_rule(
    Rule(
        "chosen",
        "Chosen selection",
        _chosen,
        kind="chosen",
        order=60,
        enabled=lambda b: bool(b.settings.also),
        description="a selection named by the user",
    )
)


def active_rules(board: Board) -> list[Rule]:
    return _metric_rules(board) + [r for r in rules() if r.enabled(board)]


# ---- the board --------------------------------------------------------------------------------------------------


def describe_blocks(action: dict) -> str:
    parts = [str(b) for b in action.get("remove_blocks", [])]
    parts += [f"{b}a" for b in action.get("skip_attention", [])] + [f"{b}m" for b in action.get("skip_mlp", [])]
    others = [k for k in action if k not in ("remove_blocks", "skip_attention", "skip_mlp")]
    if others:
        try:
            return describe_action(action)
        except ValueError:
            return str(action)
    return ",".join(parts)


@dataclass
class Result:
    settings: dict
    rows: pd.DataFrame  # rule, label, kind, k, sample, blocks, perplexity, kl, top1, nll, parameters, action
    greedy: list[dict]
    greedy_half: list[dict]
    damage: pd.DataFrame
    correlation: pd.DataFrame
    original_perplexity: float
    seconds: float = 0.0
    cost: dict = field(default_factory=dict)  # what ran, in evaluations of the original (see run)

    def winners(self) -> pd.DataFrame:
        return winners(self.rows)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "rows": self.rows.to_dict("records"),
            "greedy": self.greedy,
            "greedy_half": self.greedy_half,
            "damage": self.damage.to_dict("records"),
            "correlation": self.correlation.to_dict("records"),
            "original_perplexity": self.original_perplexity,
            "seconds": self.seconds,
            "cost": self.cost,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        return cls(
            settings=d["settings"],
            rows=pd.DataFrame(d["rows"]),
            greedy=d["greedy"],
            greedy_half=d.get("greedy_half", []),
            damage=pd.DataFrame(d["damage"]),
            correlation=pd.DataFrame(d["correlation"]),
            original_perplexity=d["original_perplexity"],
            seconds=d.get("seconds", 0.0),
            cost=d.get("cost", {}),
        )


def winners(rows: pd.DataFrame) -> pd.DataFrame:
    """The rule with the lowest perplexity at each k (random samples and chosen selections not competing)."""
    comp = rows[~rows["kind"].isin(["random", "chosen"])]
    out = []
    for k, g in comp.groupby("k"):
        best = g.sort_values(["perplexity", "rule"]).iloc[0]
        greedy_ppl = g.loc[g["rule"] == "greedy", "perplexity"]
        out.append(
            {
                "k": int(k),
                "winner": best["label"],
                "rule": best["rule"],
                "blocks": best["blocks"],
                "perplexity": best["perplexity"],
                "greedy_perplexity": float(greedy_ppl.iloc[0]) if len(greedy_ppl) else math.nan,
            }
        )
    return pd.DataFrame(out, columns=["k", "winner", "rule", "blocks", "perplexity", "greedy_perplexity"])


def correlation(board: Board) -> pd.DataFrame:
    from scipy.stats import spearmanr

    damage = board.damage()
    out = []
    for m in board.metrics():
        if m.key == DAMAGE_KEY:
            continue
        s = np.asarray(board.scores(m), dtype=float)
        s = s if m.redundant_when == "low" else -s
        ok = np.isfinite(s) & np.isfinite(damage)
        rho = float(spearmanr(s[ok], damage[ok]).statistic) if ok.sum() > 2 else math.nan
        out.append({"metric": m.key, "label": m.label, "spearman": rho})
    return pd.DataFrame(out, columns=["metric", "label", "spearman"])


def plan(board: Board) -> list[tuple[Rule, int, int, dict]]:
    """Every (rule, k, sample, action) the board evaluates (runs the searches it needs)."""
    out = []
    for rule in active_rules(board):
        for k in board.settings.ks(board.n_blocks):
            for i, action in enumerate(rule.select(board, k)):
                out.append((rule, k, i, canonical_action(action)))
    return out


def _store_eval(lm, action: dict, settings: EvalSettings, text: Text, data: dict) -> dict:
    _, out, _ = cache.cached("leaderboard-eval", eval_params(lm, action, settings, text), lambda: ({}, data))
    return out


def evaluate_plan(
    ws, actions: list[dict], settings: EvalSettings, text: Text, progress: Progress | None = None
) -> tuple[dict[str, dict], dict]:
    """Every distinct action evaluated once (``{stable_hash(action): result}``): cached ones read, the others in
    one pass of :func:`analysis.evaluation.shared_prefix.evaluate_actions` (the original once, each candidate from
    its first changed block). Also ``{"work", "original_work", "computed"}`` of what ran."""
    lm = ws.lm
    distinct: dict[str, dict] = {}
    for a in actions:
        distinct.setdefault(cache.stable_hash(canonical_action(a)), canonical_action(a))
    out, todo = {}, []
    for key, a in distinct.items():
        if eval_is_cached(lm, a, settings, text):
            out[key] = evaluate_action(lm, a, settings, text, ws=ws)
        else:
            todo.append((key, a))

    n_ids = len(evaluation_ids(lm.tokenizer, text, settings.n_tokens))
    one = original_work(work_model(lm.model), n_ids, settings.context, settings.stride)
    work = 0.0
    if todo:
        # ReplaceMe's maps for every k in one calibration pass (each action then reads its fit)
        replaceme.prefit(ws, [a for _, a in todo], progress=progress)
        many = evaluate_actions(lm, [a for _, a in todo], settings, text, ws=ws, progress=progress)
        work = many.work
        for (key, a), r in zip(todo, many.candidates):
            out[key] = _store_eval(lm, a, settings, text, r)
    return out, {"work": work, "original_work": one, "computed": len(todo), "distinct": len(distinct)}


def _scan_entry(lm, search: SearchSettings, state, site: str):
    return cache.entry("damage-scan", scan_params(lm, search, state, site))


def _computed_since(entry, t0: float) -> bool:
    meta = entry.path / "meta.json"
    return meta.is_file() and meta.stat().st_mtime >= t0 - 1.0


def _scans_of(settings: LeaderboardSettings, greedy_steps: list[dict], half_steps: list[dict]):
    """(state, site, n_kept) of every scan the board reads: the damage table, then each greedy step after the first."""
    out = [(None, site, None) for site in settings.damage_sites]
    for s in greedy_steps[:-1]:
        out.append((s["state"], "block", None))
    if half_steps:
        out += [(None, site, None) for site in HALVES]
    for s in half_steps[:-1]:
        for site in HALVES:
            out.append((s["state"], site, None))
    seen, uniq = set(), []
    for st, site, n in out:
        st = normalise_state(st)
        key = cache.stable_hash({"state": st, "site": site})
        if key not in seen:
            seen.add(key)
            uniq.append((st, site, n))
    return uniq


def run(
    ws,
    settings: LeaderboardSettings = LeaderboardSettings(),
    progress: Progress | None = None,
    owner: str | None = None,
    pool=None,
) -> Result:
    """Compute the leaderboard (everything cached on the way), keep it for the report (``owner``'s: a browser tab
    of the dashboard; None: the command line's), and return it. A quick board is not kept for the report.

    ``Result.cost`` says what ran, in evaluations of the original on the same evaluation settings (forward work
    counted in parameter-tokens, :mod:`analysis.capture.estimate`). ``pool``: a
    :class:`analysis.search.distributed.ReplicaPool` (entered); its replicas evaluate the candidates not cached
    yet, and (inside it) score the damage scans."""
    t0 = time.perf_counter()
    wall0 = time.time()
    settings, _ = for_model(settings, ws.lm)
    _, eval_text = validate(settings, ws.n_blocks, ws.text, ws.lm.tokenizer)
    say = progress or (lambda d, t, m: None)
    board = Board(ws=ws, settings=settings, progress=lambda d, t, m: say(d, t, f"search · {m}"))
    metrics = board.metrics()
    for i, m in enumerate(metrics):
        say(i, len(metrics), f"metrics · {m.label}")
        board._scores[m.key] = m.scores(
            ws, board.metric_params(m), progress=lambda d, t, msg, m=m: say(d, t, f"metrics · {m.label}: {msg}")
        )
    damage = damage_table(
        ws.lm, settings.search, sites=settings.damage_sites, progress=lambda d, t, m: say(d, t, f"damage scan · {m}")
    )
    greedy_steps = board.greedy(False)
    half_steps = board.greedy(True) if settings.half_blocks else []
    work = plan(board)
    if pool is not None:
        pool.evaluate_missing(
            [a for _, _, _, a in work],
            settings.evaluation,
            eval_text,
            progress=lambda d, t, m: say(d, t, f"evaluate on {pool.describe()} · {m}"),
        )
    results, ev_cost = evaluate_plan(
        ws, [a for *_, a in work], settings.evaluation, eval_text, progress=lambda d, t, m: say(d, t, f"evaluate · {m}")
    )
    rows = []
    for rule, k, sample, action in work:
        r = results[cache.stable_hash(action)]
        rows.append(
            {
                "rule": rule.key,
                "label": rule.label,
                "kind": rule.kind,
                "k": k,
                "sample": sample,
                "blocks": describe_blocks(action),
                "perplexity": r["perplexity"],
                "kl": r["kl"],
                "top1": r["top1"],
                "nll": r["nll"],
                "parameters": r["parameters"],
                "action": cache.dumps(action).replace("\n", "").replace("  ", ""),
                "candidates": settings.greedy_candidates if rule.key == "greedy" else "",
            }
        )
    say(len(work), len(work), "done")
    # the cost of what ran: scans written by this run, and the evaluations
    wm = work_model(ws.lm.model)
    scans = [
        (st, site)
        for st, site, _ in _scans_of(settings, greedy_steps, half_steps)
        if _computed_since(_scan_entry(ws.lm, settings.search, st, site), wall0)
    ]
    s_work = sum(scan_work(wm, settings.search, ws.n_blocks - len(st["blocks"]), site) for st, site in scans)
    if scans:
        s_work += reference_work(wm, settings.search)
    one = ev_cost["original_work"]
    cost = {
        "evaluations": (s_work + ev_cost["work"]) / one,
        "scan_evaluations": s_work / one,
        "evaluation_evaluations": ev_cost["work"] / one,
        "scans_computed": len(scans),
        "selections": ev_cost["distinct"],
        "selections_computed": ev_cost["computed"],
        "rows": len(rows),
        "work": s_work + ev_cost["work"],
        "unit": "evaluations of the original on the evaluation settings (forward work in parameter-tokens)",
    }
    orig = next(iter(results.values()))["original_perplexity"] if results else math.nan
    result = Result(
        settings=settings.to_dict(),
        rows=pd.DataFrame(rows),
        greedy=greedy_steps,
        greedy_half=half_steps,
        damage=damage,
        correlation=correlation(board),
        original_perplexity=orig,
        seconds=time.perf_counter() - t0,
        cost=cost,
    )
    if not settings.quick:  # the report shows the full board only
        _keep_latest(ws, result, owner)
    return result


# ---- estimate ---------------------------------------------------------------------------------------------------


def _greedy_chain(lm, settings: LeaderboardSettings, steps: int) -> tuple[list[dict], int]:
    """The greedy states that can be read from cached scans without computing anything (the board's own greedy
    search, :func:`analysis.metrics.damage.greedy`, told to compute nothing), and how many of the ``steps`` scans
    are cached (step 1's is the damage table's block scan)."""
    try:
        done = greedy(lm, settings.search, steps=steps, candidates=settings.greedy_candidates, cached_only=True)
    except DamageError:  # more steps than the candidate set allows: the run itself refuses them
        return [], 0
    states = [row["state"] for row in done]
    return states, len(states)


#: Seconds a board that is all cached takes to read and assemble, on the machine the cost models were fitted on.
READ_SECONDS = 0.6  # bench/search.py: a cached k = 1..2 board read in 0.36 s on an idle machine (factor 0.57)


def estimate(ws, settings: LeaderboardSettings = LeaderboardSettings(), probe: dict | None = None) -> dict:
    """Seconds the leaderboard will take, from a short forward of the model timed now (``probe``: a
    :func:`analysis.capture.estimate.forward_probe` result to reuse) and the work planned, minus what is cached.

    Work (parameter-tokens, :class:`analysis.capture.estimate.WorkModel`): the damage scans and greedy steps not
    cached; the calibration capture if missing and one pass for ReplaceMe's fits; one evaluation of the original
    plus, for each selection not cached, its run from the block where it leaves the original or a selection run
    before it (:func:`analysis.evaluation.shared_prefix.prefix_plan`; known for reverse, random and chosen selections,
    for greedy when its scans are cached, for a cached metric's suggestion and the consensus of cached proxies,
    and for ReplaceMe's runs when the angular distances are cached; the middle block assumed otherwise). The
    metrics not cached add their groups' own estimates (:func:`analysis.metrics.registry.group_estimate`)."""
    _, eval_text = validate(settings, ws.n_blocks, ws.text)
    lm, L = ws.lm, ws.n_blocks
    probe = probe or forward_probe(lm)
    wm = work_model(lm.model)
    ks = settings.ks(L)
    K = ks[-1]
    search, ev = settings.search, settings.evaluation
    # scans: the damage table, then greedy steps 2..K (and the half-block search)
    s_work, n_scans = 0.0, 0
    for site in settings.damage_sites:
        if not scan_is_cached(lm, search, None, site):
            s_work += scan_work(wm, search, L, site)
            n_scans += 1
    states, n_cached = _greedy_chain(lm, settings, K)
    for step in range(max(2, n_cached + 1), K + 1):
        s_work += scan_work(wm, search, L - (step - 1), "block")
        n_scans += 1
    if settings.half_blocks:
        for step in range(2, 2 * K + 1):
            for site in ("attention", "mlp"):
                s_work += scan_work(wm, search, L - (step - 1) // 2, site)
                n_scans += 1
    if n_scans:
        s_work += reference_work(wm, search)
    # calibration: the capture of the workspace when missing (the metrics read it), the metrics not cached (each
    # group's own estimate, timed now), ReplaceMe's fits for the runs not evaluated yet
    c_work = 0.0 if ws.is_captured() else wm.calibration_pass(ws.calibration)
    fits_needed = False  # ReplaceMe's maps not cached: one calibration pass fits them all (replaceme.prefit)
    board = Board(ws=ws, settings=settings)
    metrics = board.metrics()
    cached = {m.key: m.cached(ws, board.metric_params(m)) for m in metrics}
    m_seconds = 0.0
    # (the measured damage is the damage table's block scan, counted with the scans)
    for group in dict.fromkeys(m.group or m.key for m in metrics if not cached[m.key] and m.key != DAMAGE_KEY):
        fn = registry.group_estimate(group)
        m_seconds += fn(ws, probe) if fn is not None else 0.0
    # evaluations: each selection from where it leaves those run before it, unless cached; a selection known before
    # the run (reverse, random, chosen; greedy from cached scans; a cached metric's suggestion, the consensus of
    # cached proxies, ReplaceMe's run from the cached angular distances) is checked against the cache, the others
    # are counted from the middle block
    n_ids = len(evaluation_ids(lm.tokenizer, eval_text, ev.n_tokens))
    one = original_work(wm, n_ids, ev.context, ev.stride)
    todo_known: dict[str, dict] = {}  # selections known before the run and not cached
    seen: set[str] = set()
    n_unknown = 0
    mid = L // 2
    proxies = [m for m in metrics if m.key != DAMAGE_KEY]
    replaceme = any(r.key == "replaceme" and r.enabled(board) for r in rules())
    # ReplaceMe's runs come from the angular distances, cached whether or not that metric is on the board
    angular = registry.get("angular_distance")
    runs_known = replaceme and ws.is_captured() and angular.cached(ws, board.metric_params(angular))
    for k in ks:
        known = [{"remove_blocks": reverse_order(L, k)}]
        known += [{"remove_blocks": s} for s in random_selections(L, k, settings.random_samples, settings.seed)]
        known += [{"remove_blocks": sorted(sel)} for sel in settings.also if len(sel) == k]
        unknown = 1 if settings.half_blocks else 0
        if k <= len(states):
            known.append({"remove_blocks": states[k - 1]["blocks"]})
        else:
            unknown += 1
        for m in metrics:
            if cached[m.key]:
                known.append({"remove_blocks": board.suggestion(m, k)})
            else:
                unknown += 1
        if proxies and all(cached[m.key] for m in proxies):
            known += _consensus(board, k)
        elif proxies:
            unknown += 1
        if replaceme and 1 <= k <= L - 2:
            if runs_known:
                for a in (replaceme_rows.replaceme_rule(ws, k), replaceme_rows.removal_rule(ws, k)):
                    known.append(a)
                    if "replaceme" in a and not eval_is_cached(lm, canonical_action(a), ev, eval_text):
                        fits_needed = True
            else:
                unknown += 2
                fits_needed = True
        for a in known:
            a = canonical_action(a)
            if cache.stable_hash(a) not in seen:
                seen.add(cache.stable_hash(a))
                if not eval_is_cached(lm, a, ev, eval_text):
                    todo_known[cache.stable_hash(a)] = a
        n_unknown += unknown
    if fits_needed:
        c_work += wm.calibration_pass(ws.calibration)
    # the known ones share the blocks they keep in common as the evaluation does (prefix_plan), the others are
    # counted from the middle block
    sigs = [action_signature(a, L, i) for i, a in enumerate(todo_known.values())]
    runs = [(len(sigs[c]), entry) for c, entry, _ in prefix_plan(list(range(L)), sigs)]
    runs += [(L - 1, mid)] * n_unknown
    e_work = one + sum(tail_work(wm, n, j, n_ids, ev.context, ev.stride) for n, j in runs) if runs else 0.0
    total = s_work + c_work + e_work
    # reading what is cached and writing the board: READ_SECONDS on the machine the cost models were fitted on, scaled by
    # this machine's measured speed now (a board that is all cached takes only this)
    seconds = total * probe["seconds_per_work"] + m_seconds + READ_SECONDS * machine_speed()["factor"]
    return {
        "seconds": seconds,
        "scans": n_scans,
        "evaluations": len(runs),
        "work": total,
        "scan_work": s_work,
        "calibration_work": c_work,
        "metrics_s": m_seconds,
        "evaluation_work": e_work,
        "original_work": one,
        "evaluations_of_original": total / one,
        "original_evaluation_s": one * probe["seconds_per_work"],
        "per_evaluation_s": one * probe["seconds_per_work"],
        "probe_s": probe["seconds"],
        "per_token_s": probe["seconds_per_token"],
        "quick": settings.quick,
        "note": "from a forward of the model timed now; cached scans and evaluations are skipped",
    }


# ---- kept results, CSV tables, report -----------------------------------------------------------------------------

KEPT_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("leaderboard_kept_for", default=None)


@contextlib.contextmanager
def kept_for(owner: str | None):
    """Within the block, :func:`latest` (and so the report's leaderboard section) reads ``owner``'s kept result: the
    dashboard keeps one per browser tab (its jobs' owner), the command line the shared one (``owner=None``)."""
    token = KEPT_FOR.set(owner)
    try:
        yield
    finally:
        KEPT_FOR.reset(token)


def _latest_path(lm, owner: str | None = None):
    name = lm.fingerprint + (f"-{cache.stable_hash(owner, 16)}" if owner else "")
    return cache.cache_root() / "leaderboard-latest" / f"{name}.json"


def _keep_latest(ws, result: Result, owner: str | None = None) -> None:
    """Keep the finished leaderboard (for ``owner``: a browser tab; None: the command line), with its checksum."""
    body = cache.dumps(result.to_dict())
    cache.atomic_write_text(
        _latest_path(ws.lm, owner), json.dumps({"xxh3": xxhash.xxh3_64_hexdigest(body.encode()), "result": body})
    )


def latest(ws, owner: str | None = None) -> Result | None:
    """The last finished leaderboard of this model (any settings) kept for ``owner`` (default: the one set by
    :func:`kept_for`, else the command line's), or None. A kept file whose checksum does not match is ignored."""
    owner = owner if owner is not None else KEPT_FOR.get()
    path = _latest_path(ws.lm, owner)
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
        body = kept["result"]
        if xxhash.xxh3_64_hexdigest(body.encode()) != kept["xxh3"]:
            log.warning("the kept leaderboard %s does not match its checksum; ignored", path)
            return None
        return Result.from_dict(json.loads(body))
    except Exception:  # an older (unchecked) or damaged file: as if there were none
        return None


def damage_csv(result: Result) -> pd.DataFrame:
    return result.damage[["block", "site", "delta_nll", "perplexity", "kl", "top1"]]


def greedy_candidates(result: Result) -> str:
    """Which candidate set the greedy block search searched, in words (older boards: every block)."""
    key = result.settings.get("greedy_candidates", "all")
    return CANDIDATE_SETS.get(key, key)


def greedy_csv(result: Result) -> pd.DataFrame:
    key = result.settings.get("greedy_candidates", "all")
    rows = [
        {
            "step": s["step"],
            "block": s["block"],
            "site": s["site"],
            "perplexity": s["perplexity"],
            "search": "block",
            "candidates": s.get("candidates", key),
        }
        for s in result.greedy
    ]
    rows += [
        {
            "step": s["step"],
            "block": s["block"],
            "site": s["site"],
            "perplexity": s["perplexity"],
            "search": "half",
            "candidates": "all",
        }
        for s in result.greedy_half
    ]
    return pd.DataFrame(rows, columns=["step", "block", "site", "perplexity", "search", "candidates"])


def leaderboard_csv(result: Result) -> pd.DataFrame:
    rows = result.rows
    if "candidates" not in rows.columns:  # a board kept before the candidate set was recorded
        rows = rows.assign(candidates="")
    return rows[["rule", "k", "blocks", "perplexity", "kl", "top1", "sample", "label", "parameters", "candidates"]]


def correlation_csv(result: Result) -> pd.DataFrame:
    return result.correlation[["metric", "spearman"]]


def figure(result: Result):
    """Perplexity against k: one line per rule, the random samples as a band (min–max) with their median."""
    import plotly.graph_objects as go  # plotting only: the command line's board does not load plotly

    from analysis import plots

    rows = result.rows
    fig = go.Figure()
    rnd = rows[rows["kind"] == "random"]
    if len(rnd):
        g = rnd.groupby("k")["perplexity"]
        ks = list(g.min().index)
        fig.add_trace(
            go.Scatter(
                x=ks + ks[::-1],
                y=list(g.max()) + list(g.min())[::-1],
                fill="toself",
                fillcolor="rgba(127,127,127,0.2)",
                line=dict(width=0),
                name="random (min–max)",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=list(g.median()),
                mode="lines",
                name="random (median)",
                line=dict(color="#7f7f7f", dash="dot"),
                hovertemplate="k %{x}: %{y:.2f}<extra>random (median)</extra>",
            )
        )
    for rule, g in rows[~rows["kind"].isin(["random"])].groupby("rule", sort=False):
        g = g.sort_values("k")
        label = g["label"].iloc[0]
        style = {}
        if rule == "greedy":
            style = dict(line=dict(color=plots.HIGHLIGHT, width=3))
        elif rule == "reverse":
            style = dict(line=dict(color="#000000", dash="dash"))
        fig.add_trace(
            go.Scatter(
                x=list(g["k"]),
                y=list(g["perplexity"]),
                mode="lines+markers",
                name=label,
                customdata=list(g["blocks"]),
                **style,
                hovertemplate=f"k %{{x}}: %{{y:.2f}}<br>blocks %{{customdata}}<extra>{label}</extra>",
            )
        )
    if math.isfinite(result.original_perplexity):
        fig.add_hline(
            y=result.original_perplexity,
            line_dash="dot",
            line_color="#2ca02c",
            annotation_text="original",
            annotation_position="bottom right",
        )
    ev = result.settings.get("evaluation", {})
    fig.update_layout(
        title=f"Perplexity on {ev.get('text')} ({ev.get('n_tokens')} tokens) after removing k blocks",
        xaxis_title="k (blocks removed)",
        yaxis_title="perplexity (log scale)",
        height=460,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=-0.25),
    )
    fig.update_yaxes(type="log")
    fig.update_xaxes(dtick=1)
    return fig


def table(result: Result) -> pd.DataFrame:
    """Perplexity per rule (rows) and k (columns); random as its median."""
    rows = result.rows.copy()
    rows.loc[rows["kind"] == "random", "label"] = "Random (median)"
    return rows.pivot_table(index="label", columns="k", values="perplexity", aggfunc="median", sort=False)


def report_items(ws) -> list:
    result = latest(ws)
    if result is None:
        return []
    t = table(result).reset_index()
    t.columns = [str(c) if not isinstance(c, str) else c for c in t.columns]
    w = result.winners()
    corr = result.correlation[["label", "spearman"]].rename(columns={"label": "metric"})
    s = result.settings
    return [
        (
            "figure",
            figure(result),
            "Each rule's k blocks removed, evaluated against the original (one line per rule; "
            "random selections as a band).",
        ),
        ("table", t, f"Perplexity on {s['evaluation']['text']} by rule and k (lower is better)."),
        (
            "table",
            w,
            "Winner at each k (random and chosen selections not competing). Greedy search (SLEB) searched "
            f"{greedy_candidates(result)}.",
        ),
        (
            "table",
            corr,
            f"Spearman ρ of each metric (oriented: low = redundant) with the measured single-block damage "
            f"on {s['search']['text']} ({s['search']['n_tokens']} tokens); +1 = same order.",
        ),
    ]


replaceme_rows.register(register_rule, Rule)  # ReplaceMe rows: "replace" against "remove" of the same run


REPORT_SECTION = ReportSection("leaderboard", "Which blocks to cut, measured: the leaderboard", report_items, order=90)
