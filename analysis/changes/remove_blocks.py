"""Depth pruning and export of a checkpoint that plain ``transformers`` reloads (METHODS.md §8).

Removing blocks: the kept blocks stay in order, every attention module's ``layer_idx`` is renumbered (the KV
cache indexes layers by it), ``num_hidden_layers`` is set, and per-layer configuration lists of the old length
(``layer_types`` and the like) keep only the kept entries. The original model is left untouched: the pruned
model is a structural copy that *shares* the original's weight tensors (no second copy of the weights), so a
change to the pruned model must replace a parameter, never write into it.

Export: ``save_pretrained`` (safetensors) with the tokenizer and ``recipe.json``, written into a temporary sibling
directory and renamed, so an interrupted export leaves nothing half-written. The target is checked by
:func:`analysis.destinations.check`: a non-empty folder is refused unless ``overwrite=True``, and even then only a
folder LayerScope wrote is replaced. :func:`verify_export` reloads the folder with plain ``AutoModelForCausalLM`` and
compares logits with the in-memory model.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from torch import nn

from analysis.changes.base import Action
from analysis.errors import InputError
from analysis.model.architecture import find_blocks


class PruneError(InputError):
    """The requested change is impossible (the message says why)."""


#: no model has more blocks than this; a block number or range beyond it is refused before anything is built
MAX_BLOCK_INDEX = 100_000


def _block_number(b, what: str, forms: str) -> int:
    """A block number from a list (a recipe's JSON, a page): a whole number, never a fraction, a bool or a string."""
    if isinstance(b, bool) or not isinstance(b, (int, np.integer, float, np.floating)):
        raise PruneError(f"{what}: {b!r} is not a block number; give {forms}")
    if isinstance(b, (float, np.floating)) and not (math.isfinite(b) and float(b).is_integer()):
        raise PruneError(f"{what}: {b!r} is a fraction, not a block number; give {forms}")
    return int(b)


def parse_blocks(spec: str | Iterable[int], what: str = "blocks") -> list[int]:
    """``"12,13"``, ``"12-15"`` (inclusive, as typed) or ``"[12, 16)"`` → sorted block list; duplicates are an error.

    Anything else raises :class:`PruneError` naming ``what`` (the option, e.g. ``--remove``) and the forms allowed:
    fractions (``12.5``), bools, words, and numbers or ranges beyond :data:`MAX_BLOCK_INDEX`.
    """
    forms = "0-based block numbers as '12,13', '12-15' (inclusive) or '[12,16)'"
    if not isinstance(spec, str):
        try:
            items = list(spec)
        except TypeError:
            raise PruneError(f"{what}: {spec!r} is not a list of block numbers; give {forms}") from None
        blocks = [_block_number(b, what, forms) for b in items]
    else:
        s = spec.strip()
        blocks = []
        try:
            if s.startswith("[") and s.endswith(")"):
                a, b = s[1:-1].split(",")
                a, b = int(a), int(b)
                if b < a:
                    raise PruneError(f"{what}: the range {s!r} ends before it starts; give {forms}")
                if max(abs(a), abs(b)) > MAX_BLOCK_INDEX:
                    raise PruneError(f"{what}: {s!r} reaches beyond block {MAX_BLOCK_INDEX:,}; no model has that many")
                blocks = list(range(a, b))
            elif s:
                for part in s.split(","):
                    part = part.strip()
                    if not part:
                        continue
                    if "-" in part[1:]:
                        a, b = part.split("-", 1)
                        if int(b) < int(a):
                            raise PruneError(f"{what}: the range {part!r} ends before it starts; give {forms}")
                        if max(abs(int(a)), abs(int(b))) > MAX_BLOCK_INDEX:
                            raise PruneError(
                                f"{what}: {part!r} reaches beyond block {MAX_BLOCK_INDEX:,}; no model has that many"
                            )
                        blocks.extend(range(int(a), int(b) + 1))
                    else:
                        blocks.append(int(part))
        except ValueError as exc:
            if isinstance(exc, PruneError):
                raise
            raise PruneError(f"{what}: {spec!r} is not a block list; give {forms}") from None
    big = [b for b in blocks if abs(b) > MAX_BLOCK_INDEX]
    if big:
        raise PruneError(f"{what}: block {big[0]:,} is beyond any model (at most {MAX_BLOCK_INDEX:,} blocks)")
    dup = sorted(b for b, n in Counter(blocks).items() if n > 1)
    if dup:
        raise PruneError(f"block{'s' if len(dup) > 1 else ''} {', '.join(map(str, dup))} named more than once")
    return sorted(blocks)


def validate_removal(blocks: Sequence[int], n_blocks: int) -> list[int]:
    blocks = parse_blocks(blocks)
    if not blocks:
        raise PruneError("no blocks chosen to remove")
    bad = [b for b in blocks if b < 0 or b >= n_blocks]
    if bad:
        raise PruneError(
            f"block{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: the model "
            f"has blocks 0..{n_blocks - 1} (0-based)"
        )
    if len(blocks) >= n_blocks:
        raise PruneError(f"cannot remove all {n_blocks} blocks: at least one must remain")
    return blocks


def shallow_structural_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original's own tensors."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def remove_blocks(model: nn.Module, blocks: Sequence[int]) -> nn.Module:
    """A pruned copy of ``model`` without ``blocks`` (0-based); the original is not modified."""
    n = len(find_blocks(model))
    blocks = validate_removal(blocks, n)
    pruned = shallow_structural_copy(model)
    layer_list = find_blocks(pruned)
    keep = [i for i in range(n) if i not in set(blocks)]
    new_list = nn.ModuleList([layer_list[i] for i in keep])
    _replace_module_list(pruned, layer_list, new_list)
    for new_idx, block in enumerate(new_list):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    _trim_config(pruned.config, n, keep)
    return pruned


def _replace_module_list(root: nn.Module, old: nn.ModuleList, new: nn.ModuleList) -> None:
    for name, mod in root.named_modules():
        for child_name, child in mod.named_children():
            if child is old:
                setattr(mod, child_name, new)
                return
    raise PruneError("could not locate the decoder block list to replace")


#: Config lists that hold layer *indices* (not one entry per layer): renumbered, never trimmed by position.
_INDEX_LISTS = ("mlp_only_layers",)


def _trim_config(config, n_old: int, keep: list[int]) -> None:
    """Set the layer count and keep only the kept entries of per-layer lists (e.g. ``layer_types``).

    Mixture-of-experts layouts given by a rule (Qwen-MoE's ``decoder_sparse_step`` and ``mlp_only_layers``: which
    layers have a dense MLP) are rewritten for the new numbering: ``decoder_sparse_step = 1`` and
    ``mlp_only_layers`` = the new indices of the kept blocks that had a dense MLP, so every kept block is rebuilt
    with the feed-forward it had.
    """
    if isinstance(getattr(config, "mlp_only_layers", None), (list, tuple)) and hasattr(config, "decoder_sparse_step"):
        dense_old = set(config.mlp_only_layers)
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        n_experts = int(getattr(config, "num_experts", 0) or 0)
        dense_old |= {i for i in range(n_old) if not (n_experts > 0 and (i + 1) % step == 0)}
        config.mlp_only_layers = [new for new, old in enumerate(keep) if old in dense_old]
        config.decoder_sparse_step = 1
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, attr, None) == n_old:
            setattr(config, attr, len(keep))
    for attr, value in list(vars(config).items()):
        if (
            isinstance(value, (list, tuple))
            and len(value) == n_old
            and not attr.startswith("_")
            and attr not in _INDEX_LISTS
        ):
            setattr(config, attr, type(value)(value[i] for i in keep))
    for sub in ("text_config",):
        if hasattr(config, sub):
            _trim_config(getattr(config, sub), n_old, keep)


ACTIONS = (
    Action(
        key="remove_blocks",
        order=100,
        apply=lambda model, value, ws, progress: remove_blocks(model, value),
        describe=lambda value: "remove blocks " + ", ".join(map(str, value)),
    ),
)
