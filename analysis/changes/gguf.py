"""Export a saved checkpoint folder to one GGUF file (llama.cpp, Ollama, LM Studio), and check a folder's
``config.json`` against what vLLM's loader reads.

:func:`write_gguf` reads a plain Hugging Face checkpoint folder (``config.json``, safetensors weights,
``tokenizer.json``) and writes one ``.gguf`` file with the ``gguf`` package (the writer llama.cpp's own
converter uses). What it does, family by family, is what llama.cpp's ``convert_hf_to_gguf.py`` does, so that
llama.cpp runs the file and ``transformers``' GGUF reader (``from_pretrained(..., gguf_file=...)``) reads it back:

* tensor names come from gguf's own table (:func:`gguf.get_tensor_name_map` for the family's ``MODEL_ARCH``);
* Llama and Mistral (llama.cpp architecture ``llama``): the rows of ``q_proj``/``k_proj`` are reordered from
  Hugging Face's rotate-half layout to the interleaved pairs llama.cpp's rope expects (transformers' reader undoes
  exactly this); Qwen2, Qwen3 and Gemma 3 use NeoX rope in llama.cpp and need no reordering;
* Gemma 3: every ``*norm.weight`` is stored as ``w + 1`` (llama.cpp's RMSNorm multiplies by the weight, Gemma's
  by ``1 + w``); the reader subtracts the 1 again;
* tied embeddings: no ``output.weight`` (llama.cpp then uses ``token_embd`` for the head);
* tokenizer: a byte-level BPE ``tokenizer.json`` (GPT-2 style: SmolLM2, Llama 3, Qwen) is written as llama.cpp's
  ``gpt2`` model with the pre-tokenizer name llama.cpp knows for its splitting rule; a BPE with byte fallback
  (SentencePiece converted to ``tokenizer.json``: Llama 2, Mistral, Gemma) as the ``llama`` (SentencePiece) model
  with scores taken from the merge order. Special token ids, the BOS/EOS flags, merges and the chat template come
  from gguf's :class:`gguf.SpecialVocab`.

Quantisation (``qtype``): every one-dimensional tensor (norms, biases) stays F32, as in llama.cpp's converter;
matrices are written in ``qtype``; a matrix whose rows do not split into whole quantisation blocks falls back
to F16. For the 4- and 5-bit types the embedding and the output head are written as Q8_0 (llama-quantize also keeps
them at higher precision).

What llama.cpp cannot run the same way is refused up front by :func:`check_exportable`, with one message:
factorised matrices or linear blocks (LayerScope keys in ``config.json``), a family outside
:func:`supported_families`, weights whose decoder layers disagree with ``num_hidden_layers``, a rope scaling
llama.cpp's converter does not express, and a Gemma 3 whose attention layout is not llama.cpp's fixed one (every
sixth layer full attention, the others sliding) -- which is what removing blocks from the middle of a Gemma 3
produces.

Known differences that are not refused: llama.cpp's ``llama`` architecture has no sliding window, so a Mistral
with ``sliding_window`` set attends to the whole context (identical up to the window's length). Reading the file
back with transformers 5.23 (``from_pretrained(..., gguf_file=...)``) takes Qwen3's ``head_dim`` and Gemma 3's
``query_pre_attn_scalar`` from its class defaults (128 and 256; the real models use those values), ignores
``rope_freqs`` (Llama 3.1 rope scaling) and the smollm digit splitting, and fails on a ``llama`` file whose
``general.name`` is exactly ``mistral``; llama.cpp reads all of these from the file.

:func:`vllm_config_problems` lists, in words, what in ``config.json`` disagrees with the weights or with itself in
ways vLLM's loader trips over (layer count, per-layer lists, sliding window, tied head, shapes); an empty list means
consistent.

This module needs only numpy, torch, safetensors, transformers and gguf, and from LayerScope only its error base
class. Every exporting command (``--gguf``) and the pages' export forms reach it through
:func:`analysis.workflow.variants.export_variant`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.cache import atomic_file
from analysis.errors import InputError

__all__ = [
    "GGUFExportError",
    "SUPPORTED_QTYPES",
    "supported_families",
    "check_exportable",
    "write_gguf",
    "vllm_config_problems",
]

#: ``config.json`` keys of LayerScope checkpoints that plain loaders cannot rebuild (see analysis.checkpoint).
FACTORISED_KEY = "layerscope_factorised"
LINEAR_BLOCKS_KEY = "layerscope_linear_blocks"


class GGUFExportError(InputError):
    """The folder cannot be exported to GGUF; the message says why in words a user can act on."""


#: qtype → (GGML type name for the matrices, llama.cpp file type name).
_QTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
#: The quantisation types :func:`write_gguf` writes (all that gguf 0.19's ``gguf.quants`` can quantise to and
#: llama.cpp runs on every backend; the K-quants are only de-quantised by gguf.quants, not quantised).
SUPPORTED_QTYPES: tuple[str, ...] = tuple(_QTYPES)
_LOW_BIT = ("q5_1", "q5_0", "q4_1", "q4_0")


@dataclass(frozen=True)
class _Family:
    arch: str  # name of the gguf.MODEL_ARCH member
    classes: tuple[str, ...]  # the transformers classes (config "architectures") of this family
    permute_qk: bool  # llama.cpp's "llama" rope wants interleaved q/k rows
    norm_shift: float  # added to every *norm.weight (Gemma's 1 + w)


_FAMILIES: dict[str, _Family] = {
    "llama": _Family("LLAMA", ("LlamaForCausalLM",), True, 0.0),
    "mistral": _Family("LLAMA", ("MistralForCausalLM",), True, 0.0),
    "qwen2": _Family("QWEN2", ("Qwen2ForCausalLM",), False, 0.0),
    "qwen3": _Family("QWEN3", ("Qwen3ForCausalLM",), False, 0.0),
    "gemma3_text": _Family("GEMMA3", ("Gemma3ForCausalLM",), False, 1.0),
}

#: llama.cpp's Gemma 3 (llama-model.cpp): every sixth layer is full attention, and sliding layers use rope base 1e4.
_GEMMA3_PATTERN = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def supported_families() -> dict[str, str]:
    """``{transformers model_type: GGUF architecture}`` for the families :func:`write_gguf` exports."""
    import gguf

    return {mt: gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, f.arch)] for mt, f in _FAMILIES.items()}


# --- reading a folder without loading the model ---------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GGUFExportError(f"{path.parent} has no {path.name}, so it is not a saved checkpoint ({what})") from None
    except (OSError, ValueError) as exc:
        raise GGUFExportError(f"{path} cannot be read ({what}): {exc}") from None
    if not isinstance(data, dict):
        raise GGUFExportError(f"{path} is not a JSON object ({what})")
    return data


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "the safetensors index").get("weight_map") or {}
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


def _weight_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str, Path]]:
    """``{tensor name: (shape, safetensors dtype, file)}`` read from the files' headers only."""
    out: dict[str, tuple[tuple[int, ...], str, Path]] = {}
    for f in _weight_files(folder):
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
        except (OSError, ValueError) as exc:
            raise GGUFExportError(f"{f} is not a readable safetensors file: {exc}") from None
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (tuple(int(d) for d in info["shape"]), str(info["dtype"]), f)
    return out


