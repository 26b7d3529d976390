"""Where things are in a decoder: blocks, attention, feed-forward, their output projections, final norm, head.

Found by the model's structure, not by Llama's names: every view and change asks here instead of reading
``block.self_attn`` or ``block.mlp.down_proj`` itself. Each family's names (as in transformers 5):

============  ===================  ==========================  ============================  ================
family        attention (its out)  feed-forward (its out)      final norm                    head
============  ===================  ==========================  ============================  ================
Llama-like    self_attn (o_proj)   mlp (down_proj)             model.norm                    lm_head
GPT-2         attn (c_proj)        mlp (c_proj)  Conv1D        transformer.ln_f              lm_head
OPT           self_attn (out_proj) fc1/fc2 in the block (fc2)  model.decoder.final_layer_norm  lm_head
GPT-NeoX      attention (dense)    mlp (dense_4h_to_h)         gpt_neox.final_layer_norm     embed_out
Falcon/Bloom  self_attention       mlp (dense_4h_to_h)         transformer.ln_f              lm_head
              (dense)
GPT-J         attn (out_proj)      mlp (fc_out)                transformer.ln_f              lm_head
Phi-3         self_attn (o_proj)   mlp (down_proj; fused       model.norm                    lm_head
                                   gate_up_proj)
MoE           self_attn (o_proj)   mlp / block_sparse_moe:     model.norm                    lm_head
                                   experts, no single out
============  ===================  ==========================  ============================  ================

"Skipping" the attention or the feed-forward half of a block means making its **output projection** return
zeros (the residual is kept): that is exact for every family here, including those whose attention adds the
residual inside the module (Bloom) and those with a norm after each half (Gemma-2/3: norm(0) = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

try:  # GPT-2's projections are transformers' Conv1D (y = x W + b with W: in × out)
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())

_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_ATTENTION_OUT = ("o_proj", "c_proj", "out_proj", "dense")
_MLP = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
_MLP_OUT = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")
_MLP_IN_BLOCK = ("fc1", "fc2")  # OPT keeps its feed-forward in the block itself
_FINAL_NORM = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")
_HEADS = ("lm_head", "embed_out", "output")


class ArchitectureError(ValueError):
    """The model's structure lacks what a view or change needs; the message names the block and the part."""


@dataclass
class BlockParts:
    """The parts of one decoder block (``None`` where the family has no such part)."""

    attention: nn.Module | None
    attention_out: nn.Module | None
    mlp: nn.Module | None  # the feed-forward module; the block itself for OPT (fc1/fc2 directly in the block)
    mlp_out: nn.Module | None  # the feed-forward's last projection; None for mixture-of-experts
    moe: bool = False
    experts: list[nn.Module] = field(default_factory=list)
    attention_name: str | None = None  # names relative to the block, e.g. "self_attn.o_proj"
    attention_out_name: str | None = None
    mlp_name: str | None = None
    mlp_out_name: str | None = None

    def linears(self, block: nn.Module, group: str = "all") -> dict[str, nn.Module]:
        """Linear (``nn.Linear`` / GPT-2 ``Conv1D``) modules of ``group`` ("attn", "mlp", "all"), by relative name."""
        out = {}
        for name, mod in block.named_modules():
            if not isinstance(mod, LINEAR_TYPES) or not name:
                continue
            in_attn = self.attention_name is not None and (name == self.attention_name
                                                             or name.startswith(self.attention_name + "."))
            if group == "attn" and not in_attn:
                continue
            if group == "mlp" and in_attn:
                continue
            out[name] = mod
        return out


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str | None, nn.Module | None]:
    for n in names:
        m = getattr(module, n, None)
        if isinstance(m, nn.Module):
            return n, m
    return None, None


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def block_parts(block: nn.Module) -> BlockParts:
    """The attention and feed-forward parts of ``block`` and their output projections."""
    an, attn = _child(block, _ATTENTION)
    aon, aout = (None, None)
    if attn is not None:
        aon, aout = _child(attn, _ATTENTION_OUT)
        if aout is not None and not is_linear(aout):
            aon, aout = None, None
    mn, mlp = _child(block, _MLP)
    mon, mout, moe, experts = None, None, False, []
    if mlp is not None:
        ex = getattr(mlp, "experts", None)
        if ex is not None:
            moe = True
            experts = list(ex) if isinstance(ex, (nn.ModuleList, list)) else [ex]
        else:
            mon, mout = _child(mlp, _MLP_OUT)
            if mout is not None and not is_linear(mout):
                mon, mout = None, None
    elif all(isinstance(getattr(block, n, None), nn.Module) for n in _MLP_IN_BLOCK):  # OPT
        mn, mlp, mon, mout = "", block, "fc2", block.fc2
    return BlockParts(
        attention=attn, attention_out=aout, mlp=mlp, mlp_out=mout, moe=moe, experts=experts,
        attention_name=an, attention_out_name=f"{an}.{aon}" if an and aon else None,
        mlp_name=mn, mlp_out_name=(f"{mn}.{mon}" if mn else mon) if mon else None,
    )


def attention_output(block: nn.Module, index: int | None = None) -> nn.Module:
    """The attention's output projection, or :class:`ArchitectureError` naming what is missing."""
    parts = block_parts(block)
    if parts.attention_out is None:
        where = f"block {index}" if index is not None else type(block).__name__
        raise ArchitectureError(f"{where} ({type(block).__name__}) has no attention output projection "
                                f"(looked for {'/'.join(_ATTENTION)} . {'/'.join(_ATTENTION_OUT)})")
    return parts.attention_out


def mlp_output(block: nn.Module, index: int | None = None) -> nn.Module:
    """The feed-forward's output projection; mixture-of-experts blocks have none (one per expert)."""
    parts = block_parts(block)
    if parts.mlp_out is None:
        where = f"block {index}" if index is not None else type(block).__name__
        why = "a mixture of experts has one output projection per expert" if parts.moe else \
            f"looked for {'/'.join(_MLP)} . {'/'.join(_MLP_OUT)}"
        raise ArchitectureError(f"{where} ({type(block).__name__}) has no single feed-forward output projection: {why}")
    return parts.mlp_out


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block (``None`` if the family has none)."""
    from .models import block_list

    path = block_list(model)[0]
    owner = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    _, mod = _child(owner, _FINAL_NORM)
    if mod is None:
        base = getattr(model, "base_model", model)
        _, mod = _child(base, _FINAL_NORM)
    return mod


def output_head(model: nn.Module) -> nn.Module:
    """The output projection to the vocabulary (``lm_head``, GPT-NeoX's ``embed_out`` ...)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        _, head = _child(model, _HEADS)
    if head is None:
        raise ArchitectureError(f"{type(model).__name__} has no output head (lm_head)")
    return head


def output_head_name(model: nn.Module) -> str:
    head = output_head(model)
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ArchitectureError(f"{type(model).__name__}: the output head is not a named submodule")
