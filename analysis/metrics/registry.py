"""The table of per-block metrics: every view that scores blocks for redundancy is listed here.

A metric is one :class:`~analysis.metrics.base.BlockMetric`: a per-block score, which end of it means "redundant",
and a suggestion rule. The overview, the prune page and the command line list whatever is registered. A new metric
is one module in :mod:`analysis.metrics.families` that calls :func:`analysis.metrics.base.register`, and one name
in :data:`FAMILIES` below: this table imports the families, the families import only :mod:`analysis.metrics.base`.
"""

from __future__ import annotations

from typing import Callable

from analysis.errors import NotFound
from analysis.metrics.base import (  # noqa: F401  (re-exported: the registry is the one name consumers import)
    _GROUP_ESTIMATES,
    _GROUP_WRITERS,
    _REGISTRY,
    _REPORT_SECTIONS,
    BlockMetric,
    Progress,
    ReportSection,
    most_redundant,
    rank_normalise,
    register,
    register_group_writer,
    register_report_section,
)
from analysis.metrics.families import (
    avss,
    baselines,
    intrinsic_dimension,
    linearity,
    measured_damage,
    rips,
    topology,
)

FAMILIES = (linearity, baselines, avss, intrinsic_dimension, topology, rips, measured_damage)

#: metric groups a layer-by-layer model (:mod:`analysis.model.sequential`) can give: those computed from the captured
#: states, and the measured damage (its block-removal scan runs every variant at once, each block loaded once)
SEQUENTIAL_GROUPS = ("linearity", "id", "topology", "damage")


def runs_layer_by_layer(metric: BlockMetric) -> bool:
    """Whether ``metric`` can be computed for a layer-by-layer model (AVSS's hooks need the model in memory)."""
    return metric.group in SEQUENTIAL_GROUPS


def metrics() -> list[BlockMetric]:
    """Every registered metric (imports every module of :mod:`analysis.metrics.families` once)."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.key))


def get(key: str) -> BlockMetric:
    if key not in _REGISTRY:
        raise NotFound(f"unknown metric {key!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def groups() -> dict[str, list[BlockMetric]]:
    out: dict[str, list[BlockMetric]] = {}
    for m in metrics():
        out.setdefault(m.group or m.key, []).append(m)
    return out


def group_writer(group: str) -> Callable | None:
    return _GROUP_WRITERS.get(group)


def group_estimate(group: str) -> Callable | None:
    """``estimate(ws, probe) -> seconds`` of a ``--metrics`` group (None: the group has no estimate)."""
    return _GROUP_ESTIMATES.get(group)


def group_names() -> list[str]:
    """Every ``--metrics`` group: those of the registered metrics, then groups that only write files (``id``)."""
    names = list(groups())
    return names + sorted(g for g in _GROUP_WRITERS if g not in names)


def report_sections() -> list[ReportSection]:
    return sorted(_REPORT_SECTIONS.values(), key=lambda s: (s.order, s.key))