def _layer_indices(names) -> set[int]:
    return {int(m.group(1)) for n in names if (m := _LAYER_RE.match(n))}


def _text_config(raw: dict) -> dict:
    """The language model's part of a config (a multimodal config nests it under ``text_config``)."""
    sub = raw.get("text_config")
    return sub if isinstance(sub, dict) and "num_hidden_layers" in sub else raw


def _auto_config(folder: Path):
    """transformers' view of ``config.json`` (class defaults filled in), or the reason it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True), None
    except Exception as exc:  # noqa: BLE001 - any failure is reported in words
        text = str(exc).strip().splitlines()
        return None, (text[0] if text else type(exc).__name__)


def _rope(cfg, layer_type: str = "full_attention") -> dict:
    """The rope parameters of ``layer_type`` layers as a dict with at least ``rope_theta`` and ``rope_type``."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    params = dict(params) if isinstance(params, dict) else {}
    scaling = getattr(cfg, "rope_scaling", None)
    if not params and isinstance(scaling, dict):
        params = dict(scaling)
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _head_dim(cfg) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else int(cfg.hidden_size) // int(cfg.num_attention_heads)


# --- vLLM consistency -----------------------------------------------------------------------------------------

_LAYER_TYPE_VALUES = {"full_attention", "sliding_attention", "chunked_attention", "linear_attention"}
#: Per-layer lists (one entry per decoder layer) and lists of layer indices that some families' configs carry.
_PER_LAYER_LISTS = ("layer_types", "no_rope_layers")
_INDEX_LISTS = ("mlp_only_layers", "full_attn_idxs")


