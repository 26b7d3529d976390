"""What every change kind provides: an :class:`Action`, the row of the table in :mod:`analysis.changes.variant`.

A change kind is one module of :mod:`analysis.changes` that defines ``ACTIONS``, a tuple of :class:`Action`. It
imports this module only; the table imports the kinds (as peft's mapping imports its methods), never the other
way round. Adding a kind is one module and one entry in :data:`analysis.changes.variant.KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

RECORD = "layerscope_record"  # the attribute of a changed model that holds what each change did to it


@dataclass(frozen=True)
class Action:
    """One change a recipe's ``action`` section can name (its ``key``).

    ``apply(model, value, workspace | None, progress) -> model`` makes the change (on a structural copy that
    shares the original's weights when ``order`` < 100); ``describe(value)`` says it in words; ``removes(value)``
    lists the blocks it takes out (removed together with ``remove_blocks``' blocks, last); ``check(value,
    action)`` refuses combinations with the other actions of the same recipe.
    """

    key: str
    apply: Callable
    describe: Callable[[object], str]
    order: int = 50
    removes: Callable[[object], list[int]] | None = None
    check: Callable[[object, dict], None] | None = None


def writable_record(model: nn.Module, attr: str = RECORD) -> dict:
    """The record of what changes did to ``model`` (created empty on first use), for a change to write into."""
    rec = model.__dict__.get(attr)
    if rec is None:
        rec = {}
        model.__dict__[attr] = rec
    return rec


def record_of(model: nn.Module, attr: str = RECORD) -> dict:
    """A copy of what the changes did to ``model`` (empty for an unchanged or depth-pruned model)."""
    return dict(model.__dict__.get(attr) or {})
