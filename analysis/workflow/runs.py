"""Metric files of a headless run: ``layers.csv`` (one column per metric of the chosen groups), each group's own
files and ``run.json``, written by the ``metrics`` and ``run`` commands (a whole recipe is reproduced by
:mod:`analysis.cli.run`, through :mod:`analysis.workflow.variants` for its change)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.cache import write_csv, write_json
from analysis.errors import InputError
from analysis.metrics import registry


def resolve_groups(spec: str | list[str] | None) -> list[str]:
    groups = registry.group_names()  # metric groups, then groups that only write files (id: states.csv)
    if spec in (None, "", []):
        return ["linearity"]
    wanted = (
        list(groups)
        if spec == "all"
        else ([g.strip() for g in spec.split(",") if g.strip()] if isinstance(spec, str) else list(spec))
    )
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        raise InputError(f"unknown metric group(s) {', '.join(unknown)}; known: {', '.join(groups)}")
    return wanted


def write_metric_files(
    ws, groups: list[str], out: Path, progress_factory=None, group_params: dict[str, dict] | None = None
) -> dict:
    """``layers.csv`` (one row per block, a column per metric of the groups), the groups' own files, and the
    run description; returns what goes into ``run.json``. ``group_params[g]`` (optional) goes to the metrics of
    group ``g`` and to its writer as ``params=`` (e.g. the AVSS site)."""
    progress_factory = progress_factory or (lambda name: None)
    all_groups = registry.groups()
    table = pd.DataFrame({"block": range(ws.n_blocks)})
    info = {**ws.describe(), "metrics": {}}
    for g in groups:
        params = (group_params or {}).get(g)
        for m in all_groups.get(g, []):
            print(f"[metrics] {m.key}", file=sys.stderr)
            table[m.key] = m.scores(ws, params, progress=progress_factory(m.key))
            info["metrics"][m.key] = {"redundant_when": m.redundant_when, "description": m.description}
        writer = registry.group_writer(g)
        if writer is not None:
            columns, extra = writer(ws, out, progress_factory(g), **({"params": params} if params else {}))
            for name, values in columns.items():
                table[name] = values
            info.update(extra)
    write_csv(out / "layers.csv", table)
    write_json(out / "run.json", info)
    if not getattr(ws.lm, "stored_card", None):  # a results folder is not rewritten from itself
        from analysis.model.loading import write_results_card

        write_results_card(ws.lm, out, ws.describe(), ws.text.content)
    return info
