"""The moments of each decoder block's input and output hidden states on calibration tokens (``Σ x``, ``Σ y``,
``Σ xᵀx``, ``Σ xᵀy``, ``Σ yᵀy``), gathered with forward hooks in one streamed pass over every block at once: what the
least-squares fit of a block's affine replacement (:mod:`analysis.methods.least_squares`) needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from analysis.capture.linear_inputs import _batch_parts
from analysis.errors import InputError
from analysis.jobs import (
    this_thread_only,  # a hook records only its own thread's passes (jobs share the model)
)
from analysis.methods.least_squares import LinearMapMoments
from analysis.model.architecture import decoder_layers


@torch.no_grad()
def collect_block_moments(
    model: nn.Module,
    block_index: int,
    batches: Iterable[Tensor | Mapping[str, Tensor]],
    progress: Callable[[int, int | None], None] | None = None,
) -> LinearMapMoments:
    """Stream the input/output moments of decoder block ``block_index`` (0-based) over calibration batches.

    Batches are ``input_ids`` tensors ``[b, T]`` or mappings with ``input_ids`` and an optional
    ``attention_mask`` (padding is left out). Reads the block's real input (first positional argument) and output
    (the returned tensor, or its first element if it returns a tuple).
    """
    return collect_moments_of_blocks(model, [block_index], batches, progress)[0]


@torch.no_grad()
def collect_moments_of_blocks(
    model: nn.Module,
    blocks: Iterable[int] | None,
    batches: Iterable[Tensor | Mapping[str, Tensor]],
    progress: Callable[[int, int | None], None] | None = None,
) -> list[LinearMapMoments]:
    """:func:`collect_block_moments` for several blocks (``None``: every block) in one pass over the batches.

    Returns one :class:`LinearMapMoments` per requested block, in the order given. Memory ``O(d²)`` per block.
    """
    _, layers = decoder_layers(model)
    chosen = list(range(len(layers))) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in chosen if not 0 <= b < len(layers)]
    if bad:
        raise InputError(f"block {bad[0]} is out of range [0, {len(layers)})")
    if not chosen:
        raise InputError("no blocks to collect moments for")
    moments: dict[int, LinearMapMoments] = {}
    state: dict[str, object] = {"mask": None}

    def make_hook(b: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            if b not in moments:
                moments[b] = LinearMapMoments.empty(h_in.shape[-1], h_out.shape[-1], device=h_in.device)
            moments[b].update(h_in, h_out, state["mask"])  # type: ignore[arg-type]

        return hook

    handles = [
        layers[b].register_forward_hook(this_thread_only(make_hook(b)), with_kwargs=True) for b in dict.fromkeys(chosen)
    ]
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(batches):
            input_ids, mask = _batch_parts(batch)
            kwargs: dict[str, object] = {"use_cache": False}
            if mask is not None:
                kwargs["attention_mask"] = mask.to(device)
            state["mask"] = mask
            model(input_ids.to(device), **kwargs)
            if progress is not None:
                progress(i + 1, total)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [b for b in chosen if b not in moments]
    if missing:
        raise InputError(f"block {missing[0]} never ran: no calibration batches")
    return [moments[b] for b in chosen]
