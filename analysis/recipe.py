"""``recipe.json``: what was done to which model, on which data, and what it gave.

A recipe is plain JSON written beside every export. Its top-level keys:

* ``layerscope``: format version;
* ``model``: source, dtype, name, fingerprint, parameters, blocks of the *source* model;
* ``calibration``: text (name, source, sha256), windows, window length, and cloud settings;
* ``metrics``: the settings of the metrics the choice was based on (free-form per metric);
* ``action``: what was changed — ``remove_blocks`` (0-based block indices), and for other actions their keys;
* ``removed_blocks``: the same list at top level, as pruning tools report it;
* ``evaluation``: settings, text, ``original`` and the changed model's row (``pruned`` or ``compressed``);
* ``export``: where it was written, the form, and the reload check.
"""

from __future__ import annotations

import datetime as _dt

from .workspace import Workspace

RECIPE_VERSION = 1


def base_recipe(ws: Workspace) -> dict:
    card = ws.lm.card()
    return {
        "layerscope": RECIPE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": ws.lm.spec.source, "dtype": ws.lm.spec.dtype, "name": ws.lm.name,
                  "fingerprint": ws.lm.fingerprint, "parameters": card["parameters"], "blocks": card["blocks"],
                  "architecture": card["architecture"]},
        "calibration": {"text": ws.text.describe(), "windows": ws.calibration.n_windows,
                        "window_len": ws.calibration.window_len, "exclude_first": ws.calibration.exclude_first,
                        "n_max": ws.calibration.n_max, "seed": ws.calibration.seed},
        "metrics": {},
        "action": {},
    }


def pruning_recipe(ws: Workspace, removed: list[int], evaluation: dict | None = None,
                   metrics: dict | None = None) -> dict:
    r = base_recipe(ws)
    r["action"] = {"remove_blocks": sorted(removed)}
    r["removed_blocks"] = sorted(removed)
    r["metrics"] = metrics or {}
    if evaluation is not None:
        r["evaluation"] = evaluation
    return r
