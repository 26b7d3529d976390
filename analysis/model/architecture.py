"""Where things are in a decoder: blocks, attention, feed-forward, their output projections, final norm, head.

Found by the model's structure, not by Llama's names: every view and change asks here instead of reading
``block.self_attn`` or ``block.mlp.down_proj`` itself. Checked on tiny random-weight models of every family below
(``tests/integration/test_families.py``; names as in transformers 5.23):

============  ===========================  ===============================  ==============================  =======
family        attention (its out proj.)    feed-forward (its out proj.)     final norm                      head
============  ===========================  ===============================  ==============================  =======
Llama-like    self_attn (o_proj)           mlp (down_proj)                  model.norm                      lm_head
GPT-2         attn (c_proj) Conv1D         mlp (c_proj) Conv1D              transformer.ln_f                lm_head
OPT           self_attn (out_proj)         fc1/fc2 in the block (fc2)       model.decoder.final_layer_norm  lm_head
GPT-NeoX      attention (dense)            mlp (dense_4h_to_h)              gpt_neox.final_layer_norm       lm_head
Falcon        self_attention (dense)       mlp (dense_4h_to_h)              transformer.ln_f                lm_head
Bloom         self_attention (dense)       mlp (dense_4h_to_h)              transformer.ln_f                lm_head
GPT-J         attn (out_proj)              mlp (fc_out)                     transformer.ln_f                lm_head
Phi-3         self_attn (o_proj; fused     mlp (down_proj; fused            model.norm                      lm_head
              qkv_proj)                    gate_up_proj)
Mixtral,      self_attn (o_proj)           mlp = sparse MoE block: router   model.norm                      lm_head
Qwen3-MoE                                  ``gate`` + ``experts`` (fused
                                           3-D gate_up_proj / down_proj
                                           tensors, not linear modules)
============  ===========================  ===============================  ==============================  =======

Llama-like: Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3 (text). GPT-NeoX checkpoints on disk name the head
``embed_out``; transformers 5 renames it to ``lm_head`` when loading (and back when saving).

"Skipping" the attention or the feed-forward half of a block means making its **output projection** return
zeros (the residual is kept): that is exact for every family here, including those whose attention adds the
residual inside the module (Bloom) and those with a norm after each half (Gemma-2/3: norm(0) = 0). A
mixture-of-experts block has no single output projection: skip the MoE block itself (its output is the whole
feed-forward contribution).

Linear layers are ``nn.Linear`` (and subclasses such as Falcon's ``FalconLinear``) and GPT-2's ``Conv1D``, which
computes ``y = x W + b`` with ``W`` stored *in × out* (the transpose of ``nn.Linear``'s). :func:`linear_weight`,
:func:`linear_dims` and :func:`set_linear_weight` hide the difference: they always speak ``out × in``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from analysis.errors import InputError, LayerScopeError
from analysis.jobs import this_thread_only

try:  # GPT-2's projections are transformers' Conv1D (y = x W + b with W: in × out)
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover
    Conv1D = None  # type: ignore[assignment,misc]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())

_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_ATTENTION_OUT = ("o_proj", "c_proj", "out_proj", "dense")
_MLP = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
_MLP_OUT = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")
_MLP_IN_BLOCK = ("fc1", "fc2")  # OPT keeps its feed-forward in the block itself
_FINAL_NORM = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")
_HEADS = ("lm_head", "embed_out", "output")

#: model types whose decoder blocks return a tuple ``(hidden_states, attention weights)`` that the model indexes
#: with ``[0]`` (transformers 5.23); every other family here returns the hidden-state tensor itself.
TUPLE_BLOCK_TYPES = frozenset({"falcon", "bloom", "gptj", "codegen", "gpt_neo", "mpt"})
#: model types whose blocks return the tensor (checked); others are probed once (see :func:`block_returns_tuple`).
TENSOR_BLOCK_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "phi3",
        "gpt2",
        "opt",
        "gpt_neox",
        "mixtral",
        "qwen3_moe",
        "qwen2_moe",
        "olmo",
        "olmo2",
        "granite",
        "starcoder2",
        "cohere",
        "phi",
    }
)


class ArchitectureError(InputError):
    """The model's structure lacks what a view or change needs; the message names the block and the part."""


