"""Export of a changed model: a checkpoint plain ``transformers`` reloads, written atomically with its ``recipe.json``
(:func:`export_checkpoint`), checked by reloading it and comparing logits (:func:`verify_export`), and read back
(:func:`read_recipe`). Where it may be written is decided by :mod:`analysis.destinations`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from analysis import cache
from analysis.errors import check_free_space, on_disk_full
from analysis.model.architecture import find_blocks, input_device
from analysis.texts import bundled_text, token_ids


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each shared tensor once): what a checkpoint of it holds."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr()) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return int(total)


def export_checkpoint(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    recipe: dict,
    overwrite: bool = False,
    save_fn=None,
    finish_fn=None,
) -> Path:
    """Write ``model`` + tokenizer + ``recipe.json`` to ``out_dir`` atomically.

    ``save_fn(model, directory)`` replaces ``model.save_pretrained`` (used for factorised checkpoints);
    ``finish_fn(directory)`` adds files made from the written checkpoint (a GGUF file) before the folder is moved
    into place, so they belong to the export like every other file.
    """
    from analysis import destinations

    dest = destinations.check(
        out_dir, overwrite=overwrite, what="export folder", option="confirm replacing it (--overwrite)"
    )
    check_free_space(dest.path.parent, tensor_bytes(model), "the export")
    with on_disk_full("the export"), destinations.writing(dest, what="export") as tmp:
        if save_fn is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            save_fn(model, tmp)
        tokenizer.save_pretrained(tmp)
        cache.atomic_write_text(tmp / "recipe.json", cache.dumps(recipe))
        if finish_fn is not None:
            finish_fn(tmp)
    return dest.path


REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog. Alice looked at the Queen and said"


@torch.no_grad()
def reference_logits(model: nn.Module, tokenizer, text: str | None = None) -> dict:
    """The logits an export must reproduce (on CPU): take them, free the in-memory model, then
    ``verify_export(out, tokenizer=…, reference=…)`` reloads the folder without two models resident at once."""
    device = input_device(model)
    x = tokenizer(text or REFERENCE_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return {
        "input_ids": x,
        "logits": model(input_ids=x.to(device), use_cache=False).logits.float().cpu(),
        "device": device,
    }


@torch.no_grad()
def verify_export(
    out_dir: str | Path,
    model: nn.Module | None = None,
    tokenizer=None,
    text: str | None = None,
    loader=None,
    reference: dict | None = None,
) -> dict:
    """Reload ``out_dir`` (plain ``AutoModelForCausalLM`` unless ``loader`` is given) and compare logits with
    ``model``'s, or with ``reference`` (:func:`reference_logits`, taken before the model was freed).

    The folder is LayerScope's own export: no code from it runs (``trust_remote_code=False``)."""
    from transformers import AutoModelForCausalLM

    if reference is None:
        reference = reference_logits(model, tokenizer, text)
    device = reference["device"]
    reloaded = (loader or (lambda d: AutoModelForCausalLM.from_pretrained(d, trust_remote_code=False)))(str(out_dir))
    reloaded.to(device).eval()
    x = reference["input_ids"].to(device)
    a = reference["logits"]
    b = reloaded(input_ids=x, use_cache=False).logits.float().cpu()
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    same_top1 = bool((a.argmax(-1) == b.argmax(-1)).all())
    blocks = len(find_blocks(reloaded))
    del reloaded
    return {
        "max_abs_logit_diff": diff,
        "relative_diff": diff / scale if scale else diff,
        "same_top1": same_top1,
        "blocks": blocks,
        "tokens": int(x.shape[1]),
        "ok": same_top1 and diff <= 1e-3 * max(1.0, scale),
    }


@torch.no_grad()
def verify_gguf(folder: str | Path, gguf_file: str, model: nn.Module, tokenizer, text: str | None = None) -> dict:
    """Read the GGUF file back with transformers' own GGUF reader and compare its next-token predictions with
    ``model``'s on ``text``: top-1 agreement over every position and the largest logit difference. A quantised
    file (``q8_0``, ``q4_0`` …) is not expected to match exactly; the export reports the agreement."""
    from transformers import AutoModelForCausalLM

    device = input_device(model)
    reloaded = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=gguf_file, trust_remote_code=False, dtype=torch.float32
    )
    reloaded.to(device).eval()
    if text is None:  # 256 tokens of a bundled held-out text: enough positions for a stable agreement
        ids = token_ids(tokenizer, bundled_text("asyoulik"))[:256]
        x = torch.as_tensor(ids[None, :], dtype=torch.long).to(device)
    else:
        x = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    a = model(input_ids=x, use_cache=False).logits.float()
    b = reloaded(input_ids=x, use_cache=False).logits.float()
    del reloaded
    return {
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "max_abs_logit_diff": float((a - b).abs().max()),
        "tokens": int(x.shape[1]),
    }


def read_recipe(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "recipe.json").read_text())