def vllm_config_problems(folder: str | Path) -> list[str]:
    """What in ``folder/config.json`` vLLM's loader would trip over; ``[]`` when the config is consistent.

    Checked against the safetensors headers (no weights are read): ``architectures`` is set (to the family's
    class); ``num_hidden_layers`` equals the number of decoder layers in the weights (numbered 0..n-1);
    ``layer_types`` and other per-layer lists have ``num_hidden_layers`` entries and known values, layer-index lists
    stay below it; a sliding layer has a positive ``sliding_window``; Gemma 3's ``sliding_window_pattern`` and
    Qwen's ``max_window_layers`` agree with ``layer_types``; ``tie_word_embeddings`` agrees with the presence of
    ``lm_head.weight``; the embedding, attention and MLP shapes agree with the sizes in the config; no LayerScope
    keys (factorised matrices, linear blocks) that plain loaders cannot rebuild.
    """
    folder = Path(folder)
    try:
        raw_top = _read_json(folder / "config.json", "the model configuration")
    except GGUFExportError as exc:
        return [str(exc)]
    problems: list[str] = []
    raw = _text_config(raw_top)
    model_type = raw.get("model_type") or raw_top.get("model_type")

    archs = raw_top.get("architectures")
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        problems.append('"architectures" is not set: vLLM picks the model class from it (e.g. ["LlamaForCausalLM"])')
    elif model_type in _FAMILIES and archs[0] not in _FAMILIES[model_type].classes:
        problems.append(
            f'"architectures" is {archs} but model_type {model_type!r} is {" or ".join(_FAMILIES[model_type].classes)}'
        )
    for key, what in ((FACTORISED_KEY, "factorised matrices"), (LINEAR_BLOCKS_KEY, "linear blocks")):
        if raw_top.get(key):
            problems.append(
                f'"{key}" records {what}: vLLM (like plain transformers) builds ordinary layers and '
                "would not load them; export the dense form"
            )

    try:
        shapes = {n: s for n, (s, _, _) in _weight_shapes(folder).items()}
    except GGUFExportError as exc:
        return problems + [str(exc)]
    if not shapes:
        return problems + [f"{folder} holds no safetensors weights"]
    if raw is not raw_top:  # multimodal: the language model's weights sit under a prefix; compare on the suffix
        shapes = {re.sub(r"^(?:model\.)?language_model\.", "model.", n): s for n, s in shapes.items()}

    n_layers = raw.get("num_hidden_layers")
    found = _layer_indices(shapes)
    if not isinstance(n_layers, int) or n_layers <= 0:
        problems.append(f"num_hidden_layers is {n_layers!r}, not a positive whole number")
        n_layers = None
    elif found and found != set(range(n_layers)):
        if found == set(range(len(found))):
            problems.append(
                f"num_hidden_layers is {n_layers} but the weights hold {len(found)} decoder layers "
                f"(model.layers.0..{len(found) - 1})"
            )
        else:
            missing = sorted(set(range(max(found) + 1)) - found)
            problems.append(
                f"the weights' decoder layers are not numbered 0..n-1 (missing {missing[:8]}); "
                f"num_hidden_layers is {n_layers}"
            )

    layer_types = raw.get("layer_types")
    if n_layers is not None:
        for key in _PER_LAYER_LISTS:
            value = raw.get(key)
            if isinstance(value, list) and len(value) != n_layers:
                problems.append(f"{key} has {len(value)} entries but num_hidden_layers is {n_layers}")
        for key in _INDEX_LISTS:
            value = raw.get(key)
            if isinstance(value, list) and any(not isinstance(i, int) or not 0 <= i < n_layers for i in value):
                problems.append(f"{key} names layers outside 0..{n_layers - 1}: {value}")
    if isinstance(layer_types, list):
        unknown = sorted({str(t) for t in layer_types} - _LAYER_TYPE_VALUES)
        if unknown:
            problems.append(f"layer_types holds unknown attention kinds {unknown}")
        if "sliding_attention" in layer_types:
            window = raw.get("sliding_window")
            if not (isinstance(window, int) and window > 0):
                problems.append(f"layer_types has sliding layers but sliding_window is {window!r}")
        pattern = raw.get("sliding_window_pattern")  # Gemma 2/3 hub configs carry it beside layer_types
        if model_type in ("gemma3_text", "gemma3", "gemma2") and isinstance(pattern, int) and pattern > 0:
            implied = [
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(len(layer_types))
            ]
            if implied != list(layer_types):
                problems.append(
                    f"sliding_window_pattern {pattern} and layer_types disagree (loaders that read the "
                    "pattern would give other layers full attention); drop sliding_window_pattern"
                )
        if raw.get("use_sliding_window") and isinstance(raw.get("max_window_layers"), int):
            mwl = raw["max_window_layers"]
            implied = ["sliding_attention" if i >= mwl else "full_attention" for i in range(len(layer_types))]
            if implied != list(layer_types):
                problems.append(
                    f"use_sliding_window with max_window_layers {mwl} implies other layer_types than the ones listed"
                )
    if raw.get("use_sliding_window") and not (isinstance(raw.get("sliding_window"), int) and raw["sliding_window"] > 0):
        problems.append(f"use_sliding_window is true but sliding_window is {raw.get('sliding_window')!r}")

    cfg, why = _auto_config(folder)
    if cfg is None:
        problems.append(f"transformers cannot read config.json: {why}")
        return problems
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    has_head = "lm_head.weight" in shapes
    if tied and has_head:
        problems.append(
            "tie_word_embeddings is true but the weights hold lm_head.weight: vLLM ties the head to the "
            "embedding and ignores it; set tie_word_embeddings false or drop lm_head.weight"
        )
    elif not tied and not has_head:
        problems.append(
            "tie_word_embeddings is false but the weights hold no lm_head.weight: vLLM would have no "
            "output head; set tie_word_embeddings true"
        )
    problems += _shape_problems(cfg, shapes)
    return problems


