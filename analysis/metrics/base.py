"""What a per-block metric is, and the place metric families register: :class:`BlockMetric`, :class:`ReportSection`,
:func:`register`, :func:`register_group_writer`, :func:`register_report_section`, and the rank helpers
(:func:`most_redundant`, :func:`rank_normalise`).

Families (:mod:`analysis.metrics.families`) import only this module; :mod:`analysis.metrics.registry` imports the
families and answers queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BlockMetric:
    key: str  # column name in layers.csv
    label: str
    redundant_when: Literal["low", "high"]
    description: str
    compute: Callable  # (workspace, params, progress) -> np.ndarray of one score per block
    is_cached: Callable  # (workspace, params) -> bool: can be shown without computing
    default_params: dict = field(default_factory=dict)
    group: str = ""  # the command-line --metrics name that computes it (e.g. "linearity")
    page: str = ""  # the page that explains it
    suggest_rule: Callable | None = None  # (workspace, params, k, scores) -> blocks; default: k most redundant
    order: int = 100  # position in tables (lower first)

    def scores(self, ws, params: dict | None = None, progress: Progress | None = None) -> np.ndarray:
        return np.asarray(self.compute(ws, {**self.default_params, **(params or {})}, progress), dtype=float)

    def cached(self, ws, params: dict | None = None) -> bool:
        return bool(self.is_cached(ws, {**self.default_params, **(params or {})}))

    def suggest(self, ws, k: int, params: dict | None = None, scores: np.ndarray | None = None) -> list[int]:
        params = {**self.default_params, **(params or {})}
        if scores is None:
            scores = self.scores(ws, params)
        if self.suggest_rule is not None:
            return sorted(int(b) for b in self.suggest_rule(ws, params, k, scores))
        return most_redundant(scores, self.redundant_when, k)

    @property
    def direction_text(self) -> str:
        return f"{'low' if self.redundant_when == 'low' else 'high'} {self.label.lower()} = redundant"


_REGISTRY: dict[str, BlockMetric] = {}


def register(metric: BlockMetric) -> BlockMetric:
    _REGISTRY[metric.key] = metric
    return metric


def most_redundant(scores: np.ndarray, redundant_when: str, k: int) -> list[int]:
    """The ``k`` blocks at the redundant end of ``scores`` (NaN never chosen), sorted by block index."""
    s = np.asarray(scores, dtype=float)
    valid = np.flatnonzero(np.isfinite(s))
    order = valid[np.argsort(s[valid] if redundant_when == "low" else -s[valid], kind="stable")]
    return sorted(int(b) for b in order[: max(0, k)])


def rank_normalise(scores: np.ndarray, redundant_when: str) -> np.ndarray:
    """Ranks scaled to [0, 1] with 1 = most redundant (ties share their mean rank; NaN stays NaN)."""
    s = np.asarray(scores, dtype=float)
    out = np.full_like(s, np.nan)
    ok = np.isfinite(s)
    if ok.sum() == 0:
        return out
    v = s[ok] if redundant_when == "high" else -s[ok]
    order = v.argsort(kind="stable")
    ranks = np.empty_like(v)
    ranks[order] = np.arange(len(v), dtype=float)
    for val in np.unique(v):  # mean rank for ties
        same = v == val
        ranks[same] = ranks[same].mean()
    out[ok] = ranks / max(1, len(v) - 1)
    return out


# group name -> writer(ws, out_dir, progress) -> (extra per-block columns, run.json entries); used by
# ``python -m analysis metrics`` for files beyond layers.csv (the linearity matrix, states.csv ...)
_GROUP_WRITERS: dict[str, Callable] = {}


def register_group_writer(group: str, writer: Callable) -> Callable:
    _GROUP_WRITERS[group] = writer
    return writer


# group name -> estimate(ws, probe) -> seconds of computing the group's metrics that are not cached, measured on
# this machine now (``probe``: :func:`analysis.capture.estimate.forward_probe` of the workspace's model); the capture
# itself is estimated apart. Used by ``python -m analysis metrics`` before it starts.
_GROUP_ESTIMATES: dict[str, Callable] = {}


def register_group_estimate(group: str, estimate: Callable) -> Callable:
    _GROUP_ESTIMATES[group] = estimate
    return estimate


@dataclass(frozen=True)
class ReportSection:
    """A section of the HTML report: ``build(ws)`` returns items from *cached* results only (never computes).

    Items are ``("figure", plotly_figure, caption)``, ``("table", DataFrame, caption)`` or ``("text", str, "")``;
    an empty list leaves the section out.
    """

    key: str
    title: str
    build: Callable
    order: int = 100


_REPORT_SECTIONS: dict[str, ReportSection] = {}


def register_report_section(section: ReportSection) -> ReportSection:
    _REPORT_SECTIONS[section.key] = section
    return section
