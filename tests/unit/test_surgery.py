"""Depth pruning and export on a tiny randomly initialised Llama (structure only; real-model tests are slow)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from analysis.changes import export
from analysis.changes import remove_blocks as surgery
from analysis.model.architecture import find_blocks
from analysis.model.loading import count_parameters


class TinyTokenizer:
    """Enough of a tokenizer for export and verify_export."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        ids = torch.tensor([[(ord(c) % 60) + 1 for c in text[:40]]])
        return {"input_ids": ids}

    def save_pretrained(self, d):
        (d / "tokenizer_config.json").write_text("{}")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def test_parse_blocks_forms():
    assert surgery.parse_blocks("12,13") == [12, 13]
    assert surgery.parse_blocks("12-15") == [12, 13, 14, 15]
    assert surgery.parse_blocks("[12,16)") == [12, 13, 14, 15]
    with pytest.raises(surgery.PruneError, match="more than once"):
        surgery.parse_blocks("3,3")


@pytest.mark.parametrize(
    "blocks,msg",
    [
        ([6], "out of range"),
        ([-1], "out of range"),
        ([], "no blocks"),
        ([0, 1, 2, 3, 4, 5], "cannot remove all 6 blocks"),
    ],
)
def test_impossible_removals(tiny, blocks, msg):
    with pytest.raises(surgery.PruneError, match=msg):
        surgery.remove_blocks(tiny, blocks)


def test_remove_blocks_renumbers_and_leaves_original_untouched(tiny):
    x = torch.randint(0, 64, (1, 10))
    before = tiny(x).logits.clone()
    pruned = surgery.remove_blocks(tiny, [1, 3])
    assert len(find_blocks(tiny)) == 6 and tiny.config.num_hidden_layers == 6
    assert len(find_blocks(pruned)) == 4 and pruned.config.num_hidden_layers == 4
    assert [b.self_attn.layer_idx for b in find_blocks(pruned)] == [0, 1, 2, 3]
    assert [b.self_attn.layer_idx for b in find_blocks(tiny)] == list(range(6))
    assert torch.equal(tiny(x).logits, before)
    # the pruned copy shares the kept weights (no second copy in memory)
    assert find_blocks(pruned)[0].mlp.up_proj.weight is find_blocks(tiny)[0].mlp.up_proj.weight
    assert count_parameters(pruned) < count_parameters(tiny)
    # generation with the KV cache works after renumbering
    out = pruned.generate(x, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == 15


def test_per_layer_config_lists_are_trimmed(tiny):
    tiny.config.layer_types = ["full_attention"] * 6
    pruned = surgery.remove_blocks(tiny, [0])
    assert pruned.config.layer_types == ["full_attention"] * 5
    assert tiny.config.layer_types == ["full_attention"] * 6


def test_export_reloads_with_plain_transformers(tiny, tmp_path):
    pruned = surgery.remove_blocks(tiny, [2])
    out = export.export_checkpoint(pruned, TinyTokenizer(), tmp_path / "exp", {"removed_blocks": [2]})
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "recipe.json").read_text())["removed_blocks"] == [2]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 5
    check = export.verify_export(out, pruned, TinyTokenizer())
    assert check["ok"] and check["max_abs_logit_diff"] < 1e-5 and check["blocks"] == 5


def test_export_refuses_a_non_empty_folder(tiny, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export.export_checkpoint(tiny, TinyTokenizer(), target, {})
    assert (target / "notes.txt").read_text() == "mine"
    # a folder LayerScope did not write is never replaced, even when asked (issue 13: a notes folder was wiped)
    with pytest.raises(FileExistsError, match="not written by LayerScope"):
        export.export_checkpoint(tiny, TinyTokenizer(), target, {}, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    export.export_checkpoint(tiny, TinyTokenizer(), ours, {"layerscope": 1})
    with pytest.raises(FileExistsError, match="not empty"):
        export.export_checkpoint(tiny, TinyTokenizer(), ours, {"layerscope": 1})
    export.export_checkpoint(tiny, TinyTokenizer(), ours, {"layerscope": 1, "v": 2}, overwrite=True)
    assert export.read_recipe(ours)["v"] == 2


def test_interrupted_export_leaves_nothing(tiny, tmp_path):
    def failing_save(model, d):
        (d / "partial.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        export.export_checkpoint(tiny, TinyTokenizer(), tmp_path / "exp", {}, save_fn=failing_save)
    assert list(tmp_path.iterdir()) == []