def _shape_problems(cfg, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    out: list[str] = []
    emb = shapes.get("model.embed_tokens.weight")
    vocab, hidden = getattr(cfg, "vocab_size", None), getattr(cfg, "hidden_size", None)
    if emb is None:
        out.append("the weights hold no model.embed_tokens.weight")
    elif len(emb) == 2 and (emb[0] != vocab or emb[1] != hidden):
        out.append(f"model.embed_tokens.weight is {list(emb)} but vocab_size x hidden_size is [{vocab}, {hidden}]")
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if not (heads and hidden):
        return out
    kv = kv or heads
    hd = _head_dim(cfg)
    expected = {
        "self_attn.q_proj.weight": heads * hd,
        "self_attn.k_proj.weight": kv * hd,
        "self_attn.v_proj.weight": kv * hd,
        "mlp.gate_proj.weight": getattr(cfg, "intermediate_size", None),
        "mlp.up_proj.weight": getattr(cfg, "intermediate_size", None),
    }
    for suffix, rows in expected.items():
        for i in sorted(_layer_indices(shapes)):
            s = shapes.get(f"model.layers.{i}.{suffix}")
            if s is not None and rows and s[0] != rows:
                out.append(f"model.layers.{i}.{suffix} has {s[0]} rows but the config implies {rows}")
                break
    return out


# --- checks before export -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    """What :func:`check_exportable` found: the family, the resolved configuration and the weights' headers."""

    folder: Path
    model_type: str
    family: _Family
    config: Any  # transformers PretrainedConfig
    weights: dict[str, tuple[tuple[int, ...], str, Path]]
    tokenizer: dict  # tokenizer.json

    @property
    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))


