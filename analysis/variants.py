"""A *variant*: the original model with changes applied, its recipe and its evaluation.

Changes are *actions*, named by the keys of a recipe's ``action`` section. Each action is registered here with
the function that applies it; :func:`apply_actions` applies them in a fixed order so that block indices always
refer to the **original** model: first the actions that change blocks in place (registered with ``order`` < 100,
e.g. low-rank truncation or linear replacement), then ``remove_blocks``. The original is never modified: depth
pruning shares the original's weight tensors, and in-place actions must replace parameters, not write into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .evaluate import EvaluationTable
from .models import LoadedModel, derived_model
from .surgery import remove_blocks, shallow_structural_copy


@dataclass(frozen=True)
class Action:
    key: str
    apply: Callable  # (model, value, workspace | None, progress) -> model
    describe: Callable[[object], str]
    order: int = 50


_ACTIONS: dict[str, Action] = {}


def register_action(action: Action) -> Action:
    _ACTIONS[action.key] = action
    return action


def actions() -> dict[str, Action]:
    return dict(_ACTIONS)


register_action(Action(
    key="remove_blocks", order=100,
    apply=lambda model, value, ws, progress: remove_blocks(model, value),
    describe=lambda value: "remove blocks " + ", ".join(map(str, value)),
))

from . import compression  # noqa: E402,F401  (registers low_rank and replace_linear)
from . import healing  # noqa: E402,F401  (registers heal, applied last)


def validate_action(action: dict) -> None:
    unknown = sorted(set(action) - set(_ACTIONS))
    if unknown:
        raise ValueError(f"unknown action key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ACTIONS))}")


def describe_action(action: dict) -> str:
    validate_action(action)
    parts = [_ACTIONS[k].describe(v) for k, v in sorted(action.items(), key=lambda kv: _ACTIONS[kv[0]].order) if v]
    return "; ".join(parts) or "no change"


def apply_actions(model: nn.Module, action: dict, ws=None, progress=None) -> nn.Module:
    """The original with ``action`` applied (the original is never modified)."""
    validate_action(action)
    out = model
    for key, value in sorted(action.items(), key=lambda kv: _ACTIONS[kv[0]].order):
        if not value:
            continue
        if out is model and _ACTIONS[key].order < 100:
            out = shallow_structural_copy(model)  # in-place actions work on a copy that shares the weights
        out = _ACTIONS[key].apply(out, value, ws, progress)
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
        return list(self.action.get("remove_blocks", []))

    def as_loaded_model(self, base: LoadedModel) -> LoadedModel:
        """The variant as a :class:`LoadedModel`, so every view can run on it (cached under its own fingerprint)."""
        return derived_model(base, self.model, f"{base.name.split(' (')[0]} {self.name}")
