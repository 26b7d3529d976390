"""A *variant*: the original model with changes applied, its recipe and its evaluation.

Changes are *actions*, named by the keys of a recipe's ``action`` section. Each kind of change is one module of
:mod:`analysis.changes` with an ``ACTIONS`` tuple, listed in :data:`KINDS`; :func:`apply_actions` applies them in a fixed order so that block indices always
refer to the **original** model: first the actions that change blocks in place (registered with ``order`` < 100,
e.g. low-rank truncation or linear replacement), then ``remove_blocks``. An action that takes blocks out itself
(``replaceme``: its run ``[l, l+n)``) says which with ``removes``; they are removed together with ``remove_blocks``'
blocks in that last step, so every index still refers to the original. The original is never modified: depth
pruning shares the original's weight tensors, and in-place actions must replace parameters, not write into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from analysis.changes import (
    healing,
    linear_replacement,
    low_rank,
    remove_blocks,
    replaceme,
    skip_halves,
)
from analysis.changes.base import Action
from analysis.changes.remove_blocks import shallow_structural_copy
from analysis.errors import InputError
from analysis.model.loading import LoadedModel, derived_model

if TYPE_CHECKING:  # a Variant carries its evaluation; evaluation is a layer above changes
    from analysis.evaluation.perplexity import EvaluationTable

# The table of change kinds: each kind module defines ACTIONS; no kind imports this table.
KINDS = (remove_blocks, linear_replacement, replaceme, low_rank, skip_halves, healing)
_ACTIONS: dict[str, Action] = {a.key: a for kind in KINDS for a in kind.ACTIONS}


def actions() -> dict[str, Action]:
    return dict(_ACTIONS)


def validate_action(action: dict) -> None:
    unknown = sorted(set(action) - set(_ACTIONS))
    if unknown:
        raise InputError(f"unknown action key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ACTIONS))}")


def removed_by(action: dict) -> list[int]:
    """Every block ``action`` takes out (``remove_blocks`` and the runs of actions such as ``replaceme``), in the
    original's numbering; a block taken out twice is an error."""
    validate_action(action)
    seen: dict[int, str] = {int(b): "remove_blocks" for b in (action.get("remove_blocks") or [])}
    for key, value in action.items():
        act = _ACTIONS[key]
        if not value or act.removes is None:
            continue
        if act.check is not None:
            act.check(value, action)
        for b in act.removes(value):
            if b in seen:
                raise InputError(f"block {b} is taken out twice: by {seen[b]} and by {key}")
            seen[b] = key
    return sorted(seen)


def describe_action(action: dict) -> str:
    validate_action(action)
    parts = [_ACTIONS[k].describe(v) for k, v in sorted(action.items(), key=lambda kv: _ACTIONS[kv[0]].order) if v]
    return "; ".join(parts) or "no change"


def apply_actions(model: nn.Module, action: dict, ws=None, progress=None) -> nn.Module:
    """The original with ``action`` applied (the original is never modified)."""
    removal = removed_by(action)
    out = model
    for key, value in sorted(action.items(), key=lambda kv: _ACTIONS[kv[0]].order):
        if not value or key == "remove_blocks":
            continue
        if out is model and _ACTIONS[key].order < 100:
            out = shallow_structural_copy(model)  # in-place actions work on a copy that shares the weights
        out = _ACTIONS[key].apply(out, value, ws, progress)
    if removal:  # remove_blocks' own blocks and the runs other actions take out, all in the original's numbering
        out = _ACTIONS["remove_blocks"].apply(out, removal, ws, progress)
    return out


@dataclass
class Variant:
    name: str
    model: nn.Module
    action: dict
    base_fingerprint: str
    evaluation: EvaluationTable | None = None
    recipe: dict = field(default_factory=dict)

    @property
    def removed_blocks(self) -> list[int]:
        return removed_by(self.action)

    def as_loaded_model(self, base: LoadedModel) -> LoadedModel:
        """The variant as a :class:`LoadedModel`, so every view can run on it (cached under its own fingerprint)."""
        return derived_model(base, self.model, f"{base.name.split(' (')[0]} {self.name}")


def candidate_name(action: dict) -> str:
    if action.get("heal"):
        return "healed"
    depth = bool(action.get("remove_blocks"))
    other = any(v for k, v in action.items() if k != "remove_blocks")
    return "changed" if depth and other else "pruned" if depth else "compressed" if other else "candidate"