def check_exportable(folder: str | Path, qtype: str = "f16") -> ExportPlan:
    """Refuse, with one message (:class:`GGUFExportError`), what :func:`write_gguf` cannot export faithfully.

    Returns the plan :func:`write_gguf` follows.
    """
    folder = Path(folder)
    problems = _export_problems(folder, qtype)
    if isinstance(problems, ExportPlan):
        return problems
    raise GGUFExportError(f"cannot export {folder} to GGUF: " + "; ".join(problems))


def _export_problems(folder: Path, qtype: str) -> ExportPlan | list[str]:
    if qtype not in _QTYPES:
        return [f"unknown qtype {qtype!r}; use one of {', '.join(SUPPORTED_QTYPES)}"]
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    try:
        raw = _read_json(folder / "config.json", "the model configuration")
    except GGUFExportError as exc:
        return [str(exc)]
    if raw.get(FACTORISED_KEY):
        return [
            "it holds factorised matrices (config.json records layerscope_factorised), which llama.cpp cannot "
            "run as such; export the dense form (save_checkpoint(..., form='dense')) and convert that"
        ]
    if raw.get(LINEAR_BLOCKS_KEY):
        return [
            "it holds linear blocks (config.json records layerscope_linear_blocks), which have no llama.cpp "
            "form (a linear map is not a decoder layer)"
        ]
    model_type = raw.get("model_type")
    if model_type not in _FAMILIES:
        return [f"model_type {model_type!r} is not one this exporter writes ({', '.join(sorted(_FAMILIES))})"]
    family = _FAMILIES[model_type]
    if raw.get("quantization_config"):
        return ["config.json has a quantization_config: export from a plain (de-quantised) checkpoint"]
    if not (folder / "tokenizer.json").is_file():
        return [f"{folder} has no tokenizer.json (save the tokenizer with the checkpoint; a GGUF file carries it)"]
    try:
        weights = _weight_shapes(folder)
    except GGUFExportError as exc:
        return [str(exc)]
    if not weights:
        return [f"{folder} holds no safetensors weights"]
    cfg, why = _auto_config(folder)
    if cfg is None:
        return [f"transformers cannot read its config.json: {why}"]
    problems = [p for p in vllm_config_problems(folder) if not p.startswith('"architectures"')]
    rope = _rope(cfg)
    if rope["rope_type"] not in ("default", "linear", "llama3") or (
        rope["rope_type"] == "llama3" and not family.permute_qk
    ):
        problems.append(
            f"its rope scaling {rope['rope_type']!r} is not one this exporter writes "
            "(default, linear, and llama3 for Llama)"
        )
    if model_type == "gemma3_text":
        problems += _gemma3_problems(cfg)
    elif "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        problems.append(
            f"it has sliding-window layers, but llama.cpp's {supported_families()[model_type]} runs "
            "every layer with full attention"
        )
    try:
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        _tokenizer_kind(tokenizer)
        n_tokens = _tokenizer_size(tokenizer)
        if n_tokens > int(cfg.vocab_size):
            problems.append(f"its tokenizer has {n_tokens} tokens but the embedding only {cfg.vocab_size} rows")
    except (OSError, ValueError) as exc:
        problems.append(
            f"its tokenizer.json cannot be read: {exc}" if not isinstance(exc, GGUFExportError) else str(exc)
        )
        tokenizer = {}
    if problems:
        return problems
    plan = ExportPlan(folder, model_type, family, cfg, weights, tokenizer)
    try:
        _tensor_plan(plan, qtype)  # every weight has a GGUF name
    except GGUFExportError as exc:
        return [str(exc)]
    return plan


