"""A *variant*: the original model with changes applied, its recipe and its evaluation.

Pages and the command line build variants the same way: ``apply_actions`` takes the original model and an
``action`` dict (the ``action`` section of a recipe) and returns the changed model. Depth pruning shares the
original's weight tensors, so keeping several variants costs little memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .evaluate import EvaluationTable
from .surgery import remove_blocks


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


def describe_action(action: dict) -> str:
    parts = []
    if action.get("remove_blocks"):
        parts.append("remove blocks " + ", ".join(map(str, action["remove_blocks"])))
    return "; ".join(parts) or "no change"


def apply_actions(model: nn.Module, action: dict) -> nn.Module:
    """The original with ``action`` applied (the original is never modified)."""
    out = model
    if action.get("remove_blocks"):
        out = remove_blocks(out, action["remove_blocks"])
    return out
