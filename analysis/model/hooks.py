"""Where activations are read in a decoder block, and the forward hooks that read them.

A *site* (:data:`analysis.methods.avss.SITES`) is ``residual`` (the block's output), ``attention`` (the output of the
attention's output projection) or ``mlp`` (the input of the feed-forward's output projection; for a mixture of
experts the MoE block's output). :func:`site_hook` finds the module and the side (input or output) for a block;
:func:`hook_site_activations` attaches hooks that pass each activation to a callback and returns the handles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from analysis.errors import InputError
from analysis.jobs import this_thread_only
from analysis.methods.avss import SITES


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, found by structure (:func:`analysis.model.architecture.block_list`: ``model.layers``
    for Llama-like models, ``transformer.h`` for GPT-2/Falcon/Bloom/GPT-J, ``gpt_neox.layers``,
    ``model.decoder.layers`` for OPT ...)."""
    from analysis.model.architecture import ModelLoadError, block_list

    try:
        return block_list(model)[1]
    except ModelLoadError as exc:
        raise InputError(str(exc)) from None


def site_hook(block: torch.nn.Module, site: str, index: int) -> tuple[torch.nn.Module, str]:
    """``(module, "input" | "output")``: where ``site`` is read in ``block`` (see :data:`SITES`).

    ``"residual"``: the block's output; ``"attention"``: the output of the attention's output projection (its
    contribution to the residual stream, the same tensor as Llama's ``self_attn`` output); ``"mlp"``: the input
    of the feed-forward's output projection (the MLP hidden activation: ``down_proj``, GPT-2's ``mlp.c_proj``,
    ``dense_4h_to_h``, OPT's ``fc2`` ...) — for a **mixture of experts**, whose hidden activations exist per
    expert only for the tokens routed to it, the output of the MoE block (the experts' weighted down projections,
    summed). Found by :mod:`analysis.model.architecture`; a block without the part raises ``ValueError`` naming it.
    """
    from analysis.model import architecture as arch

    if site == "residual":
        return block, "output"
    try:
        if site == "attention":
            return arch.attention_site(block, index), "output"
        if site == "mlp":
            return arch.mlp_site(block, index)
    except arch.ArchitectureError as exc:
        raise InputError(f"the {site} site: {exc}") from None
    raise InputError(f"unknown site {site!r}; choose from {SITES}")


def site_modules(model: torch.nn.Module, site: str, blocks: torch.nn.ModuleList | None = None) -> list[torch.nn.Module]:
    """The module to hook in each block for ``site`` (see :func:`site_hook`; read its output, or for the MLP
    site of a dense MLP its input)."""
    return [m for m, _ in site_hooks(model, site, blocks)]


def site_hooks(
    model: torch.nn.Module, site: str, blocks: torch.nn.ModuleList | None = None
) -> list[tuple[torch.nn.Module, str]]:
    """:func:`site_hook` of every block: ``[(module, "input" | "output"), …]``."""
    if site not in SITES:
        raise InputError(f"unknown site {site!r}; choose from {SITES}")
    blocks = decoder_blocks(model) if blocks is None else blocks
    return [site_hook(block, site, i) for i, block in enumerate(blocks)]


def hook_site_activations(
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module], site: str, callback: Any
) -> list[torch.utils.hooks.RemovableHandle]:
    """Register hooks that call ``callback(block_index, activations)`` with the ``site`` activations of every block
    on each forward pass, always as ``[batch, seq, width]``: families that flatten the tokens inside the block
    (OPT's ``fc1``/``fc2`` see ``[batch·seq, width]``) are reshaped with the block's own input shape.
    Returns the handles (remove them when done)."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    shapes: dict[int, tuple[int, int]] = {}
    try:
        for index, block in enumerate(blocks):
            module, kind = site_hook(block, site, index)

            def remember(_m: torch.nn.Module, args: tuple, kwargs: dict, index: int = index) -> None:
                h = args[0] if args else kwargs.get("hidden_states")
                if isinstance(h, torch.Tensor) and h.ndim == 3:
                    shapes[index] = (int(h.shape[0]), int(h.shape[1]))

            def feed(t: torch.Tensor, index: int) -> None:
                shape = shapes.get(index)
                if t.ndim == 2 and shape is not None and t.shape[0] == shape[0] * shape[1]:
                    t = t.reshape(shape[0], shape[1], t.shape[-1])
                callback(index, t)

            handles.append(block.register_forward_pre_hook(this_thread_only(remember), with_kwargs=True))
            if kind == "input":
                handles.append(
                    module.register_forward_pre_hook(
                        this_thread_only(lambda _m, args, index=index: feed(_first_tensor(args), index))
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        this_thread_only(lambda _m, _args, output, index=index: feed(_first_tensor(output), index))
                    )
                )
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _first_tensor(value: Any) -> torch.Tensor:
    """A module output (tensor, or tuple/list whose first element is the tensor) as a tensor."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"cannot read an activation tensor from a {type(value).__name__}")


@contextmanager
def removed_after(handles: Iterable[RemovableHandle]) -> Iterator[list[RemovableHandle]]:
    """The one way LayerScope attaches hooks: ``with removed_after([m.register_forward_hook(f), …]):`` — every
    handle is removed when the block ends, whether it ends normally or by an exception."""
    handles = list(handles)
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