def _gemma3_problems(cfg) -> list[str]:
    out = []
    n = int(cfg.num_hidden_layers)
    expected = ["full_attention" if (i + 1) % _GEMMA3_PATTERN == 0 else "sliding_attention" for i in range(n)]
    layer_types = list(getattr(cfg, "layer_types", None) or expected)
    if layer_types != expected:
        full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        out.append(
            f"its attention layout (full attention in layers {full}) is not the one llama.cpp hard-codes "
            f"for Gemma 3 (full attention in every sixth layer: {[i for i in range(5, n, 6)]}); removing "
            "blocks from the middle shifts the pattern, and llama.cpp would run the wrong attention (and "
            "rope base) in those layers"
        )
    local = _rope(cfg, "sliding_attention")
    if local["rope_type"] != "default" or not math.isclose(float(local["rope_theta"]), _GEMMA3_LOCAL_ROPE_BASE):
        out.append(
            f"its sliding layers' rope ({local['rope_type']}, base {local['rope_theta']}) differs from the "
            f"default with base {_GEMMA3_LOCAL_ROPE_BASE:g} that llama.cpp hard-codes"
        )
    hd = _head_dim(cfg)
    scale_dim = int(cfg.hidden_size) // int(cfg.num_attention_heads) if n == 62 else hd
    if getattr(cfg, "query_pre_attn_scalar", hd) != scale_dim:
        out.append(
            f"query_pre_attn_scalar is {cfg.query_pre_attn_scalar} but llama.cpp scales attention by "
            f"1/sqrt({scale_dim}) for a {n}-layer Gemma 3"
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key, None) is not None:
            out.append(f"{key} is set, which llama.cpp's Gemma 3 does not apply")
    if getattr(cfg, "use_bidirectional_attention", False):
        out.append("it uses bidirectional attention (an embedding model), not llama.cpp's causal Gemma 3")
    if not getattr(cfg, "sliding_window", None):
        out.append("sliding_window is not set")
    return out


# --- tokenizer ------------------------------------------------------------------------------------------------


def _tokenizer_kind(tj: dict) -> str:
    """``"gpt2"`` (byte-level BPE) or ``"llama"`` (BPE with byte fallback, i.e. SentencePiece), else refuse."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(
            f"its tokenizer is a {model.get('type')} model; this exporter writes byte-level BPE "
            "(GPT-2 style) and SentencePiece-style BPE with byte fallback"
        )
    if model.get("byte_fallback"):
        return "llama"
    if (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise GGUFExportError(
            "its BPE tokenizer is neither byte-level (GPT-2 style) nor byte-fallback (SentencePiece style)"
        )
    _bpe_pre_name(tj)
    return "gpt2"


def _bpe_pre_name(tj: dict) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for how this byte-level BPE splits text before merging."""
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        regex = (items[0].get("pattern") or {}).get("Regex")
        try:  # transformers' table of llama.cpp pre-tokenizer names → split regex (what its GGUF reader rebuilds)
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            GGUF_PRE_TOKENIZER_SPLITS = {}
        names = [name for name, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex]
        for preferred in ("llama-bpe", "qwen2", "gpt-4o", "tekken", "qwen35"):
            if preferred in names:
                return preferred
        if names:
            return names[0]
    raise GGUFExportError(
        f"its byte-level BPE splits text in a way this exporter has no llama.cpp name for "
        f"(pre-tokenizer {kinds}); llama.cpp would tokenize differently"
    )


def _tokenizer_size(tj: dict) -> int:
    """One more than the largest token id of ``tokenizer.json`` (vocabulary and added tokens)."""
    vocab = (tj.get("model") or {}).get("vocab") or {}
    ids = [*vocab.values(), *(int(t["id"]) for t in tj.get("added_tokens") or [])]
    return max(ids, default=-1) + 1


def _tokenizer_tables(tj: dict, kind: str, n_vocab: int) -> tuple[list[str], list[int], list[float] | None, bool]:
    """``(tokens, token types, scores or None, add_space_prefix)`` with ``n_vocab`` entries (padded, as llama.cpp's
    converter does, with ``[PAD<i>]`` tokens when the embedding has more rows than the tokenizer has tokens)."""
    import gguf

    model = tj["model"]
    vocab: dict[str, int] = model["vocab"]
    added = {int(t["id"]): t for t in tj.get("added_tokens") or []}
    tokens: list[str | None] = [None] * n_vocab
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [int(gguf.TokenType.NORMAL)] * n_vocab
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = int(gguf.TokenType.UNUSED)
    if kind == "gpt2":
        return tokens, types, None, False  # type: ignore[return-value]
    # SentencePiece-style: byte tokens, the unknown token, and scores that rank tokens by the merge that makes them
    unk = model.get("unk_token")
    for i, tok in enumerate(tokens):
        if i in added:
            continue
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tok):
            types[i] = int(gguf.TokenType.BYTE)
        elif tok == unk:
            types[i] = int(gguf.TokenType.UNKNOWN)
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges") or []):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        rank.setdefault(a + b, r)
    n_merges = len(rank)
    scores = []
    for i, tok in enumerate(tokens):
        if tok in rank:
            scores.append(-float(rank[tok]))
        elif len(tok) == 1 or types[i] != int(gguf.TokenType.NORMAL):
            scores.append(0.0)
        else:  # a token no merge produces: never preferred
            scores.append(-float(n_merges + i))
    return tokens, types, scores, _adds_space_prefix(tj)  # type: ignore[return-value]


