"""The registry of per-block metrics: every view that scores blocks for redundancy registers here.

A metric is one :class:`BlockMetric`: a per-block score, which end of it means "redundant", and a suggestion
rule. The overview, the prune page and the command line list whatever is registered, so a new metric is one new
file in ``analysis/block_metrics/`` that calls :func:`register` (the package imports every module in it).
"""

from __future__ import annotations

import importlib
import pkgutil
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


def metrics() -> list[BlockMetric]:
    """Every registered metric (imports every module of :mod:`analysis.block_metrics` once)."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.key))


def get(key: str) -> BlockMetric:
    _load_all()
    if key not in _REGISTRY:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def groups() -> dict[str, list[BlockMetric]]:
    out: dict[str, list[BlockMetric]] = {}
    for m in metrics():
        out.setdefault(m.group or m.key, []).append(m)
    return out


def most_redundant(scores: np.ndarray, redundant_when: str, k: int) -> list[int]:
    """The ``k`` blocks at the redundant end of ``scores`` (NaN never chosen), sorted by block index."""
    s = np.asarray(scores, dtype=float)
    valid = np.flatnonzero(np.isfinite(s))
    order = valid[np.argsort(s[valid] if redundant_when == "low" else -s[valid], kind="stable")]
    return sorted(int(b) for b in order[:max(0, k)])


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


def group_writer(group: str) -> Callable | None:
    _load_all()
    return _GROUP_WRITERS.get(group)


def group_names() -> list[str]:
    """Every ``--metrics`` group: those of the registered metrics, then groups that only write files (``id``)."""
    names = list(groups())
    return names + sorted(g for g in _GROUP_WRITERS if g not in names)


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


def report_sections() -> list[ReportSection]:
    _load_all()
    return sorted(_REPORT_SECTIONS.values(), key=lambda s: (s.order, s.key))


_LOADED = False


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    from . import block_metrics

    for mod in pkgutil.iter_modules(block_metrics.__path__):
        importlib.import_module(f"{block_metrics.__name__}.{mod.name}")
    _LOADED = True
