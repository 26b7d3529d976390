"""Tiny random-weight causal LMs of every supported decoder family, built from transformers configurations.

No download: each model is ``AutoModelForCausalLM.from_config`` of a small configuration (width 64, 2-4 blocks,
4 heads) with a fixed seed, saved with a byte-level tokenizer built here (256 byte tokens + ``<|endoftext|>``, so
the vocabulary is 257 and every text tokenizes). :func:`tiny_model_dir` writes one into a folder that the command
line and the dashboard load like any checkpoint folder.

    python -m tests.families gpt2 /tmp/tiny-gpt2      # writes a folder
    python -m analysis metrics --model /tmp/tiny-gpt2 --sequences 8 --seq-len 32 --out /tmp/m
"""

from __future__ import annotations

import sys
from pathlib import Path

VOCAB = 257  # 256 byte tokens + <|endoftext|>
EOS = 256
WIDTH = 64
N_BLOCKS = 4

_COMMON = dict(vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
_LLAMA_LIKE = dict(
    hidden_size=WIDTH,
    intermediate_size=128,
    num_hidden_layers=N_BLOCKS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

#: family name → (config class name, keyword arguments). Every family of the README's "Supported families" table.
FAMILIES: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", dict(n_embd=WIDTH, n_layer=N_BLOCKS, n_head=4, n_positions=512)),
    "opt": (
        "OPTConfig",
        dict(
            hidden_size=WIDTH,
            ffn_dim=128,
            num_hidden_layers=N_BLOCKS,
            num_attention_heads=4,
            word_embed_proj_dim=WIDTH,
            max_position_embeddings=512,
        ),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(
            hidden_size=WIDTH,
            intermediate_size=128,
            num_hidden_layers=N_BLOCKS,
            num_attention_heads=4,
            max_position_embeddings=512,
        ),
    ),
    "falcon": (
        "FalconConfig",
        dict(
            hidden_size=WIDTH,
            num_hidden_layers=N_BLOCKS,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
            parallel_attn=True,
            alibi=False,
            max_position_embeddings=512,
        ),
    ),
    "bloom": ("BloomConfig", dict(hidden_size=WIDTH, n_layer=N_BLOCKS, n_head=4)),
    "gptj": ("GPTJConfig", dict(n_embd=WIDTH, n_layer=N_BLOCKS, n_head=4, rotary_dim=8, n_positions=512)),
    "phi3": ("Phi3Config", dict(_LLAMA_LIKE, pad_token_id=EOS)),
    "gemma2": ("Gemma2Config", dict(_LLAMA_LIKE, head_dim=16, sliding_window=16)),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            _LLAMA_LIKE,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"] * (N_BLOCKS // 2),
        ),
    ),
    "qwen2": ("Qwen2Config", dict(_LLAMA_LIKE)),
    "qwen3": ("Qwen3Config", dict(_LLAMA_LIKE, head_dim=16)),
    "mistral": ("MistralConfig", dict(_LLAMA_LIKE)),
    "llama": ("LlamaConfig", dict(_LLAMA_LIKE)),
    "mixtral": ("MixtralConfig", dict(_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            _LLAMA_LIKE,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            decoder_sparse_step=1,
        ),
    ),
}


def tiny_config(family: str):
    import transformers

    cls_name, kwargs = FAMILIES[family]
    return getattr(transformers, cls_name)(**{**_COMMON, **kwargs})


def tiny_model(family: str, seed: int = 0):
    """A random-weight model of ``family`` (fp32, eval mode, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    return model.eval()


def byte_tokenizer():
    """A byte-level tokenizer: every byte is one token (ids 0-255 in byte order of the GPT-2 alphabet), 256 = EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = {c: byte_of[c] for c in alphabet}
    vocab["<|endoftext|>"] = EOS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=512,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (what ByteLevel pre-tokenisation produces)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_model_dir(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` model with the byte tokenizer into ``directory`` (a checkpoint folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny_model(family, seed).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


if __name__ == "__main__":  # python -m tests.families FAMILY DIR
    if len(sys.argv) != 3 or sys.argv[1] not in FAMILIES:
        sys.exit(f"usage: python -m tests.families {{{','.join(FAMILIES)}}} DIR")
    print(tiny_model_dir(sys.argv[1], sys.argv[2]))