def _adds_space_prefix(tj: dict) -> bool:
    def walk(node):
        if not isinstance(node, dict):
            return
        yield node
        for key in ("normalizers", "pretokenizers"):
            for child in node.get(key) or []:
                yield from walk(child)

    for node in walk(tj.get("normalizer")):
        if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            return True
    for node in walk(tj.get("pre_tokenizer")):
        if node.get("type") == "Metaspace" and (
            node.get("prepend_scheme") in ("first", "always") or node.get("add_prefix_space")
        ):
            return True
    return False


def _write_tokenizer(writer, plan: ExportPlan, n_vocab: int) -> None:
    import gguf

    kind = _tokenizer_kind(plan.tokenizer)
    tokens, types, scores, space_prefix = _tokenizer_tables(plan.tokenizer, kind, n_vocab)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_bpe_pre_name(plan.tokenizer))
    else:
        writer.add_add_space_prefix(space_prefix)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(plan.folder, load_merges=True, n_vocab=n_vocab)
    for typ, adds in _added_specials(plan.tokenizer).items():  # what the tokenizer does when nothing else says
        special.add_special_token.setdefault(typ, adds)
    special.add_to_gguf(writer, quiet=True)


def _added_specials(tj: dict) -> dict[str, bool]:
    """Whether ``tokenizer.json``'s post-processor puts a special token first (BOS) and last (EOS)."""
    post = tj.get("post_processor") or {}
    procs = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for p in procs:
        if p.get("type") in ("RobertaProcessing", "BertProcessing"):
            return {"bos": True, "eos": True}
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            return {
                "bos": bool(single) and "SpecialToken" in single[0],
                "eos": len(single) > 1 and "SpecialToken" in single[-1],
            }
    return {"bos": False, "eos": False}


# --- tensors --------------------------------------------------------------------------------------------------


def _permute_for_llama_rope(w, n_head: int):
    """Hugging Face's rotate-half row order → the interleaved pairs llama.cpp's ``llama`` rope expects.

    Within each head the rows ``[0..d/2) | [d/2..d)`` become ``0, d/2, 1, d/2+1, ...``; transformers' GGUF reader
    applies the inverse (``_reverse_permute_weights``). Works on a weight ``[rows, cols]`` and on a bias ``[rows]``.
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """The per-frequency divisors (``rope_freqs.weight``) that express Llama 3.1's rope scaling to llama.cpp."""
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth))
    )
    return factors.astype(np.float32)