@dataclass
class BlockParts:
    """The parts of one decoder block (``None`` where the family has no such part)."""

    attention: nn.Module | None
    attention_out: nn.Module | None
    mlp: nn.Module | None  # the feed-forward module; the block itself for OPT (fc1/fc2 directly in the block)
    mlp_out: nn.Module | None  # the feed-forward's last projection; None for mixture-of-experts
    moe: bool = False
    experts: list[nn.Module] = field(default_factory=list)  # the experts module(s) of a mixture of experts
    attention_name: str | None = None  # names relative to the block, e.g. "self_attn.o_proj"
    attention_out_name: str | None = None
    mlp_name: str | None = None  # "" for OPT (the block itself)
    mlp_out_name: str | None = None
    n_experts: int = 0

    def group_of(self, rel: str) -> str:
        """``"attn"``, ``"mlp"`` or ``"other"`` for a module name relative to the block."""
        if self.attention_name and (rel == self.attention_name or rel.startswith(self.attention_name + ".")):
            return "attn"
        if self.mlp_name == "":  # OPT: the feed-forward linears sit in the block itself
            if rel.split(".", 1)[0] in _MLP_IN_BLOCK:
                return "mlp"
        elif self.mlp_name and (rel == self.mlp_name or rel.startswith(self.mlp_name + ".")):
            return "mlp"
        return "other"

    def linears(self, block: nn.Module, group: str = "all") -> dict[str, nn.Module]:
        """Linear (``nn.Linear`` / GPT-2 ``Conv1D``) modules of ``group`` ("attn", "mlp", "other", "all"), by
        relative name, in module order. Experts stored as fused 3-D tensors are not linear modules."""
        out = {}
        for name, mod in block.named_modules():
            if not name or not is_linear(mod):
                continue
            if group != "all" and self.group_of(name) != group:
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
    """An ``nn.Linear`` (or subclass) or a GPT-2 ``Conv1D``."""
    return isinstance(module, LINEAR_TYPES)


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear layer (``nn.Linear``, ``Conv1D``, or anything with those
    attributes, e.g. a factorised linear)."""
    if is_conv1d(module):
        return int(module.nf), int(module.nx)
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return int(module.out_features), int(module.in_features)
    raise ArchitectureError(f"{type(module).__name__} is not a linear layer")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``out × in`` (``nn.Linear``'s layout; the transpose view of a ``Conv1D``'s)."""
    if is_conv1d(module):
        return module.weight.T
    if isinstance(module, nn.Linear):
        return module.weight
    raise ArchitectureError(f"{type(module).__name__} is not a linear layer")


def set_linear_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Give ``module`` a **new** weight Parameter holding ``weight`` (``out × in``); the old tensor is never written
    into (a structural copy may share it with the original model)."""
    old = module.weight
    w = weight.T if is_conv1d(module) else weight
    module.weight = nn.Parameter(w.to(dtype=old.dtype, device=old.device).contiguous(), requires_grad=old.requires_grad)


def block_parts(block: nn.Module) -> BlockParts:
    """The attention and feed-forward parts of ``block`` and their output projections."""
    an, attn = _child(block, _ATTENTION)
    aon, aout = (None, None)
    if attn is not None:
        aon, aout = _child(attn, _ATTENTION_OUT)
        if aout is not None and not is_linear(aout):
            aon, aout = None, None
    mn, mlp = _child(block, _MLP)
    mon, mout, moe, experts, n_experts = None, None, False, [], 0
    if mlp is not None:
        ex = getattr(mlp, "experts", None)
        if isinstance(ex, nn.Module):
            moe = True
            experts = list(ex) if isinstance(ex, nn.ModuleList) else [ex]
            n_experts = len(ex) if isinstance(ex, nn.ModuleList) else int(getattr(ex, "num_experts", 0) or 0)
        else:
            mon, mout = _child(mlp, _MLP_OUT)
            if mout is not None and not is_linear(mout):
                mon, mout = None, None
    elif all(is_linear(getattr(block, n, None)) for n in _MLP_IN_BLOCK):  # OPT
        mn, mlp, mon, mout = "", block, "fc2", block.fc2
    return BlockParts(
        attention=attn,
        attention_out=aout,
        mlp=mlp,
        mlp_out=mout,
        moe=moe,
        experts=experts,
        attention_name=an,
        attention_out_name=f"{an}.{aon}" if an and aon else None,
        mlp_name=mn,
        mlp_out_name=(f"{mn}.{mon}" if mn else mon) if mon else None,
        n_experts=n_experts,
    )


def _where(block: nn.Module, index: int | None) -> str:
    return f"block {index} ({type(block).__name__})" if index is not None else type(block).__name__


def attention_output(block: nn.Module, index: int | None = None) -> nn.Module:
    """The attention's output projection, or :class:`ArchitectureError` naming what is missing."""
    parts = block_parts(block)
    if parts.attention_out is None:
        raise ArchitectureError(
            f"{_where(block, index)} has no attention output projection "
            f"(looked for {'/'.join(_ATTENTION)} . {'/'.join(_ATTENTION_OUT)})"
        )
    return parts.attention_out


