"""The modules a change puts inside a model, and nothing else: they must load with the model, so they live here.

* :class:`FactorisedLinear` — a linear layer stored as two factors ``x ↦ B(A(x))`` (low-rank truncation in
  factorised form, METHODS.md §6); ``RANK_ATTR`` marks a dense truncated weight with its rank, ``CONFIG_KEY`` is
  the ``config.json`` entry that lists factorised matrices; :func:`factorised_ranks` reads them back.
* :class:`LinearBlock` — a decoder block replaced by a fitted affine map ``h ↦ h W + c`` (METHODS.md §1, last
  bullet), and :func:`replace_decoder_layer`, which swaps one block of a model for another module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from analysis.errors import InputError
from analysis.methods.lowrank import check_rank
from analysis.model.architecture import block_returns_tuple, decoder_layers


class LinearBlock(nn.Module):
    """A decoder block replaced by ``h ↦ h W + c`` (stored as ``self.linear``: weight ``Wᵀ``, bias ``c``).

    Call signature of a transformers 5.x decoder layer: ``hidden_states`` first, then any positional or keyword
    arguments (``attention_mask``, ``position_ids``, ``past_key_values`` / ``layer_past``, ``use_cache``,
    ``position_embeddings``, ``alibi`` ...), which are ignored except the cache. Returns a tensor, as
    ``LlamaDecoderLayer.forward`` does in transformers 5.23, or ``(tensor, None)`` when ``returns_tuple`` is set
    (Falcon, Bloom, GPT-J: their models take ``[0]`` of each block's output; :func:`replace_decoder_layer` sets it
    from :func:`analysis.model.architecture.block_returns_tuple`).

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
            raise InputError(f"a block replacement must map width d to d, got W of shape {tuple(W.shape)}")
        dtype = dtype or torch.float32
        block = cls(W.shape[0], layer_idx=layer_idx, bias=c is not None, device=device, dtype=dtype)
        with torch.no_grad():
            block.linear.weight.copy_(W.T.to(dtype))
            if c is not None:
                block.linear.bias.copy_(c.to(dtype))
        return block

    def forward(
        self,
        hidden_states: Tensor,
        *args: object,
        past_key_values: object = None,
        layer_past: object = None,
        **kwargs: object,
    ) -> Tensor | tuple[Tensor, None]:
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
        raise InputError(f"block {block_index} is out of range [0, {len(layers)})")
    owner = _owning_pretrained_model(model, layers)
    if owner is not None:
        try:
            from transformers.utils.output_capturing import (
                maybe_install_capturing_hooks,
            )

            maybe_install_capturing_hooks(owner)
        except ImportError:  # pragma: no cover - older transformers record hidden states without hooks
            pass
    old = layers[block_index]
    for attr in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        getattr(new_layer, attr).update(getattr(old, attr))
    if hasattr(new_layer, "layer_idx") and new_layer.layer_idx is None:
        new_layer.layer_idx = block_index
    if hasattr(new_layer, "returns_tuple"):
        new_layer.returns_tuple = block_returns_tuple(owner if owner is not None else model)
    if hasattr(old, "attention_type") and not hasattr(new_layer, "attention_type"):
        new_layer.attention_type = old.attention_type  # some models pick the mask by the layer's attention type
    layers[block_index] = new_layer
    return old


#: Attribute of an ``nn.Linear`` whose weight is a dense low-rank ``W'`` (its rank): stored exactly as ``B·A``.
RANK_ATTR = "layerscope_rank"


#: Key in ``config.json`` holding ``{qualified linear name: rank}`` of a factorised checkpoint.
CONFIG_KEY = "layerscope_factorised"


class FactorisedLinear(nn.Module):
    """``y = B(A(x))``: ``A = Linear(n → k, bias=False)``, ``B = Linear(k → m, bias=<as the original>)``.

    Replaces an ``nn.Linear(n → m)`` (or a GPT-2 ``Conv1D`` of the same shape: ``conv1d=True`` remembers it, so
    :meth:`to_linear` gives back a ``Conv1D``) whose weight is approximated by ``B.weight @ A.weight``
    (``m×k`` · ``k×n``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        conv1d: bool = False,
    ) -> None:
        super().__init__()
        check_rank(out_features, in_features, rank)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.conv1d = bool(conv1d)
        self.A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.B = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, B: Tensor, A: Tensor, bias: Tensor | None = None, conv1d: bool = False) -> FactorisedLinear:
        """Module with ``B.weight = B`` (``m×k``), ``A.weight = A`` (``k×n``) and the given output bias."""
        if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
            raise InputError(f"factors do not chain: B {tuple(B.shape)}, A {tuple(A.shape)}")
        module = cls(
            A.shape[1], B.shape[0], A.shape[0], bias=bias is not None, device=A.device, dtype=A.dtype, conv1d=conv1d
        )
        with torch.no_grad():
            module.A.weight.copy_(A)
            module.B.weight.copy_(B)
            if bias is not None:
                module.B.bias.copy_(bias)
        return module

    @property
    def bias(self) -> Tensor | None:
        return self.B.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.B(self.A(x))

    def dense_weight(self) -> Tensor:
        """``B @ A`` as one ``m×n`` matrix."""
        return self.B.weight @ self.A.weight

    def to_linear(self) -> nn.Module:
        """An ``nn.Linear`` with weight ``B @ A`` and the same bias (a GPT-2 ``Conv1D`` holding ``(B @ A)ᵀ`` when it
        replaced one, so that plain transformers reloads the saved weights)."""
        w = self.A.weight
        if self.conv1d:
            from transformers.pytorch_utils import Conv1D

            conv = Conv1D(self.out_features, self.in_features).to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                conv.weight.copy_(self.dense_weight().T)
                if self.B.bias is not None:
                    conv.bias.copy_(self.B.bias)
                else:
                    conv.bias.zero_()
            return conv
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.B.bias is not None, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.B.bias is not None:
                linear.bias.copy_(self.B.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}" + (
            ", conv1d=True" if self.conv1d else ""
        )


def factorised_ranks(model: nn.Module) -> dict[str, int]:
    """``{qualified name: rank}`` of every :class:`FactorisedLinear` in ``model``."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, FactorisedLinear)}
