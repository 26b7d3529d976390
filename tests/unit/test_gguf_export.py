"""analysis.changes.gguf: GGUF export for llama.cpp / Ollama / LM Studio, and the vLLM config checks.

Tiny random-weight models of each exported family (width 64, 2-6 blocks, the bundled SmolLM2 tokenizer) are saved
with ``save_pretrained``, written to GGUF and read back through transformers' own GGUF reader
(``from_pretrained(..., gguf_file=...)``); their logits are compared with the safetensors model. The slow tests do
the same on the real bundled SmolLM2 after removing two blocks, and (only where ``llama_cpp`` is importable) run the
file through llama.cpp itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.changes.gguf import (
    SUPPORTED_QTYPES,
    GGUFExportError,
    check_exportable,
    supported_families,
    vllm_config_problems,
    write_gguf,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
TEXT = (
    "ROSALIND. I pray you, what is't o'clock? ORLANDO. You should ask me what time o' day; there's no clock in "
    "the forest. 1234 + 5678 = 6912, café naïve."
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


VOCAB = 512


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A GPT-2-style byte-level BPE tokenizer (512 tokens, SmolLM2's special tokens) trained on a bundled text.

    Small, so that GGUF files read back fast (a 49k-token list takes seconds to parse); the bundled model's own
    tokenizer is exported in :func:`test_the_bundled_tokenizer_reads_back_the_same` and in the slow tests.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from analysis.texts import bundled_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([bundled_text("asyoulik").content], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def bundled_tokenizer_dir() -> Path:
    """The bundled model's converted folder (its tokenizer: SmolLM2's byte-level BPE, 49152 tokens)."""
    from analysis.model.architecture import ModelLoadError
    from analysis.model.loading import converted_gguf_folder, default_gguf_path

    try:
        return converted_gguf_folder(default_gguf_path())
    except ModelLoadError as exc:
        pytest.skip(str(exc))


def tiny_config(family: str, n_layers: int | None = None, **extra):
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers or 4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=0.05,
    )
    if family == "gemma3_text":
        # llama.cpp hard-codes Gemma 3's layout (full attention every sixth layer) and scales attention by
        # 1/sqrt(head_dim); transformers' GGUF reader keeps query_pre_attn_scalar at its default 256
        common.update(
            num_hidden_layers=n_layers or 6,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=16,
        )
    if family == "qwen3":  # transformers' GGUF reader keeps Qwen3's head_dim at its default 128
        common.update(head_dim=128)
    cls = {
        "llama": "LlamaConfig",
        "mistral": "MistralConfig",
        "qwen2": "Qwen2Config",
        "qwen3": "Qwen3Config",
        "gemma3_text": "Gemma3TextConfig",
    }[family]
    return getattr(transformers, cls)(**{**common, **extra})


def tiny_model(family: str, n_layers: int | None = None, seed: int = 0, **extra):
    """Random weights, with non-trivial norms and biases (so Gemma's +1 and Qwen2's biases are exercised)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, n_layers, **extra), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def save(model, folder: Path, tokenizer_dir: Path) -> Path:
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def read_back(gguf_file: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()


@torch.no_grad()
def compare(a, b, ids: torch.Tensor) -> dict:
    x, y = a(ids).logits.float(), b(ids).logits.float()
    return {
        "max_abs": float((x - y).abs().max()),
        "scale": float(x.abs().max()),
        "top1": float((x.argmax(-1) == y.argmax(-1)).float().mean()),
        "cos": float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)),
    }