def mlp_output(block: nn.Module, index: int | None = None) -> nn.Module:
    """The feed-forward's output projection; mixture-of-experts blocks have none (one per expert)."""
    parts = block_parts(block)
    if parts.mlp_out is None:
        why = (
            (
                "a mixture of experts has one output projection per expert (skip or hook the MoE block "
                "itself, see feed_forward)"
            )
            if parts.moe
            else f"looked for {'/'.join(_MLP)} . {'/'.join(_MLP_OUT)}"
        )
        raise ArchitectureError(f"{_where(block, index)} has no single feed-forward output projection: {why}")
    return parts.mlp_out


def feed_forward(block: nn.Module, index: int | None = None) -> nn.Module:
    """The module whose output is the whole feed-forward contribution of the block: the output projection of a
    dense MLP, the sparse MoE block of a mixture of experts."""
    parts = block_parts(block)
    if parts.mlp_out is not None:
        return parts.mlp_out
    if parts.moe and parts.mlp is not None:
        return parts.mlp
    raise ArchitectureError(
        f"{_where(block, index)} has no feed-forward part (looked for {'/'.join(_MLP)} . {'/'.join(_MLP_OUT)})"
    )


def mlp_site(block: nn.Module, index: int | None = None) -> tuple[nn.Module, str]:
    """Where the MLP activation of AVSS and the geometry views is read: ``(module, "input" | "output")``.

    Dense MLP: the **input** of the output projection (the MLP's hidden activation, width = its intermediate
    size). Mixture of experts: each expert's hidden activation exists only for the tokens routed to it, so the
    site is the **output** of the MoE block (the routed experts' down projections, weighted and summed; width =
    the model width).
    """
    parts = block_parts(block)
    if parts.mlp_out is not None:
        return parts.mlp_out, "input"
    if parts.moe and parts.mlp is not None:
        return parts.mlp, "output"
    raise ArchitectureError(
        f"{_where(block, index)} has no feed-forward output projection for the MLP site "
        f"(looked for {'/'.join(_MLP)} . {'/'.join(_MLP_OUT)})"
    )


