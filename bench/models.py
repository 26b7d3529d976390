"""Random-weight models of real shapes for the benchmarks, built once and cached in ``cache/bench-models/``.

No download: the shape comes from a transformers config, the tokenizer is the bundled one (SmolLM2's, vocabulary
49152). ``llama_1b_shape()`` is Llama-3.2-1B's shape (16 blocks, width 2048, grouped-query attention 32 heads /
8 key-value heads, MLP 8192, tied embeddings): 1.07 B parameters at this vocabulary, 4.3 GB (4.0 GiB) in fp32.

Run: PYTHONPATH=. python -m bench.models   (prints the folder; builds it the first time, ~2 min on 2 cores)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench.common import ROOT

MODELS = ROOT / "cache" / "bench-models"
LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}


def bundled_folder() -> Path:
    from analysis.model.loading import converted_gguf_folder, default_gguf_path

    return converted_gguf_folder(default_gguf_path())


def build(name: str, shape: dict, seed: int = 0) -> Path:
    """``cache/bench-models/<name>``: a Llama model of ``shape`` with random weights and the bundled tokenizer."""
    folder = MODELS / name
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(bundled_folder())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def llama_1b_shape() -> Path:
    return build("llama-3.2-1b-shape", LLAMA_1B)


if __name__ == "__main__":
    print(llama_1b_shape(), file=sys.stdout)
