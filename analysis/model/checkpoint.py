"""Saving and loading a changed model whatever it contains: factorised matrices, linear blocks, fewer blocks.

Three kinds of change leave a model that ``save_pretrained`` writes but plain ``from_pretrained`` cannot rebuild:

* **factorised** matrices (:class:`~analysis.model.modules.FactorisedLinear`, ``x ↦ B(A(x))``): ``config.json`` records
  ``"layerscope_factorised": {qualified linear name: rank}``;
* **linear blocks** (:class:`~analysis.model.modules.LinearBlock`, a decoder block replaced by ``h ↦ h W + c``):
  ``config.json`` records ``"layerscope_linear_blocks": [block indices]`` (0-based, in the saved model's
  numbering); the weights are ``<blocks>.<i>.linear.weight`` / ``.bias``. A linear map cannot be written as a
  Llama decoder layer (its RMSNorm and gated MLP are not linear), so there is no plain-transformers form of it;
* removed blocks need nothing: ``num_hidden_layers`` and the per-layer lists are already updated in the config.

:func:`save_checkpoint` writes the ``dense`` form (every factorised matrix multiplied out into an ``nn.Linear``:
plain ``AutoModelForCausalLM`` reloads it unless it has linear blocks) or the ``factorised`` form (smaller file).
:func:`load_checkpoint` reads any of them: without LayerScope keys in ``config.json`` it is exactly
``AutoModelForCausalLM.from_pretrained``. Plain ``from_pretrained`` on a folder *with* those keys would warn about
missing weights and initialise them at random — :func:`needs_project_loader` tells the two apart.

Layers: :mod:`analysis.methods.lowrank` (the decompositions) ← :mod:`analysis.changes.truncation` (the in-memory modules) ←
this module (save and load; atomic folders through :mod:`analysis.destinations`) ← :mod:`analysis.changes.low_rank` (the actions on a workspace);
none of them imports a later one.

In your own code (this module needs only torch, transformers and safetensors besides its sibling modules)::

    from analysis.model.checkpoint import load_checkpoint
    model = load_checkpoint("path/to/export")            # FactorisedLinear / LinearBlock inside, weights exact
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from analysis.errors import InputError, MissingFile
from analysis.methods.lowrank import check_rank, decomposition_threads, svd_truncate
from analysis.model.architecture import decoder_layers, is_conv1d, is_linear, linear_dims, linear_weight
from analysis.model.modules import CONFIG_KEY as FACTORISED_KEY
from analysis.model.modules import (
    RANK_ATTR,
    FactorisedLinear,
    LinearBlock,
    factorised_ranks,
    replace_decoder_layer,
)

__all__ = [
    "FACTORISED_KEY",
    "LINEAR_BLOCKS_KEY",
    "FORMS",
    "RANK_ATTR",
    "linear_blocks",
    "needs_project_loader",
    "dense_copy",
    "factorised_copy",
    "save_checkpoint",
    "load_checkpoint",
    "save_dense",
    "save_factorised",
    "load_factorised",
    "is_factorised_checkpoint",
]

LINEAR_BLOCKS_KEY = "layerscope_linear_blocks"
FORMS = ("dense", "factorised")


def linear_blocks(model: nn.Module) -> list[int]:
    """0-based indices of the decoder blocks of ``model`` that are :class:`LinearBlock` s."""
    _, layers = decoder_layers(model)
    return [i for i, block in enumerate(layers) if isinstance(block, LinearBlock)]


def needs_project_loader(directory: str | Path) -> bool:
    """True when ``directory/config.json`` records factorised matrices or linear blocks."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    return bool(config.get(FACTORISED_KEY) or config.get(LINEAR_BLOCKS_KEY))


def _structural_copy(model: nn.Module) -> nn.Module:
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


