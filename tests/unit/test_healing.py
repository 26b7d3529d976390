"""Healing (analysis.changes.healing) on tiny random-weight models built from transformers configs: known answers."""

import math

import numpy as np
import pytest
import torch

from analysis.changes import healing as hl
from analysis.changes.remove_blocks import remove_blocks

VOCAB = 96


def tiny_llama(tied: bool = True, layers: int = 4, init: float = 0.02):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=64,
        initializer_range=init,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_gpt2():
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    ).eval()


def windows(n: int = 16, t: int = 16) -> np.ndarray:
    return np.random.default_rng(1).integers(0, VOCAB, size=(n, t)).astype(np.int64)


X = torch.as_tensor(windows(2, 12))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=X, use_cache=False).logits


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def spec(**kw) -> hl.HealSpec:
    base = dict(
        steps=3,
        batch_size=2,
        window_len=16,
        loss="ce",
        lr=1e-2,
        schedule="constant",
        warmup=0.0,
        text={"name": "random", "source": "pasted"},
    )
    base.update(kw)
    return hl.HealSpec(**base)


def test_lora_with_zero_steps_leaves_logits_unchanged():
    model = tiny_llama()
    before = logits(model)
    trainee = hl._Trainee(model, spec(rank=4))
    assert torch.equal(logits(trainee.model), before)  # B = 0 at initialisation
    healed = trainee.finish()
    assert torch.allclose(logits(healed), before, atol=1e-6)
    with pytest.raises(hl.HealingError, match="steps"):
        spec(steps=0).validate()


def test_lora_targets_every_plain_projection_by_structure():
    model = tiny_llama()
    names, frozen = hl.lora_targets(model, spec())
    assert len(names) == 4 * 7 and not frozen  # q k v o gate up down in each of 4 blocks
    assert all(n.startswith("model.layers.") for n in names)
    gpt2 = tiny_gpt2()
    names, _ = hl.lora_targets(gpt2, spec())
    assert sorted({n.split(".", 3)[-1] for n in names}) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def test_lora_changes_no_original_tensor_and_merging_equals_adapter_on_top(tmp_path):
    from transformers import AutoModelForCausalLM

    original = tiny_llama()
    cut = remove_blocks(original, [1])  # shares the original's tensors
    orig_state = snapshot(original)
    cut_logits = logits(cut)
    healed = hl.heal_model(cut, spec(rank=4, steps=4), windows())
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in orig_state.items())
    assert torch.equal(logits(cut), cut_logits)
    assert not torch.allclose(logits(healed), cut_logits, atol=1e-4)  # the healing did something
    rec = hl.record_of(healed)
    # r·(in + out) per matrix: q, o 32→32; k, v 32→16; gate, up 32→64; down 64→32; in 3 blocks
    assert len(rec["curve"]) == 4 and rec["trainable_parameters"] == 3 * 4 * (2 * 64 + 2 * 48 + 3 * 96)
    # the adapter alone, on top of the cut model's own export, reloaded with plain transformers
    cut.save_pretrained(tmp_path / "cut")
    hl.export_adapter(healed, tmp_path / "adapter", recipe={"x": 1})
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "cut").eval()
    on_top = hl.load_adapter(base, tmp_path / "adapter")
    assert torch.allclose(logits(on_top), logits(healed), atol=1e-5)


def test_lora_training_lowers_the_loss():
    healed = hl.heal_model(tiny_llama(), spec(rank=4, steps=8, lr=2e-2), windows())
    curve = [p["loss"] for p in hl.record_of(healed)["curve"]]
    assert curve[-1] < curve[0]


def test_training_follows_transformers_scheduler_and_records_it():
    s = spec(rank=4, steps=6, lr=1e-2, schedule="cosine", warmup=0.34)
    rec = hl.record_of(hl.heal_model(tiny_llama(), s, windows()))
    assert rec["schedule"] == {
        "scheduler": "cosine",
        "source": "transformers.get_scheduler",
        "warmup_steps": 3,
        "training_steps": 6,
    }
    lrs = [p["lr"] for p in rec["curve"]]
    assert lrs[0] == 0.0 and lrs == pytest.approx([hl.learning_rate_at(i, s) for i in range(6)])