def fields(gguf_file: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))
    out = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    out["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return out


def test_what_is_offered() -> None:
    assert {"f16", "q8_0", "q4_0"} <= set(SUPPORTED_QTYPES)
    assert supported_families() == {
        "llama": "llama",
        "mistral": "llama",
        "qwen2": "qwen2",
        "qwen3": "qwen3",
        "gemma3_text": "gemma3",
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_f16_reads_back_with_the_same_logits(family, tmp_path, tokenizer_dir, tokenizer) -> None:
    model = tiny_model(family)
    folder = save(model, tmp_path / f"tiny-{family}", tokenizer_dir)
    assert vllm_config_problems(folder) == []
    out = write_gguf(folder, tmp_path / "out" / "tiny.gguf", "f16")
    assert out == tmp_path / "out" / "tiny.gguf" and [p.name for p in out.parent.iterdir()] == ["tiny.gguf"]
    meta = fields(out)
    cfg = model.config
    arch = supported_families()[family]
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.block_count"] == cfg.num_hidden_layers
    assert meta[f"{arch}.attention.head_count_kv"] == cfg.num_key_value_heads
    assert meta[f"{arch}.attention.key_length"] == (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    assert ("output.weight" in meta["tensors"]) == (not cfg.tie_word_embeddings)
    assert meta["tensors"]["blk.0.ffn_down.weight"] == "F16" and meta["tensors"]["blk.0.attn_norm.weight"] == "F32"
    if family == "gemma3_text":
        assert meta["gemma3.attention.sliding_window"] == 16
    reloaded = read_back(out)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    r = compare(model, reloaded, ids)
    assert r["max_abs"] < 5e-3 * max(1.0, r["scale"]) and r["top1"] >= 0.95, r


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_keeps_the_top_token(family, tmp_path, tokenizer_dir, tokenizer) -> None:
    model = tiny_model(family, seed=1)
    out = write_gguf(save(model, tmp_path / f"tiny-{family}", tokenizer_dir), tmp_path / "q8.gguf", "q8_0")
    assert fields(out)["tensors"]["blk.0.ffn_down.weight"] == "Q8_0"
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    r = compare(model, read_back(out), ids)
    assert r["top1"] >= 0.9, r


@pytest.mark.parametrize("qtype", SUPPORTED_QTYPES)
def test_every_qtype_reads_back(qtype, tmp_path, tokenizer_dir, tokenizer) -> None:
    """Random tiny models have nearly flat logits, so 4/5-bit types are held to a correlation, not to top-1."""
    model = tiny_model("llama", n_layers=2)
    out = write_gguf(save(model, tmp_path / "tiny-llama", tokenizer_dir), tmp_path / f"{qtype}.gguf", qtype)
    tensors = fields(out)["tensors"]
    assert tensors["blk.1.attn_q.weight"] == qtype.upper()
    assert tensors["token_embd.weight"] == ("Q8_0" if qtype[1] in "45" else qtype.upper())
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    r = compare(model, read_back(out), ids)
    assert r["cos"] > (0.999 if qtype in ("f32", "f16", "bf16", "q8_0") else 0.95), r


def test_the_bundled_tokenizer_reads_back_the_same(tmp_path, bundled_tokenizer_dir) -> None:
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    cfg_model = tiny_model("qwen2", n_layers=1, vocab_size=49152)
    out = write_gguf(save(cfg_model, tmp_path / "tiny", bundled_tokenizer_dir), tmp_path / "t.gguf")
    ours = AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir))
    back = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    text = TEXT + "\n\tTwo  spaces, <|im_start|>user\nhi<|im_end|>"
    assert back(text)["input_ids"] == ours(text)["input_ids"]
    f = GGUFReader(str(out)).fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2" and f["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert f["tokenizer.ggml.eos_token_id"].contents() == ours.eos_token_id
    assert f["tokenizer.ggml.add_bos_token"].contents() is False
    assert len(f["tokenizer.ggml.tokens"].contents()) == 49152


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_a_sentencepiece_style_tokenizer_reads_back_the_same(kind, tmp_path) -> None:
    """BPE with byte fallback (how Llama 2, Mistral and Gemma tokenizers look in tokenizer.json) → llama.cpp's
    SentencePiece vocabulary, scores from the merge order; transformers' reader rebuilds the same tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, GemmaTokenizer, LlamaTokenizer

    from analysis.texts import bundled_text

    text = bundled_text("asyoulik")
    text = text if isinstance(text, str) else text.content
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))],
    )
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    bpe.train_from_iterator([text[:100_000]], trainer)
    trained = json.loads(bpe.to_str())["model"]
    cls = LlamaTokenizer if kind == "llama" else GemmaTokenizer
    tok = cls(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(kind, n_layers=1 if kind == "llama" else 6)
    cfg.vocab_size = len(tok)
    folder = tmp_path / "spm"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = write_gguf(folder, tmp_path / "spm.gguf", "f16")
    back = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    sample = text[20_000:25_000] + " café ünïcode 2024\n\t"
    assert back(sample)["input_ids"] == tok(sample)["input_ids"]


@pytest.mark.parametrize("family,remove", [("llama", [1, 2]), ("qwen3", [0]), ("gemma3_text", [5])])
def test_a_pruned_model_round_trips(family, remove, tmp_path, tokenizer_dir, tokenizer) -> None:
    from analysis.changes.remove_blocks import remove_blocks

    extra = {"tie_word_embeddings": True} if family == "llama" else {}
    model = tiny_model(family, **extra)
    pruned = remove_blocks(model, remove)
    n = pruned.config.num_hidden_layers
    folder = save(pruned, tmp_path / "pruned", tokenizer_dir)
    assert vllm_config_problems(folder) == []
    out = write_gguf(folder, tmp_path / "pruned.gguf", "f16")
    assert fields(out)[f"{supported_families()[family]}.block_count"] == n
    reloaded = read_back(out)
    assert reloaded.config.num_hidden_layers == n
    r = compare(pruned, reloaded, tokenizer(TEXT, return_tensors="pt")["input_ids"])
    assert r["max_abs"] < 5e-3 * max(1.0, r["scale"]) and r["top1"] >= 0.95, r


def test_a_gemma3_pruned_in_the_middle_is_refused(tmp_path, tokenizer_dir) -> None:
    """llama.cpp hard-codes Gemma 3's layout; removing block 1 of 6 moves the full-attention layer to index 4."""
    from analysis.changes.remove_blocks import remove_blocks

    folder = save(remove_blocks(tiny_model("gemma3_text"), [1]), tmp_path / "g", tokenizer_dir)
    assert vllm_config_problems(folder) == []  # consistent for vLLM (it reads layer_types) ...
    with pytest.raises(GGUFExportError, match="every sixth layer") as err:  # ... but not what llama.cpp runs
        write_gguf(folder, tmp_path / "g.gguf")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


def test_factorised_and_linear_block_checkpoints_are_refused(tmp_path, tokenizer_dir) -> None:
    from analysis.changes.truncation import apply_truncation
    from analysis.model.checkpoint import save_factorised

    model = tiny_model("llama", n_layers=2)
    apply_truncation(model, {"model.layers.0.mlp.down_proj": 8}, None, "svd", form="factorised")
    fact = save_factorised(model, tmp_path / "fact")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, fact / name)
    with pytest.raises(GGUFExportError) as err:
        write_gguf(fact, tmp_path / "f.gguf")
    message = str(err.value)
    assert "factorised" in message and "dense" in message and "\n" not in message
    assert any("factorised" in p for p in vllm_config_problems(fact))

    linear = save(tiny_model("llama", n_layers=2), tmp_path / "lin", tokenizer_dir)
    config = json.loads((linear / "config.json").read_text())
    (linear / "config.json").write_text(json.dumps({**config, "layerscope_linear_blocks": [1]}))
    with pytest.raises(GGUFExportError, match="linear blocks"):
        check_exportable(linear)
    assert not list(tmp_path.glob("*.gguf"))


