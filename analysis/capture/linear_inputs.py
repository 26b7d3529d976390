"""Calibration statistics of the inputs of linear layers, gathered with forward hooks in one streamed pass
(METHODS.md §6): per matrix the Gram matrix ``X Xᵀ`` and ``Σ|x|`` that ASVD, SVD-LLM and NSVD need
(:class:`~analysis.methods.lowrank.CalibrationStats`). A hook records only its own thread's passes (jobs share the
model). A layer-by-layer model (:mod:`analysis.model.sequential`) gets the same hooks on its module tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from analysis.errors import InputError
from analysis.jobs import (
    this_thread_only,  # a hook records only its own thread's passes (jobs share the model)
)
from analysis.methods.lowrank import CalibrationStats


def _is_linear(module: nn.Module) -> bool:
    from analysis.model.architecture import is_linear

    return is_linear(module)


def _batch_parts(batch: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch.get("attention_mask")
    raise TypeError(f"a calibration batch must be an input_ids tensor or a mapping with 'input_ids', got {type(batch)}")


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    linear_names: Sequence[str],
    batches: Iterable[Tensor | Mapping[str, Tensor]],
    progress: Callable[[int, int | None], None] | None = None,
    device: torch.device | str | None = None,
    stats: CalibrationStats | None = None,
) -> CalibrationStats:
    """Run ``model(input_ids)`` on every batch and accumulate the input statistics of the named linears.

    ``batches`` yields ``input_ids`` tensors ``[b, T]`` or mappings with ``input_ids`` and an optional
    ``attention_mask`` (padding tokens are then left out of the statistics). ``progress(done, total)`` is called
    after each batch (``total`` is ``len(batches)`` when it has one). ``device`` holds the accumulators (default:
    the device of each linear's input). Pass ``stats`` to continue accumulating into earlier statistics.

    Memory is one ``n×n`` float64 Gram per input site. On the first forward pass a linear that receives the very
    same tensor object as the previously hooked linear (``q/k/v_proj``, ``gate/up_proj``) joins its site; later
    passes check that this still holds. Hooks are always removed, even on error.
    """
    sequential = getattr(model, "sequential", False)  # a layer-by-layer model: hooks on its module tree
    modules = dict((model.skeleton if sequential else model).named_modules())
    for name in linear_names:
        if name not in modules:
            raise InputError(f"model has no module named {name!r}")
        if not _is_linear(modules[name]):
            raise InputError(f"{name!r} is a {type(modules[name]).__name__}, not a linear layer")
    stats = stats if stats is not None else CalibrationStats()
    state: dict[str, object] = {"last_x": None, "last_name": None, "mask": None}

    def make_hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if not args:
                raise RuntimeError(f"{name} was called without a positional input; cannot record it")
            x = args[0]
            last_x, last_name = state["last_x"], state["last_name"]
            if name not in stats:
                if last_x is x and last_name is not None:
                    stats._join_site(name, last_name)  # noqa: SLF001 (same module family)
                else:
                    stats.add_site([name], x.shape[-1], device=device if device is not None else x.device)
            if stats._is_site_owner(name):  # noqa: SLF001
                stats[name].update(x, state["mask"])  # type: ignore[arg-type]
            elif not (last_x is x and last_name in stats.sharing_input(name)):
                raise RuntimeError(
                    f"{name} was recorded as sharing its input with {stats.sharing_input(name)[0]}, "
                    "but this forward pass gave it a different tensor"
                )
            state["last_x"], state["last_name"] = x, name

        return hook

    handles = [modules[name].register_forward_pre_hook(this_thread_only(make_hook(name))) for name in linear_names]
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if sequential:
        try:  # block after block, every batch through each block: each site sums the batches in the same order
            ids = [_batch_parts(b)[0] for b in batches]
            if any(_batch_parts(b)[1] is not None for b in batches):
                raise InputError("layer by layer, calibration batches cannot carry an attention mask")
            model.run(ids, progress=(lambda d, t, m: progress(d, t)) if progress is not None else None)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in linear_names if name not in stats]
        if missing:
            raise RuntimeError(f"these linears never ran during calibration: {missing}")
        return stats
    first_param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(batches):
            input_ids, mask = _batch_parts(batch)
            input_ids = input_ids.to(first_param.device)
            kwargs: dict[str, object] = {"use_cache": False}
            if mask is not None:
                mask = mask.to(first_param.device)
                kwargs["attention_mask"] = mask
            state["mask"] = mask
            model(input_ids, **kwargs)
            state["last_x"] = state["last_name"] = None
            if progress is not None:
                progress(i + 1, total)
    finally:
        state["last_x"] = state["last_name"] = state["mask"] = None
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in linear_names if name not in stats]
    if missing:
        raise RuntimeError(f"these linears never ran during calibration: {missing}")
    return stats