def test_partial_changes_only_the_chosen_parameters():
    original = tiny_llama(tied=True)
    cut = remove_blocks(original, [0])
    before = snapshot(cut)
    healed = hl.heal_model(cut, spec(method="partial", blocks=1, steps=3, lr=1e-2), windows())
    after = healed.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained_block = "model.layers.2."
    assert changed and all(
        k.startswith(trained_block) or k in ("lm_head.weight", "model.embed_tokens.weight") for k in changed
    )
    assert any(k.startswith(trained_block) for k in changed) and "model.embed_tokens.weight" in changed  # tied head
    assert all(torch.equal(v, cut.state_dict()[k]) for k, v in before.items())  # the cut variant is unchanged
    assert healed.lm_head.weight is healed.model.embed_tokens.weight


def test_partial_untie_and_freeze_head():
    cut = tiny_llama(tied=True)
    before = snapshot(cut)
    healed = hl.heal_model(cut, spec(method="partial", blocks=1, head="untie"), windows())
    assert healed.lm_head.weight is not healed.model.embed_tokens.weight
    assert torch.equal(healed.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert not torch.equal(healed.lm_head.weight, before["lm_head.weight"])
    assert healed.config.tie_word_embeddings is False
    frozen = hl.heal_model(cut, spec(method="partial", blocks=1, head="freeze"), windows())
    assert torch.equal(frozen.lm_head.weight, before["lm_head.weight"])


def test_untied_export_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    healed = hl.heal_model(tiny_llama(), spec(method="partial", blocks=1, head="untie"), windows())
    healed.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(logits(again), logits(healed), atol=1e-5)


def test_truncated_and_linear_blocks_frozen_by_default():
    from analysis.changes.low_rank import RANK_ATTR
    from analysis.changes.remove_blocks import shallow_structural_copy
    from analysis.model.checkpoint import factorised_copy
    from analysis.model.modules import (
        FactorisedLinear,
        LinearBlock,
        replace_decoder_layer,
    )

    model = shallow_structural_copy(tiny_llama())
    mlp = model.model.layers[0].mlp
    W = mlp.down_proj.weight.detach()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    mlp.down_proj = FactorisedLinear.from_factors(U[:, :4] * S[:4], Vh[:4], None)
    model.model.layers[1].mlp.up_proj.__dict__[RANK_ATTR] = 8
    replace_decoder_layer(model, 2, LinearBlock(32, layer_idx=2, bias=True))
    names, frozen = hl.lora_targets(model, spec(rank=2))
    assert frozen == {"truncated": 3, "linear_block": 1}
    assert "model.layers.0.mlp.down_proj.A" not in names and "model.layers.2.linear" not in names
    names, frozen = hl.lora_targets(model, spec(rank=2, adapt_truncated=True, adapt_linear_blocks=True))
    assert not frozen and "model.layers.0.mlp.down_proj.A" in names and "model.layers.2.linear" in names
    healed = hl.heal_model(model, spec(rank=2, adapt_truncated=True), windows())
    assert isinstance(healed.model.layers[0].mlp.down_proj, FactorisedLinear)  # still rank 4 B·A
    assert healed.model.layers[0].mlp.down_proj.rank == 4
    assert healed.model.layers[1].mlp.up_proj.__dict__[RANK_ATTR] == 10  # rank ≤ k + r after merging
    assert factorised_copy(healed) is not None


def test_gpt2_conv1d_lora_merges():
    model = tiny_gpt2()
    healed = hl.heal_model(model, spec(rank=4, steps=3), windows())
    assert type(healed.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert not torch.allclose(logits(healed), logits(model), atol=1e-5)


def test_kd_loss_is_zero_against_itself_and_mix():
    model = tiny_llama()
    lg = logits(model)
    loss, parts = hl.heal_loss(lg, X, lg, "kd")
    assert abs(float(loss)) < 1e-6 and parts["ce"] > 0
    loss, parts = hl.heal_loss(lg, X, lg, "mix", mix=0.5)
    assert math.isclose(float(loss), 0.5 * parts["ce"], rel_tol=1e-5)
    # KD healing of a cut model towards its original lowers the KL
    teacher = tiny_llama(init=0.3)  # peaked distributions: a KL well above 0
    cut = remove_blocks(teacher, [1])
    healed = hl.heal_model(cut, spec(loss="kd", steps=10, rank=4, lr=5e-3), windows(), teacher=teacher)
    kl = [p["kl"] for p in hl.record_of(healed)["curve"]]
    assert kl[0] > 0.01 and kl[-1] < kl[0]


def test_bad_inputs():
    model = tiny_llama()
    with pytest.raises(hl.HealingError, match="rank 64 is larger"):
        hl.lora_targets(model, spec(rank=64))
    with pytest.raises(hl.HealingError, match="learning rate"):
        spec(lr=-1.0).validate()
    with pytest.raises(hl.HealingError, match="learning rate"):
        spec(lr=0.0).validate()
    with pytest.raises(hl.HealingError, match="unknown heal key"):
        hl.HealSpec.from_value({"stepz": 3})
    with pytest.raises(hl.HealingError, match="last 9 blocks"):
        hl.heal_model(model, spec(method="partial", blocks=9), windows())
    a = {"name": "a", "sha256": "x"}
    with pytest.raises(hl.HealingError, match="evaluation text"):
        hl.check_texts(a, {"name": "a", "sha256": "x"})
    hl.check_texts(a, {"name": "b", "sha256": "y"})


def test_text_too_short_for_one_batch():
    from analysis.texts import text_from_string

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": list(range(len(text.split())))}

    text = text_from_string("one two three four five six seven eight nine ten")
    with pytest.raises(hl.HealingError, match="one batch of 2 windows of 8 tokens needs 16"):
        hl.training_windows(Tok(), text, spec(batch_size=2, window_len=8))
    assert hl.training_windows(Tok(), text, spec(batch_size=1, window_len=5)).shape == (2, 5)


def test_nan_loss_stops_and_keeps_nothing():
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(hl.HealingError, match="became"):
        hl.heal_model(model, spec(method="partial", blocks=4, steps=6, lr=1e12, max_grad_norm=None), windows())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_schedule_and_gap():
    # transformers' schedulers: the warm-up starts from zero (ceil(0.2 · 10) = 2 warm-up steps: 0, 0.5, then 1.0);
    # the hand-written schedule this replaced started at lr · 1/w (0.5, 1.0, 1.0)
    s = spec(steps=10, warmup=0.2, schedule="cosine", lr=1.0)
    lrs = [hl.learning_rate_at(i, s) for i in range(10)]
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda

    assert lrs == pytest.approx(
        [
            _get_cosine_schedule_with_warmup_lr_lambda(i, num_warmup_steps=2, num_training_steps=10, num_cycles=0.5)
            for i in range(10)
        ]
    )
    c = spec(steps=10, warmup=0.15, schedule="constant", lr=2.0)
    assert hl.warmup_steps(c) == 2 and [hl.learning_rate_at(i, c) for i in range(4)] == [0.0, 1.0, 2.0, 2.0]
    assert hl.schedule_record(c) == {
        "scheduler": "constant_with_warmup",
        "source": "transformers.get_scheduler",
        "warmup_steps": 2,
        "training_steps": 10,
    }
    assert hl.gap_closed(10.0, 20.0, 15.0) == 0.5
    assert hl.gap_closed(10.0, 10.0, 9.0) is None


def test_cancel_leaves_nothing():
    from analysis.jobs import JobCancelled

    model = tiny_llama()
    before = snapshot(model)

    def progress(done, total, msg):
        if done == 2:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        hl.heal_model(model, spec(steps=5), windows(), progress=progress)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