def attention_site(block: nn.Module, index: int | None = None) -> nn.Module:
    """The module whose **output** is the attention's contribution to the residual stream: its output projection
    (the same tensor as Llama's ``self_attn`` output; for Bloom, whose attention module adds the residual itself,
    the projection's output is the contribution alone)."""
    return attention_output(block, index)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block (``None`` if the family has none)."""
    path = block_list(model)[0]
    owner = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
    _, mod = _child(owner, _FINAL_NORM)
    if mod is None:
        base = getattr(model, "base_model", model)
        _, mod = _child(base, _FINAL_NORM)
    return mod


def output_head(model: nn.Module) -> nn.Module:
    """The output projection to the vocabulary (``lm_head``; on disk GPT-NeoX's is ``embed_out``)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        _, head = _child(model, _HEADS)
    if head is None:
        raise ArchitectureError(f"{type(model).__name__} has no output head (lm_head)")
    return head


def output_head_name(model: nn.Module) -> str:
    """The qualified name of the output head in the model (``lm_head`` for every family here)."""
    head = output_head(model)
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ArchitectureError(f"{type(model).__name__}: the output head is not a named submodule")


def head_is_tied(model: nn.Module) -> bool:
    """True when the output head shares its weight with the input embedding."""
    try:
        return output_head(model).weight is model.get_input_embeddings().weight
    except (ArchitectureError, AttributeError):
        return False


def block_returns_tuple(model: nn.Module) -> bool:
    """Whether the model's decoder blocks return ``(hidden_states, …)`` rather than the hidden-state tensor.

    Known for the families in :data:`TUPLE_BLOCK_TYPES` / :data:`TENSOR_BLOCK_TYPES`; any other family is probed
    once with a one-token forward pass (the answer is kept on the model).
    """
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type in TUPLE_BLOCK_TYPES:
        return True
    if model_type in TENSOR_BLOCK_TYPES:
        return False
    known = model.__dict__.get("_layerscope_block_tuple")
    if known is not None:
        return bool(known)
    _, blocks = block_list(model)
    seen: list[bool] = []
    handle = blocks[0].register_forward_hook(this_thread_only(lambda _m, _a, out: seen.append(isinstance(out, tuple))))
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=input_device(model)), use_cache=False)
    finally:
        handle.remove()
    model.__dict__["_layerscope_block_tuple"] = bool(seen and seen[0])
    return bool(seen and seen[0])


def describe(model: nn.Module) -> dict:
    """What this module found in ``model`` (for the model card, the README table and error messages)."""
    path, blocks = block_list(model)
    parts = block_parts(blocks[0])
    norm = final_norm(model)
    norm_name = next((n for n, m in model.named_modules() if m is norm), None) if norm is not None else None
    return {
        "blocks": f"{path} ({len(blocks)})",
        "attention": parts.attention_name,
        "attention_out": parts.attention_out_name,
        "mlp": ("fc1/fc2 in the block" if parts.mlp_name == "" else parts.mlp_name),
        "mlp_out": parts.mlp_out_name,
        "moe": parts.moe,
        "experts": parts.n_experts,
        "final_norm": norm_name,
        "head": output_head_name(model),
        "head_tied": head_is_tied(model),
        "linear_types": sorted({type(m).__name__ for m in blocks[0].modules() if is_linear(m)}),
    }


class ModelLoadError(LayerScopeError, RuntimeError):
    """A model cannot be loaded; the message says why in words a user can act on."""


def input_device(model: nn.Module) -> torch.device:
    """The device of the input embedding, also for a model dispatched with ``device_map`` (offloaded weights
    live on the ``meta`` device; their inputs go to the CPU)."""
    dmap = getattr(model, "hf_device_map", None)
    if dmap:
        emb = model.get_input_embeddings()
        names = [n for n, m in model.named_modules() if m is emb]
        for name in names:
            parts = name.split(".")
            for i in range(len(parts), -1, -1):
                key = ".".join(parts[:i])
                if key in dmap:
                    where = dmap[key]
                    if isinstance(where, int):
                        return torch.device(f"cuda:{where}")
                    return torch.device("cpu" if where in ("cpu", "disk") else where)
    w = model.get_input_embeddings().weight
    return torch.device("cpu") if w.device.type == "meta" else w.device


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found without knowing the architecture (the rule is :func:`block_list`)."""
    return block_list(model)[1]


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, module list)`` of the decoder blocks — the one rule every module uses.

    It is the shallowest ``nn.ModuleList`` whose length is the configured number of layers (Llama, Mistral,
    Qwen, Gemma: ``model.layers``; GPT-2: ``transformer.h``; OPT: ``model.decoder.layers`` ...); without a config,
    the shallowest non-empty one. A pruned model has its config updated, so the same rule finds its shorter list.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    n = None
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(cfg, attr, None) if cfg is not None else None
        if n is not None:
            break
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            depth = name.count(".")
            if best is None or depth < best[0]:
                best = (depth, name, mod)
    if best is None:
        raise ModelLoadError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best[1], best[2]


_ATTN_WORDS = ("attn", "attention")


_MLP_WORDS = ("mlp", "feed_forward", "ffn")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, module list)`` of the decoder blocks: :func:`analysis.model.architecture.block_list` (one rule for
    the whole project), raising ``ValueError`` when there is none."""
    try:
        return block_list(model)
    except ModelLoadError as exc:
        raise InputError(str(exc)) from None