@torch.no_grad()
def dense_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no factorised matrix; otherwise a structural copy (sharing every other tensor)
    in which each :class:`FactorisedLinear` is multiplied out into an ``nn.Linear`` holding ``B @ A``."""
    if not factorised_ranks(model):
        return model
    out = _structural_copy(model)
    for name in factorised_ranks(out):
        module: FactorisedLinear = out.get_submodule(name)  # type: ignore[assignment]
        dense = module.to_linear()
        dense.train(module.training)
        out.set_submodule(name, dense)
    return out


@torch.no_grad()
def factorised_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` in which every dense low-rank ``nn.Linear`` (one carrying the attribute
    ``layerscope_rank = k``, set by the ``low_rank`` action) becomes a :class:`FactorisedLinear` of rank ``k``.

    Exact up to rounding: ``W'`` already has rank ``≤ k``, so its truncated SVD at ``k`` is ``W'`` itself. The
    attribute travels with the module, so it stays right after blocks are removed and renumbered. ``model`` itself
    is returned when nothing is left to factorise.
    """
    todo = {
        name: int(module.__dict__[RANK_ATTR])
        for name, module in model.named_modules()
        if is_linear(module) and module.__dict__.get(RANK_ATTR) is not None
    }
    if not todo:
        return model
    out = _structural_copy(model)
    for name, k in todo.items():
        linear = out.get_submodule(name)
        check_rank(*linear_dims(linear), k)
        with decomposition_threads():
            B, A = svd_truncate(linear_weight(linear), k)
        replacement = FactorisedLinear.from_factors(B, A, linear.bias, conv1d=is_conv1d(linear))
        replacement.train(linear.training)
        out.set_submodule(name, replacement)
    return out


