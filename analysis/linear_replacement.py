"""Replacing a whole decoder block by a fitted affine map (METHODS.md §1, last bullet; arXiv 2405.12250).

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

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .jobs import this_thread_only  # a hook records only its own thread's passes (jobs share the model)
from .lowrank import _batch_parts, decoder_layers

__all__ = [
    "LinearMapMoments",
    "fit_linear_map",
    "fit_linear_map_from_moments",
    "collect_block_moments",
    "collect_moments_of_blocks",
    "LinearBlock",
    "replace_decoder_layer",
]


@dataclass
class LinearMapMoments:
    """Sufficient statistics for a least-squares affine fit, accumulated in float64 (memory ``O(d²)``).

    ``sum_in = Σ x``, ``sum_out = Σ y``, ``in_in = Σ x xᵀ``, ``in_out = Σ x yᵀ``, ``out_sq = Σ ||y||²``, ``n = N``.
    """

    sum_in: Tensor
    sum_out: Tensor
    in_in: Tensor
    in_out: Tensor
    out_sq: float = 0.0
    n: int = 0

    @classmethod
    def empty(cls, d_in: int, d_out: int | None = None, device: torch.device | str | None = None) -> LinearMapMoments:
        d_out = d_in if d_out is None else d_out
        z = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(d_in, **z), torch.zeros(d_out, **z), torch.zeros(d_in, d_in, **z), torch.zeros(d_in, d_out, **z))

    def update(self, h_in: Tensor, h_out: Tensor, mask: Tensor | None = None) -> None:
        """Add paired token vectors ``h_in[..., d_in]``, ``h_out[..., d_out]`` (``mask[...]`` keeps true tokens)."""
        if h_in.shape[:-1] != h_out.shape[:-1]:
            raise ValueError(f"inputs {tuple(h_in.shape)} and outputs {tuple(h_out.shape)} are not paired")
        X = h_in.detach().reshape(-1, h_in.shape[-1])
        Y = h_out.detach().reshape(-1, h_out.shape[-1])
        if mask is not None:
            keep = mask.reshape(-1).to(device=X.device, dtype=torch.bool)
            X, Y = X[keep], Y[keep]
        X = X.to(device=self.in_in.device, dtype=torch.float64)
        Y = Y.to(device=self.in_in.device, dtype=torch.float64)
        self.sum_in += X.sum(0)
        self.sum_out += Y.sum(0)
        self.in_in.addmm_(X.T, X)
        self.in_out.addmm_(X.T, Y)
        self.out_sq += float((Y * Y).sum())
        self.n += int(X.shape[0])


def _solve(moments: LinearMapMoments, ridge: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(W, c, centred Gram, centred cross moment)`` of the least-squares affine fit."""
    if moments.n < 2:
        raise ValueError("at least two tokens are needed to fit an affine map")
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    mu_x = moments.sum_in / moments.n
    mu_y = moments.sum_out / moments.n
    Cxx = moments.in_in - moments.n * torch.outer(mu_x, mu_x)
    Cxy = moments.in_out - moments.n * torch.outer(mu_x, mu_y)
    Cxx = 0.5 * (Cxx + Cxx.T)
    d = Cxx.shape[0]
    if ridge > 0:
        lam = ridge * float(torch.trace(Cxx)) / d
        W = torch.linalg.solve(Cxx + lam * torch.eye(d, dtype=Cxx.dtype, device=Cxx.device), Cxy)
    else:
        # gelsy (complete orthogonal factorisation) gives the same minimum-norm solution as gelsd, ~30x faster
        W = torch.linalg.lstsq(Cxx, Cxy, driver="gelsy" if Cxx.device.type == "cpu" else None).solution
    c = mu_y - mu_x @ W
    return W, c, Cxx, Cxy


def fit_linear_map_from_moments(moments: LinearMapMoments, ridge: float = 0.0) -> tuple[Tensor, Tensor, float]:
    """``(W, c, relative_residual)`` from streamed moments; see the module docstring for the conventions.

    The residual is computed from the moments (``||Ỹ||² − 2 tr(WᵀC_xy) + tr(WᵀC_xx W)``), accurate to about
    ``1e-7`` relative in float64; :func:`fit_linear_map` on arrays computes it directly instead.
    """
    W, c, Cxx, Cxy = _solve(moments, ridge)
    mu_y = moments.sum_out / moments.n
    spread = moments.out_sq - moments.n * float(mu_y @ mu_y)
    residual_sq = spread - 2.0 * float((W * Cxy).sum()) + float(((Cxx @ W) * W).sum())
    relative = math.sqrt(max(residual_sq, 0.0) / spread) if spread > 0 else 0.0
    return W, c, relative


def fit_linear_map(H_in: Tensor, H_out: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor, float]:
    """Least-squares affine map ``H_in @ W + c ≈ H_out`` on paired rows ``[N, d_in]``, ``[N, d_out]``.

    Returns ``W`` (``d_in×d_out``) and ``c`` (``d_out``) in float64, and
    ``relative_residual = ||H_in W + c − H_out||_F / ||H_out − mean(H_out)||_F``. ``ridge`` is relative (module
    docstring). Numpy arrays are accepted.
    """
    X = torch.as_tensor(H_in).to(torch.float64)
    Y = torch.as_tensor(H_out).to(torch.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"expected paired 2-D arrays, got {tuple(X.shape)} and {tuple(Y.shape)}")
    moments = LinearMapMoments.empty(X.shape[1], Y.shape[1])
    moments.update(X, Y)
    W, c, _, _ = _solve(moments, ridge)
    spread = float(torch.linalg.matrix_norm(Y - Y.mean(0)))
    residual = float(torch.linalg.matrix_norm(X @ W + c - Y))
    return W, c, (residual / spread if spread > 0 else 0.0)


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
        raise ValueError(f"block {bad[0]} is out of range [0, {len(layers)})")
    if not chosen:
        raise ValueError("no blocks to collect moments for")
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

    handles = [layers[b].register_forward_hook(this_thread_only(make_hook(b)), with_kwargs=True) for b in dict.fromkeys(chosen)]
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
        raise ValueError(f"block {missing[0]} never ran: no calibration batches")
    return [moments[b] for b in chosen]


