"""Replacing a whole decoder block by a fitted affine map, as a change kind (``replace_linear``; METHODS.md §1, last
bullet; arXiv 2405.12250). The fit is :mod:`analysis.methods.least_squares`, the moments it needs
:mod:`analysis.capture.block_moments`, the module that replaces the block :class:`analysis.model.modules.LinearBlock`.

The block ``h_{b+1} = f_b(h_b)`` is replaced by ``h_{b+1} ≈ h_b W + c`` with ``W`` (``d×d``) and ``c`` fitted by
least squares on calibration tokens. Conventions:

* **Row convention**: token vectors are rows, ``H_in, H_out ∈ R^{N×d}``, the fit is ``H_in @ W + c ≈ H_out``.
  :class:`LinearBlock` stores it as ``nn.Linear`` (weight ``Wᵀ``, bias ``c``).
* **Fit residual** (``relative_residual``): ``||H_in W + c − H_out||_F / ||H_out − mean(H_out)||_F`` — the
  fraction of the output's spread around its mean that the map fails to explain (``sqrt(1 − R²)``); 0 is a perfect
  fit, 1 is no better than the constant mean.
* **Ridge**: ``ridge`` is relative: λ = ridge · tr(X̃ᵀX̃)/d with ``X̃`` the centred inputs; λ = 0 is plain least
  squares (minimum-norm solution when the inputs are rank deficient).
* Fit on the block's real input and output (:func:`collect_block_moments`), not on ``output_hidden_states``:
  for Llama-style models the last entry there has the final norm applied.

Replacing the block in the model (:func:`replace_decoder_layer`) keeps ``output_hidden_states`` and
generation working: the hidden-state recording hooks of transformers are moved to the new module, and
:class:`LinearBlock` writes a one-number-per-token placeholder into the KV cache slot of its ``layer_idx``, so the
cache length (read from layer 0 by transformers) stays right even when block 0 is replaced.
"""

from __future__ import annotations

from torch import nn

from analysis.capture.block_moments import (
    collect_block_moments,
    collect_moments_of_blocks,
)
from analysis.changes.base import Action, writable_record
from analysis.changes.low_rank import CompressionError, Progress, block_moments
from analysis.methods.least_squares import (
    LinearMapMoments,
    fit_linear_map,
    fit_linear_map_from_moments,
)
from analysis.methods.lowrank import decomposition_threads
from analysis.model.architecture import decoder_layers
from analysis.model.modules import LinearBlock, replace_decoder_layer

__all__ = [
    "LinearMapMoments",
    "fit_linear_map",
    "fit_linear_map_from_moments",
    "collect_block_moments",
    "collect_moments_of_blocks",
    "LinearBlock",
    "replace_decoder_layer",
]


def replace_value(value) -> tuple[list[int], float]:
    """``(blocks, ridge)`` from a ``replace_linear`` value (a list of blocks, or ``{"blocks", "ridge"}``)."""
    ridge = 0.0
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"blocks", "ridge"})
        if unknown:
            raise CompressionError(f"unknown replace_linear key(s) {', '.join(unknown)}; known: blocks, ridge")
        ridge = float(value.get("ridge", 0.0))
        value = value.get("blocks") or []
    blocks = [int(b) for b in value]
    dup = sorted({b for b in blocks if blocks.count(b) > 1})
    if dup:
        raise CompressionError(f"block {dup[0]} named more than once")
    if ridge < 0:
        raise CompressionError(f"ridge must be non-negative, got {ridge}")
    return sorted(blocks), ridge


def apply_replace_linear(model: nn.Module, value, ws=None, progress: Progress | None = None) -> nn.Module:
    """The registered ``replace_linear`` action: each chosen block becomes a fitted :class:`LinearBlock`."""
    blocks, ridge = replace_value(value)
    if ws is None:
        raise CompressionError("replacing blocks by linear maps needs calibration tokens: apply it on a workspace")
    _, layers = decoder_layers(model)
    n = len(layers)
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise CompressionError(
            f"block{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: the "
            f"model has blocks 0..{n - 1} (0-based)"
        )
    if not blocks:
        raise CompressionError("no blocks chosen to replace")
    c = ws.calibration
    bm = block_moments(ws.lm, ws.text, c.n_windows, c.window_len, ridge, progress=progress, load=True)
    moments = bm.load()
    weight = ws.lm.model.get_input_embeddings().weight
    residuals = {}
    for i, b in enumerate(blocks):
        with decomposition_threads():
            W, bias, residual = fit_linear_map_from_moments(moments[b], ridge)
        replace_decoder_layer(
            model, b, LinearBlock.from_map(W, bias, layer_idx=b, dtype=weight.dtype, device=weight.device)
        )
        residuals[b] = residual
        if progress:
            progress(i + 1, len(blocks), f"block {b} replaced (fit residual {residual:.3f})")
    d = weight.shape[1]
    writable_record(model)["replace_linear"] = {
        "blocks": blocks,
        "ridge": ridge,
        "fit_residual": {str(b): r for b, r in residuals.items()},
        "calibration": {
            "text": ws.text.name,
            "source": ws.text.source,
            "sha256": ws.text.sha256,
            "windows": c.n_windows,
            "window_len": c.window_len,
            "tokens": bm.tokens,
        },
        "parameters_per_block": d * d + d,
    }
    return model


def describe_replace_linear(value) -> str:
    try:
        blocks, _ = replace_value(value)
    except (CompressionError, TypeError, ValueError):
        return "replace blocks by linear maps"
    return "replace block" + ("s " if len(blocks) > 1 else " ") + ", ".join(map(str, blocks)) + " by linear maps"


ACTIONS = (Action(key="replace_linear", order=40, apply=apply_replace_linear, describe=describe_replace_linear),)