def _tensor_plan(plan: ExportPlan, qtype: str) -> list[tuple[str, str, tuple[int, ...], Any]]:
    """``[(HF name or special, GGUF name, numpy shape, GGML type)]`` in write order."""
    import gguf

    cfg = plan.config
    n_layers = int(cfg.num_hidden_layers)
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, plan.family.arch), n_layers)
    matrix_type = getattr(gguf.GGMLQuantizationType, _QTYPES[qtype][0])
    q8 = gguf.GGMLQuantizationType.Q8_0

    def sort_key(name: str):
        m = _LAYER_RE.match(name)
        return (0 if "embed_tokens" in name else 1 if m else 2, int(m.group(1)) if m else 0, name)

    rows = []
    for hf in sorted(plan.weights, key=sort_key):
        shape, _, _ = plan.weights[hf]
        if hf.endswith("rotary_emb.inv_freq"):
            continue
        if hf == "lm_head.weight" and plan.tied:
            continue  # llama.cpp uses token_embd for the head when there is no output.weight
        name = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(
                f"the weight {hf} has no GGUF name in llama.cpp's "
                f"{gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, plan.family.arch)]}"
            )
        if len(shape) < 2:
            ttype = gguf.GGMLQuantizationType.F32
        else:
            ttype = q8 if qtype in _LOW_BIT and name in ("token_embd.weight", "output.weight") else matrix_type
            block = gguf.GGML_QUANT_SIZES[ttype][0]
            if shape[-1] % block:
                ttype = gguf.GGMLQuantizationType.F16
        rows.append((hf, name, shape, ttype))
    rope = _rope(cfg)
    if rope["rope_type"] == "llama3":
        rows.append(
            (
                "<rope_freqs>",
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                (_head_dim(cfg) // 2,),
                gguf.GGMLQuantizationType.F32,
            )
        )
    return rows


def _load_tensor(plan: ExportPlan, hf: str) -> np.ndarray:
    import torch
    from safetensors import safe_open

    if hf == "<rope_freqs>":
        return _llama3_rope_factors(_rope(plan.config), _head_dim(plan.config))
    _, _, path = plan.weights[hf]
    with safe_open(str(path), framework="pt") as f:
        t = f.get_tensor(hf)
    w = t.to(torch.float32).numpy()
    cfg = plan.config
    if plan.family.permute_qk:
        if ".self_attn.q_proj." in hf:
            w = _permute_for_llama_rope(w, int(cfg.num_attention_heads))
        elif ".self_attn.k_proj." in hf:
            w = _permute_for_llama_rope(w, int(cfg.num_key_value_heads or cfg.num_attention_heads))
    if plan.family.norm_shift and hf.endswith("norm.weight"):
        w = w + np.float32(plan.family.norm_shift)
    return np.ascontiguousarray(w, dtype=np.float32)


def _encode(w: np.ndarray, ttype) -> np.ndarray:
    import gguf

    if ttype == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32, copy=False)
    if ttype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, ttype)


# --- writing --------------------------------------------------------------------------------------------------


def write_gguf(folder: str | Path, out_file: str | Path, qtype: str = "f16", name: str | None = None) -> Path:
    """Write the checkpoint in ``folder`` as one GGUF file ``out_file`` (``qtype`` in :data:`SUPPORTED_QTYPES`).

    The file is written to a temporary file beside ``out_file`` and renamed over it, so an interrupted export
    leaves no partial file. Raises :class:`GGUFExportError` (one message) for what cannot be exported.
    """
    import gguf

    folder, out_file = Path(folder), Path(out_file)
    plan = check_exportable(folder, qtype)
    if out_file.is_dir():
        raise GGUFExportError(f"{out_file} is a folder; give the path of the .gguf file to write")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, plan.family.arch)]
    tensors = _tensor_plan(plan, qtype)
    n_vocab = int(cfg.vocab_size)

    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    with atomic_file(out_file) as tmp:  # the project's one atomic writer: a partial file never appears
        try:
            writer.add_name(name or folder.name)
            writer.add_type("model")
            writer.add_file_type(int(getattr(gguf.LlamaFileType, _QTYPES[qtype][1])))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _write_hparams(writer, plan, n_vocab)
            _write_tokenizer(writer, plan, n_vocab)
            for hf, gname, shape, ttype in tensors:
                nbytes = _nbytes(shape, ttype)
                if ttype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    dtype = np.float32 if ttype == gguf.GGMLQuantizationType.F32 else np.float16
                    writer.add_tensor_info(gname, shape, np.dtype(dtype), nbytes)
                else:
                    byte_shape = gguf.quant_shape_to_byte_shape(shape, ttype)
                    writer.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=ttype)
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for hf, gname, shape, ttype in tensors:
                data = _encode(_load_tensor(plan, hf), ttype)
                writer.write_tensor_data(data)
            writer.flush()
            writer.close()
        except BaseException:
            writer.close()
            raise
    return out_file


def _nbytes(shape: tuple[int, ...], ttype) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[ttype]
    n = int(np.prod(shape))
    return n // block * type_size


def _write_hparams(writer, plan: ExportPlan, n_vocab: int) -> None:
    import gguf

    cfg = plan.config
    hd = _head_dim(cfg)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    rope = _rope(cfg)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if plan.model_type == "gemma3_text":
        writer.add_sliding_window(int(cfg.sliding_window))