def test_other_refusals(tmp_path, tokenizer_dir) -> None:
    from tests.families import tiny_model_dir

    gpt2 = tiny_model_dir("gpt2", tmp_path / "gpt2")
    with pytest.raises(GGUFExportError, match="model_type 'gpt2'"):
        write_gguf(gpt2, tmp_path / "x.gguf")
    folder = save(tiny_model("llama", n_layers=2), tmp_path / "llama", tokenizer_dir)
    with pytest.raises(GGUFExportError, match="unknown qtype 'q3_k'"):
        write_gguf(folder, tmp_path / "x.gguf", "q3_k")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(GGUFExportError, match="no tokenizer.json"):
        write_gguf(folder, tmp_path / "x.gguf")


def test_an_interrupted_export_leaves_nothing(tmp_path, tokenizer_dir, monkeypatch) -> None:
    import gguf.quants

    folder = save(tiny_model("llama", n_layers=2), tmp_path / "m", tokenizer_dir)
    target = tmp_path / "out" / "m.gguf"
    write_gguf(folder, target, "f16")
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.quants, "quantize", boom)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(folder, target, "q8_0")
    assert [p.name for p in target.parent.iterdir()] == ["m.gguf"] and target.read_bytes() == before


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path, tokenizer_dir) -> None:
    """llama.cpp divides each rope frequency by rope_freqs; that must give transformers' llama3 frequencies."""
    from gguf import GGUFReader
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    model = tiny_model("llama", n_layers=1, rope_parameters=rope)
    out = write_gguf(save(model, tmp_path / "l3", tokenizer_dir), tmp_path / "l3.gguf")
    factors = next(t for t in GGUFReader(str(out)).tensors if t.name == "rope_freqs.weight").data
    cfg = model.config
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    head_dim = cfg.head_dim
    inv_plain = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim))
    np.testing.assert_allclose(inv_plain / np.asarray(factors), inv_scaled.numpy(), rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_config_problems_finds_inconsistencies(family, tmp_path, tokenizer_dir) -> None:
    folder = save(tiny_model(family), tmp_path / family, tokenizer_dir)
    good = json.loads((folder / "config.json").read_text())
    assert vllm_config_problems(folder) == []

    def problems(**changes) -> list[str]:
        config = {**good, **changes}
        config = {k: v for k, v in config.items() if v is not None}
        (folder / "config.json").write_text(json.dumps(config))
        return vllm_config_problems(folder)

    n = good["num_hidden_layers"]
    found = problems(num_hidden_layers=n - 1)
    assert any(f"num_hidden_layers is {n - 1} but the weights hold {n} decoder layers" in p for p in found), found
    assert any("architectures" in p for p in problems(architectures=None))
    assert any("architectures" in p for p in problems(architectures=["GPT2LMHeadModel"]))
    tied = bool(good.get("tie_word_embeddings"))
    found = problems(tie_word_embeddings=not tied)
    assert any("tie_word_embeddings" in p for p in found), found
    assert any("intermediate_size" in p or "implies" in p for p in problems(intermediate_size=96))
    if "layer_types" in good:
        found = problems(layer_types=good["layer_types"][:-1])
        assert any(f"layer_types has {n - 1} entries but num_hidden_layers is {n}" in p for p in found), found
    if family == "gemma3_text":
        assert any("sliding_window" in p for p in problems(sliding_window=None))
        shifted = ["sliding_attention"] * (n - 2) + ["full_attention", "sliding_attention"]
        found = problems(layer_types=shifted, sliding_window_pattern=6)
        assert any("sliding_window_pattern 6 and layer_types disagree" in p for p in found), found
    problems()  # restored
    assert vllm_config_problems(folder) == []


def test_vllm_config_problems_on_a_pruned_folder_whose_config_was_not_updated(tmp_path, tokenizer_dir) -> None:
    from analysis.changes.remove_blocks import remove_blocks

    model = tiny_model("qwen3")
    pruned = remove_blocks(model, [0, 3])
    folder = save(pruned, tmp_path / "p", tokenizer_dir)
    assert vllm_config_problems(folder) == []
    config = json.loads((folder / "config.json").read_text())
    config.update(num_hidden_layers=4, layer_types=model.config.layer_types)  # the original's config
    (folder / "config.json").write_text(json.dumps(config))
    found = vllm_config_problems(folder)
    assert any("num_hidden_layers is 4 but the weights hold 2 decoder layers" in p for p in found), found
    with pytest.raises(GGUFExportError, match="num_hidden_layers is 4"):
        write_gguf(folder, tmp_path / "p.gguf")


# --- the real bundled model ----------------------------------------------------------------------------------


def _windows(tokenizer, text: str, n: int = 4, length: int = 128) -> list[torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    return [ids[i * length : (i + 1) * length][None] for i in range(n)]


@pytest.fixture(scope="module")
def pruned_smollm(lm, tmp_path_factory):
    """The bundled SmolLM2 (GGUF in → fp32) without blocks 10 and 20, exported as a checkpoint folder."""
    from analysis.changes.export import export_checkpoint
    from analysis.changes.remove_blocks import remove_blocks

    pruned = remove_blocks(lm.model, [10, 20])
    folder = export_checkpoint(
        pruned, lm.tokenizer, tmp_path_factory.mktemp("smollm") / "pruned", recipe={"remove": [10, 20]}
    )
    return pruned, folder


@pytest.mark.slow
def test_the_bundled_model_pruned_exports_to_q8_0(lm, pruned_smollm, asyoulik, tmp_path) -> None:
    pruned, folder = pruned_smollm
    assert vllm_config_problems(folder) == []
    out = write_gguf(folder, tmp_path / "smollm-pruned-q8_0.gguf", "q8_0")
    meta = fields(out)
    assert meta["llama.block_count"] == 28 and "output.weight" not in meta["tensors"]
    reloaded = read_back(out)
    text = asyoulik if isinstance(asyoulik, str) else asyoulik.content
    agree = []
    for ids in _windows(lm.tokenizer, text):
        agree.append(compare(pruned, reloaded, ids)["top1"])
    assert float(np.mean(agree)) >= 0.9, agree


@pytest.mark.slow
def test_llama_cpp_runs_the_export_like_the_safetensors_model(lm, pruned_smollm, tmp_path) -> None:
    """Only where llama-cpp-python is installed (it is not a project requirement: it compiles for minutes)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    pruned, folder = pruned_smollm
    out = write_gguf(folder, tmp_path / "smollm-pruned-f16.gguf", "f16")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    prompt = "The quick brown fox jumps over the lazy dog. Alice looked at the Queen and said"
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    ours = [t for _, t in zip(range(16), llm.generate(ids, temp=0.0, top_k=1))]
    with torch.no_grad():
        ref = pruned.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :].tolist()
    assert ours == ref


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_computes_what_transformers_computes(family, tmp_path, tokenizer_dir, tokenizer) -> None:
    """Each family's tiny export through llama.cpp itself: the same tokens and logits as the safetensors model
    (64 tokens, past Gemma 3's 16-token sliding window). Only where llama-cpp-python is importable."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from analysis.texts import bundled_text

    model = tiny_model(family, seed=1)
    out = write_gguf(save(model, tmp_path / f"tiny-{family}", tokenizer_dir), tmp_path / "m.gguf", "f16")
    text = bundled_text("asyoulik").content[5000:6000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    ids = ids[:64]
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-2 and np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.95