class LinearBlock(nn.Module):
    """A decoder block replaced by ``h ↦ h W + c`` (stored as ``self.linear``: weight ``Wᵀ``, bias ``c``).

    Call signature of a transformers 5.x decoder layer: ``hidden_states`` first, then any positional or keyword
    arguments (``attention_mask``, ``position_ids``, ``past_key_values`` / ``layer_past``, ``use_cache``,
    ``position_embeddings``, ``alibi`` ...), which are ignored except the cache. Returns a tensor, as
    ``LlamaDecoderLayer.forward`` does in transformers 5.23, or ``(tensor, None)`` when ``returns_tuple`` is set
    (Falcon, Bloom, GPT-J: their models take ``[0]`` of each block's output; :func:`replace_decoder_layer` sets it
    from :func:`analysis.architecture.block_returns_tuple`).

    It holds no attention, so it caches nothing real; but transformers reads the cache length from layer 0, so when
    a cache is passed (``past_key_values``, ``layer_past``, or GPT-2's second positional argument) and
    ``layer_idx`` is set, a zero placeholder key/value of shape ``[batch, 1, T, 1]`` is appended to its cache slot
    (a few bytes per token), keeping ``get_seq_length()`` right.
    """

    def __init__(
        self,
        hidden_size: int,
        layer_idx: int | None = None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layer_idx = layer_idx
        self.returns_tuple = False
        self.linear = nn.Linear(hidden_size, hidden_size, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_map(
        cls,
        W: Tensor,
        c: Tensor | None,
        layer_idx: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LinearBlock:
        """Block computing ``h @ W + c`` (``W``: ``d×d`` in the row convention of :func:`fit_linear_map`)."""
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise ValueError(f"a block replacement must map width d to d, got W of shape {tuple(W.shape)}")
        dtype = dtype or torch.float32
        block = cls(W.shape[0], layer_idx=layer_idx, bias=c is not None, device=device, dtype=dtype)
        with torch.no_grad():
            block.linear.weight.copy_(W.T.to(dtype))
            if c is not None:
                block.linear.bias.copy_(c.to(dtype))
        return block

    def forward(self, hidden_states: Tensor, *args: object, past_key_values: object = None, layer_past: object = None,
                **kwargs: object) -> Tensor | tuple[Tensor, None]:
        cache = past_key_values if past_key_values is not None else layer_past
        if cache is None and args and hasattr(args[0], "update") and hasattr(args[0], "get_seq_length"):
            cache = args[0]  # GPT-2 passes its cache as the second positional argument
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            b, t = hidden_states.shape[0], hidden_states.shape[1]
            placeholder = hidden_states.new_zeros(b, 1, t, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        out = self.linear(hidden_states)
        return (out, None) if self.returns_tuple else out

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, layer_idx={self.layer_idx}"


def _owning_pretrained_model(model: nn.Module, layers: nn.ModuleList) -> nn.Module | None:
    """The deepest transformers ``PreTrainedModel`` inside ``model`` that contains ``layers``."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return None
    owner = None
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and any(m is layers for m in module.modules()):
            owner = module  # modules() is pre-order: later hits are deeper
    return owner


def replace_decoder_layer(model: nn.Module, block_index: int, new_layer: nn.Module) -> nn.Module:
    """Put ``new_layer`` in place of decoder block ``block_index`` (0-based); return the old block.

    Keeps the other blocks' ``layer_idx`` (and so their KV-cache slots) unchanged. Before swapping, the
    transformers hooks that record ``output_hidden_states`` are installed (if the model uses them) and every
    forward hook of the old block is moved to the new one, so ``hidden_states`` keeps ``L+1`` entries with the
    replaced block's output in its place. (Handles of hooks registered on the old block will not remove them
    from the new one.) If ``new_layer`` has a ``layer_idx`` attribute that is ``None``, it is set to
    ``block_index``; an ``attention_type`` attribute of the old block is copied over.
    """
    _, layers = decoder_layers(model)
    if not 0 <= block_index < len(layers):
        raise ValueError(f"block {block_index} is out of range [0, {len(layers)})")
    owner = _owning_pretrained_model(model, layers)
    if owner is not None:
        try:
            from transformers.utils.output_capturing import maybe_install_capturing_hooks

            maybe_install_capturing_hooks(owner)
        except ImportError:  # pragma: no cover - older transformers record hidden states without hooks
            pass
    old = layers[block_index]
    for attr in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        getattr(new_layer, attr).update(getattr(old, attr))
    if hasattr(new_layer, "layer_idx") and new_layer.layer_idx is None:
        new_layer.layer_idx = block_index
    if hasattr(new_layer, "returns_tuple"):
        from .architecture import block_returns_tuple

        new_layer.returns_tuple = block_returns_tuple(owner if owner is not None else model)
    if hasattr(old, "attention_type") and not hasattr(new_layer, "attention_type"):
        new_layer.attention_type = old.attention_type  # some models pick the mask by the layer's attention type
    layers[block_index] = new_layer
    return old
