"""analysis.model.architecture on tiny random-weight models of every family (structure found without Llama names)."""

from __future__ import annotations

import pytest
import torch

from analysis.model import architecture as arch
from analysis.model.architecture import block_list
from tests.families import FAMILIES, tiny_model

# family → (blocks path, attention, attention out, mlp, mlp out, final norm, linear layer types)
EXPECTED = {
    "gpt2": ("transformer.h", "attn", "attn.c_proj", "mlp", "mlp.c_proj", "transformer.ln_f", ["Conv1D"]),
    "opt": (
        "model.decoder.layers",
        "self_attn",
        "self_attn.out_proj",
        "",
        "fc2",
        "model.decoder.final_layer_norm",
        ["Linear"],
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        "attention",
        "attention.dense",
        "mlp",
        "mlp.dense_4h_to_h",
        "gpt_neox.final_layer_norm",
        ["Linear"],
    ),
    "falcon": (
        "transformer.h",
        "self_attention",
        "self_attention.dense",
        "mlp",
        "mlp.dense_4h_to_h",
        "transformer.ln_f",
        ["FalconLinear"],
    ),
    "bloom": (
        "transformer.h",
        "self_attention",
        "self_attention.dense",
        "mlp",
        "mlp.dense_4h_to_h",
        "transformer.ln_f",
        ["Linear"],
    ),
    "gptj": ("transformer.h", "attn", "attn.out_proj", "mlp", "mlp.fc_out", "transformer.ln_f", ["Linear"]),
    "phi3": ("model.layers", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "model.norm", ["Linear"]),
    "mixtral": ("model.layers", "self_attn", "self_attn.o_proj", "mlp", None, "model.norm", ["Linear"]),
    "qwen3_moe": ("model.layers", "self_attn", "self_attn.o_proj", "mlp", None, "model.norm", ["Linear"]),
}
for _f in ("gemma2", "gemma3_text", "qwen2", "qwen3", "mistral", "llama"):
    EXPECTED[_f] = ("model.layers", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "model.norm", ["Linear"])
assert set(EXPECTED) == set(FAMILIES)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, tiny_model(request.param)


def test_parts_found_by_structure(family):
    name, model = family
    path, att, att_out, mlp, mlp_out, norm, types = EXPECTED[name]
    d = arch.describe(model)
    assert d["blocks"] == f"{path} (4)"
    assert (d["attention"], d["attention_out"], d["mlp_out"], d["final_norm"]) == (att, att_out, mlp_out, norm)
    assert d["mlp"] == ("fc1/fc2 in the block" if mlp == "" else mlp)
    assert d["head"] == "lm_head" and d["linear_types"] == types
    assert d["moe"] == (name in ("mixtral", "qwen3_moe")) and d["experts"] == (4 if d["moe"] else 0)
    assert d["head_tied"] == bool(model.config.tie_word_embeddings)
    parts = arch.block_parts(block_list(model)[1][0])
    groups = {rel: parts.group_of(rel) for rel in parts.linears(block_list(model)[1][0])}
    assert set(groups.values()) == ({"attn"} if parts.moe else {"attn", "mlp"})


def test_output_projections_and_moe_messages(family):
    name, model = family
    block = block_list(model)[1][1]
    assert arch.is_linear(arch.attention_output(block, 1))
    if name in ("mixtral", "qwen3_moe"):
        with pytest.raises(arch.ArchitectureError, match="block 1 .*one output projection per expert"):
            arch.mlp_output(block, 1)
        assert arch.mlp_site(block, 1) == (block.mlp, "output") and arch.feed_forward(block) is block.mlp
    else:
        out = arch.mlp_output(block, 1)
        assert arch.mlp_site(block, 1) == (out, "input") and arch.feed_forward(block) is out


@torch.no_grad()
def test_zeroing_both_output_projections_skips_the_block_exactly(family):
    """The module doc's promise: attention_site + feed_forward returning zeros = the block is the identity."""
    _, model = family
    blocks = block_list(model)[1]
    zero = lambda _m, _a, out: torch.zeros_like(out)  # noqa: E731
    handles = [
        arch.attention_site(blocks[0]).register_forward_hook(zero),
        arch.feed_forward(blocks[0]).register_forward_hook(zero),
    ]
    try:
        hs = model.base_model(input_ids=torch.arange(3, 20)[None], output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(hs[1], hs[0], rtol=0, atol=1e-6)


def test_conv1d_weight_is_spoken_out_by_in():
    model = tiny_model("gpt2")
    c_fc = block_list(model)[1][0].mlp.c_fc  # Conv1D(nf=256, nx=64): y = x W + b, W stored 64 × 256
    assert arch.linear_dims(c_fc) == (256, 64) and tuple(arch.linear_weight(c_fc).shape) == (256, 64)
    x = torch.randn(5, 64)
    W = arch.linear_weight(c_fc).detach().clone() * 2
    old = c_fc.weight
    arch.set_linear_weight(c_fc, W)
    assert c_fc.weight is not old and tuple(c_fc.weight.shape) == (64, 256)
    torch.testing.assert_close(c_fc(x), x @ W.T + c_fc.bias)


def test_block_output_kind():
    assert arch.block_returns_tuple(tiny_model("falcon")) and not arch.block_returns_tuple(tiny_model("gpt2"))
    model = tiny_model("llama")
    model.config.model_type = "unknown-family"  # probed with a one-token pass
    assert arch.block_returns_tuple(model) is False


@torch.no_grad()
def test_pruning_a_qwen_moe_with_a_sparse_step_keeps_every_blocks_feed_forward(tmp_path):
    """decoder_sparse_step=2: blocks 1 and 3 are MoE, 0 and 2 dense. Removing block 0 must not shift the rule."""
    from transformers import AutoModelForCausalLM

    from analysis.changes.remove_blocks import remove_blocks
    from analysis.model.architecture import target_linears
    from tests.families import tiny_config

    cfg = tiny_config("qwen3_moe")
    cfg.decoder_sparse_step = 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    moe = [arch.block_parts(b).moe for b in block_list(model)[1]]
    assert moe == [False, True, False, True]
    assert {n.split(".")[2] for n in target_linears(model, "mlp")} == {"0", "2"}  # the dense MLPs only
    pruned = remove_blocks(model, [0])
    assert pruned.config.decoder_sparse_step == 1 and pruned.config.mlp_only_layers == [1]
    assert model.config.decoder_sparse_step == 2 and model.config.mlp_only_layers == []  # original untouched
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert [arch.block_parts(b).moe for b in block_list(reloaded)[1]] == [True, False, True]
    x = torch.arange(5, 25)[None]
    torch.testing.assert_close(reloaded(x).logits, pruned(x).logits)


@torch.no_grad()
def test_last_hidden_state_has_the_final_norm(family):
    """capture.py's promise: h_L of output_hidden_states is the final norm's output in every family."""
    _, model = family
    out = model.base_model(input_ids=torch.arange(3, 20)[None], output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)
    assert arch.final_norm(model) is not None