def _edit_config(directory: Path, ranks: Mapping[str, int], blocks: list[int]) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key in (FACTORISED_KEY, LINEAR_BLOCKS_KEY):
        config.pop(key, None)
    if ranks:
        config[FACTORISED_KEY] = dict(ranks)
    if blocks:
        config[LINEAR_BLOCKS_KEY] = list(blocks)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_checkpoint(model: nn.Module, directory: str | Path, form: str = "dense") -> None:
    """``save_pretrained`` of ``model`` into an existing ``directory`` in the given ``form``, with the config keys
    that :func:`load_checkpoint` needs (the caller makes the write atomic, e.g. :func:`surgery.export_checkpoint`).

    ``form="dense"`` multiplies factorised matrices out; ``form="factorised"`` keeps them and factorises every
    dense low-rank ``nn.Linear`` (see :func:`factorised_copy`); it refuses a model with nothing low-rank.
    The model passed in is never changed.
    """
    if form not in FORMS:
        raise InputError(f"export form must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "dense":
        out = dense_copy(model)
    else:
        out = factorised_copy(model)
        if not factorised_ranks(out):
            raise InputError("this model has no low-rank matrices to store factorised; export it as 'dense'")
    directory = Path(directory)
    out.save_pretrained(directory, safe_serialization=True)  # type: ignore[operator]
    ranks, blocks = factorised_ranks(out), linear_blocks(out)
    _edit_config(directory, ranks, blocks)
    if ranks or blocks:
        _write_module_state(out, directory)


def _write_module_state(model: nn.Module, directory: Path) -> None:
    """Replace the weights ``save_pretrained`` wrote by the model's own state dict, under its in-memory names.

    ``save_pretrained`` applies the family's checkpoint conversion in reverse (GPT-NeoX's ``lm_head`` is written
    ``embed_out``; Mixtral's fused experts are split into ``experts.<i>.w1/w2/w3``), which only
    ``from_pretrained`` undoes. A checkpoint with factorised matrices or linear blocks is read back by
    :func:`load_checkpoint` with ``load_state_dict``, so it stores exactly the names of the rebuilt model (tied
    parameters once, under their first name).
    """
    from safetensors.torch import save_file

    for old in list(directory.glob("model*.safetensors")) + [directory / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    tied = _tied_parameter_names(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


@torch.no_grad()
def load_checkpoint(
    directory: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint` (or any plain Hugging Face causal-LM folder).

    Without LayerScope keys in ``config.json`` this is ``AutoModelForCausalLM.from_pretrained``. Otherwise the model
    is built from its config, the recorded blocks become :class:`LinearBlock` s and the recorded matrices
    :class:`FactorisedLinear` s, then every weight is loaded; a missing or unexpected weight raises ``ValueError``
    (never a half-random model). ``trust_remote_code`` is the user's choice (default off: a folder whose config
    names code of its own is refused, never run).
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    directory = Path(directory)
    if not needs_project_loader(directory):
        model = AutoModelForCausalLM.from_pretrained(
            directory, trust_remote_code=trust_remote_code, **({"dtype": dtype} if dtype else {})
        )
        if device is not None:
            model.to(device)
        return model.eval()
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    ranks: dict[str, int] = dict(getattr(config, FACTORISED_KEY, None) or {})
    blocks = [int(b) for b in (getattr(config, LINEAR_BLOCKS_KEY, None) or [])]
    state: dict[str, Tensor] = {}
    for file in _checkpoint_files(directory):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                state[key] = handle.get_tensor(key)
    if dtype is None:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    hidden = int(model.get_input_embeddings().weight.shape[1])
    for b in blocks:
        replace_decoder_layer(model, b, LinearBlock(hidden, layer_idx=b, bias=True, dtype=dtype))

    for name, rank in ranks.items():
        original = model.get_submodule(name)
        if not is_linear(original):
            raise InputError(f"config names {name!r} but the rebuilt model has a {type(original).__name__} there")
        out_features, in_features = linear_dims(original)
        model.set_submodule(
            name,
            FactorisedLinear(
                in_features,
                out_features,
                int(rank),
                bias=original.bias is not None,
                dtype=dtype,
                conv1d=is_conv1d(original),
            ),
        )
    model.tie_weights()
    result = model.load_state_dict(state, strict=False)
    tied = _tied_parameter_names(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise InputError(
            f"checkpoint {directory} does not match the rebuilt model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    if device is not None:
        model.to(device)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _write_extra_files(directory: Path, extra_files: Mapping[str, str | bytes] | None) -> None:
    for rel, content in (extra_files or {}).items():
        path = directory / rel
        if directory.resolve() not in path.resolve().parents:
            raise InputError(f"extra file {rel!r} would land outside the export directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def save_dense(
    model: nn.Module,
    directory: str | Path,
    tokenizer: object | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) of a dense-truncated model, atomically; reloads with plain transformers.

    Refuses a model that still contains :class:`FactorisedLinear` (call :func:`densify` first, or use
    :func:`save_factorised`). ``extra_files`` (relative path → content) are written into the same directory,
    e.g. the recipe.
    """
    if factorised_ranks(model):
        raise InputError("the model contains FactorisedLinear modules; densify() it or use save_factorised()")
    return _save_atomically(model, directory, "dense", tokenizer, overwrite, extra_files)


def save_factorised(
    model: nn.Module,
    directory: str | Path,
    tokenizer: object | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Save a model containing :class:`FactorisedLinear` modules so that the file holds ``A``/``B`` only.

    The weights go to ``model.safetensors`` via ``save_pretrained`` (keys ``<name>.A.weight``,
    ``<name>.B.weight``, ``<name>.B.bias``); ``config.json`` gains ``"layerscope_factorised": {name: rank}``.
    Reload with :func:`load_factorised`. Atomic, never overwrites a non-empty directory unless ``overwrite``.
    """
    if not factorised_ranks(model):
        raise InputError("the model has no FactorisedLinear modules; use save_dense()")
    return _save_atomically(model, directory, "factorised", tokenizer, overwrite, extra_files)


def _save_atomically(
    model: nn.Module,
    directory: str | Path,
    form: str,
    tokenizer: object | None,
    overwrite: bool,
    extra_files: Mapping[str, str | bytes] | None,
) -> Path:
    """:func:`save_checkpoint` (weights and config keys) plus tokenizer and extra files, all in one atomic folder
    written through :mod:`analysis.destinations` (only a folder LayerScope wrote is ever replaced)."""
    from analysis import destinations

    dest = destinations.check(directory, overwrite=overwrite, what="checkpoint folder", option="overwrite=True")
    with destinations.writing(dest, what=f"{form} checkpoint") as tmp:
        save_checkpoint(model, tmp, form)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        _write_extra_files(tmp, extra_files)
    return Path(directory)


def is_factorised_checkpoint(directory: str | Path) -> bool:
    """True when ``directory/config.json`` records factorised ranks (load it with :func:`load_factorised`)."""
    path = Path(directory) / "config.json"
    return path.is_file() and bool(json.loads(path.read_text()).get(FACTORISED_KEY))


def _checkpoint_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in dict.fromkeys(weight_map.values())]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise MissingFile(f"no model.safetensors (or index) in {directory}")


@torch.no_grad()
def load_factorised(
    directory: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_factorised`: config → model → FactorisedLinear swaps → weights.

    ``dtype`` defaults to the dtype stored in the checkpoint. Missing weights other than tied ones, or
    unexpected keys, raise ``ValueError``: a factorised checkpoint never loads half-initialised.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    ranks: dict[str, int] = dict(getattr(config, FACTORISED_KEY, None) or {})
    if not ranks:
        raise InputError(f"{directory} is not a factorised checkpoint (no {FACTORISED_KEY!r} in config.json)")
    return load_checkpoint(directory, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def _tied_parameter_names(model: nn.Module) -> set[str]:
    """Parameter names that share storage with another parameter (e.g. a tied ``lm_head.weight``)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied
