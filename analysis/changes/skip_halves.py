"""Half-block removal (BlockPruner): skip a block's attention or its feed-forward, keeping the residual.

Skipping a half means its **output projection returns zeros** (see :mod:`analysis.model.architecture`): the action
replaces that projection's weight (and bias) by a zero tensor, so the block adds nothing from that half. Indices are
the original model's blocks (0-based); the actions run before ``remove_blocks`` (``order`` < 100), so a block
named in both is simply removed.

Export: the zeros are real weights, so the checkpoint reloads with plain ``AutoModelForCausalLM`` and computes
exactly the in-memory model (the removed half is zero, never silently kept). ``config.json`` says so in
``layerscope_skipped_halves`` (``{"attention": [...], "mlp": [...]}``, original block indices); the checkpoint is
not smaller, because the architecture has no block without one half.
"""

from __future__ import annotations

import torch
from torch import nn

from analysis.changes.base import Action
from analysis.errors import InputError
from analysis.model.architecture import attention_output, find_blocks, mlp_output

HALVES = ("attention", "mlp")


def output_projection(block: nn.Module, half: str, index: int | None = None) -> nn.Module:
    if half == "attention":
        return attention_output(block, index)
    if half == "mlp":
        return mlp_output(block, index)
    raise InputError(f"half must be 'attention' or 'mlp', not {half!r}")


def zero_projection(module: nn.Module) -> None:
    """Replace the projection's weight and bias by zeros (new tensors: the original's are shared, never written)."""
    for name in ("weight", "bias"):
        p = getattr(module, name, None)
        if isinstance(p, torch.Tensor):
            setattr(module, name, nn.Parameter(torch.zeros_like(p), requires_grad=False))


def skip_halves(model: nn.Module, half: str, blocks) -> nn.Module:
    """Skip ``half`` of each of ``blocks`` in ``model`` (a structural copy made by :func:`variants.apply_actions`)."""
    layer_list = find_blocks(model)
    blocks = sorted(int(b) for b in blocks)
    bad = [b for b in blocks if b < 0 or b >= len(layer_list)]
    if bad:
        from analysis.changes.remove_blocks import PruneError

        raise PruneError(
            f"block{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: the model "
            f"has blocks 0..{len(layer_list) - 1} (0-based)"
        )
    for b in blocks:
        zero_projection(output_projection(layer_list[b], half, b))
    record = dict(getattr(model.config, "layerscope_skipped_halves", None) or {})
    record[half] = blocks
    model.config.layerscope_skipped_halves = record
    return model


ACTIONS = (
    Action(
        key="skip_attention",
        order=60,
        apply=lambda model, value, ws, progress: skip_halves(model, "attention", value),
        describe=lambda value: "skip the attention of blocks " + ", ".join(map(str, value)),
    ),
    Action(
        key="skip_mlp",
        order=61,
        apply=lambda model, value, ws, progress: skip_halves(model, "mlp", value),
        describe=lambda value: "skip the feed-forward of blocks " + ", ".join(map(str, value)),
    ),
)