def target_linears(
    model: nn.Module,
    targets: str | Sequence[str] = "all",
    blocks: Iterable[int] | None = None,
) -> list[str]:
    """Qualified names of the linear layers to truncate, block by block in model order.

    Linear layers are ``nn.Linear`` (and subclasses) and GPT-2's ``Conv1D`` (:data:`analysis.model.architecture.
    LINEAR_TYPES`). ``targets``:
        * ``"attn"`` — linears under the block's attention module (Llama: ``q_proj, k_proj, v_proj, o_proj``;
          GPT-2: ``c_attn, c_proj``; Phi-3: the fused ``qkv_proj, o_proj`` ...);
        * ``"mlp"`` — linears of the feed-forward (Llama: ``gate_proj, up_proj, down_proj``; OPT: ``fc1, fc2``
          in the block itself; GPT-NeoX/Falcon/Bloom: ``dense_h_to_4h, dense_4h_to_h`` ...);
        * ``"all"`` — every linear inside the blocks (never the LM head or the embeddings);
        * a sequence of names, each matched against the full name (``model.layers.3.mlp.down_proj``), the name
          relative to the block (``mlp.down_proj``) or the leaf name (``down_proj``); a name that matches nothing
          raises ``ValueError``.
    ``blocks``: 0-based block indices to restrict to (default: all blocks).

    Attention and feed-forward are found by structure (:func:`analysis.model.architecture.block_parts`). The experts of
    a mixture of experts are fused 3-D tensors, not linear layers: they are never targets (``"mlp"`` on a
    model whose every feed-forward is a mixture of experts raises ``ValueError`` saying so).
    """
    prefix, layers = decoder_layers(model)
    n_blocks = len(layers)
    if blocks is None:
        chosen = list(range(n_blocks))
    else:
        chosen = sorted(set(int(b) for b in blocks))
        bad = [b for b in chosen if not 0 <= b < n_blocks]
        if bad:
            raise InputError(f"block indices {bad} are out of range [0, {n_blocks})")
    if isinstance(targets, str):
        if targets not in ("attn", "mlp", "all"):
            raise InputError(f"unknown target group {targets!r}; use 'attn', 'mlp', 'all' or a list of names")
        explicit: list[str] | None = None
    else:
        explicit = [str(t) for t in targets]
        if not explicit:
            raise InputError("the list of target names is empty")
    names: list[str] = []
    matched: set[str] = set()
    moe_blocks: list[int] = []
    for b in chosen:
        block_prefix = f"{prefix}.{b}" if prefix else str(b)
        parts = block_parts(layers[b])
        if parts.moe:
            moe_blocks.append(b)
        for rel, module in layers[b].named_modules():
            if not rel or not is_linear(module):
                continue
            full = f"{block_prefix}.{rel}"
            if explicit is not None:
                leaf = rel.rsplit(".", 1)[-1]
                hits = [t for t in explicit if t in (full, rel, leaf)]
                if hits:
                    matched.update(hits)
                    names.append(full)
                continue
            if targets == "all" or parts.group_of(rel) == targets:
                names.append(full)
    experts_note = ""
    if moe_blocks:
        experts_note = (
            f"; the feed-forward of block{'s' if len(moe_blocks) > 1 else ''} "
            f"{_ranges(moe_blocks)} is a mixture of experts whose experts are fused 3-D tensors, not "
            "linear layers (low rank applies to the attention and dense-MLP linears only)"
        )
    if explicit is not None:
        missing = [t for t in explicit if t not in matched]
        if missing:
            raise InputError(f"no linear layer named {', '.join(missing)} in the chosen blocks{experts_note}")
    if not names:
        raise InputError(f"no linear layers match target {targets!r} in blocks {_ranges(chosen)}{experts_note}")
    return names


def _ranges(blocks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"``."""
    out: list[str] = []
    for b in blocks:
        if out and b == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{b}"
        else:
            out.append(str(b))
    return ", ".join(out)
