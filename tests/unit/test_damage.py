"""Measured damage on a tiny random Llama: known answers (an identity block costs nothing and is found first),
the reuse of the reference pass equals a full forward, reverse order and random selections, bad input."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from analysis.metrics import damage
from analysis.search import leaderboard as lb
from analysis.texts import text_from_string

SEARCH = damage.SearchSettings(text="unused", n_tokens=96, context=24, batch_size=2)


class TinyTokenizer:
    """Characters ' '..'_' are the ids 0..63."""

    def __call__(self, text, add_special_tokens=False, verbose=False, **kw):
        return {"input_ids": [min(63, max(0, ord(c) - 32)) for c in text]}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class TinyLM:
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str

    @property
    def n_blocks(self) -> int:
        return self.model.config.num_hidden_layers


def tiny(identity_block: int | None = None, seed: int = 0, name: str = "tiny") -> TinyLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg).eval()
    for name, p in model.named_parameters():  # larger block weights than the default init: every block matters
        if ".layers." in name and p.dim() == 2:
            p.data.mul_(4.0)
    if identity_block is not None:
        b = model.model.layers[identity_block]
        b.self_attn.o_proj.weight.data.zero_()
        b.mlp.down_proj.weight.data.zero_()
    return TinyLM(model, TinyTokenizer(), f"{name}-{seed}-{identity_block}")


TEXT = text_from_string("It was the best of times, it was the worst of times, it was the age of wisdom, " * 3)


def test_identity_block_has_zero_damage():
    lm = tiny(identity_block=2)
    rows = damage.scan(lm, SEARCH, sites=damage.SITES, text=TEXT)
    by = {(r["block"], r["site"]): r for r in rows}
    for site in damage.SITES:
        r = by[(2, site)]
        assert abs(r["delta_nll"]) < 1e-6 and r["kl"] < 1e-6 and r["top1"] == 1.0, (site, r)
    others = [r["kl"] for (b, s), r in by.items() if b != 2 and s == "block"]
    assert min(others) > 1e-5  # the other blocks do something


def own_text(lm: TinyLM, n: int = 100):
    """A text the model itself predicts, with a sharpened head: the original is near-certain of every token, so any
    change that matters costs NLL; only a block that does nothing costs none."""
    lm.model.lm_head.weight.data.mul_(10.0)
    ids = torch.tensor([[33, 40, 41]])
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return text_from_string("".join(chr(32 + int(i)) for i in out[0]))


def test_greedy_finds_the_identity_block_first_and_records_a_curve():
    lm = tiny(identity_block=4, name="greedy")
    text = own_text(lm)
    steps = damage.greedy(lm, SEARCH, steps=3, text=text)
    assert steps[0]["block"] == 4 and steps[0]["site"] == "block"
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert len(steps[2]["state"]["blocks"]) == 3
    # a rerun reads every step from the cache and finds the same
    assert damage.greedy(lm, SEARCH, steps=3, text=text) == steps
    half = damage.greedy(lm, SEARCH, steps=2, half=True, text=text)
    # each step removes the half with the lowest perplexity among those left (a random model may gain by losing
    # one); the state after a step is what the next step's scan starts from
    first = damage.scan(lm, SEARCH, sites=damage.HALVES, text=text)
    best = min(first, key=lambda r: (r["perplexity"], r["block"], r["site"]))
    assert (half[0]["block"], half[0]["site"]) == (best["block"], best["site"])
    assert half[1]["state"] == damage.state_with(half[0]["state"], half[1]["block"], half[1]["site"])


def test_greedy_keeps_slebs_barriers_unless_told_to_search_every_block(edge=0):
    """SLEB never removes the first or the last block (sleb.py: early_barrier = latter_barrier = 1): with an identity
    block there (free to remove), only the search over every block takes an edge block first."""
    lm = tiny(identity_block=edge, name=f"edge{edge}")
    text = own_text(lm)
    sleb = damage.greedy(lm, SEARCH, steps=2, text=text)
    assert all(1 <= s["block"] <= 4 for s in sleb) and sleb[0]["candidates"] == "sleb"
    every = damage.greedy(lm, SEARCH, steps=1, text=text, candidates="all")
    assert every[0]["block"] in (0, 5) and every[0]["candidates"] == "all"
    # both read the same cached scan: the candidate set only filters it
    scan = damage.cached_scan(lm, SEARCH, None, "block", text=text)["rows"]
    assert abs(next(r for r in scan if r["block"] == edge)["delta_nll"]) < 1e-6  # the identity block costs nothing
    key = lambda r: (r["perplexity"], r["block"])  # noqa: E731
    assert sleb[0]["block"] == min((r for r in scan if 1 <= r["block"] <= 4), key=key)["block"]
    assert every[0]["block"] == min(scan, key=key)["block"]
    assert damage.candidate_blocks(6) == [1, 2, 3, 4] and damage.candidate_blocks(6, "all") == list(range(6))


@pytest.mark.parametrize("state", [None, {"blocks": [1]}, {"attention": [3], "mlp": [0]}])
def test_scan_from_recorded_states_equals_a_full_forward(state):
    lm = tiny(name="exact")
    ref = damage.reference(lm, SEARCH, TEXT)
    P = damage.apply_state(lm.model, damage.normalise_state(state))
    batches = damage._batches(ref.windows, SEARCH.batch_size, "cpu")
    inputs, _ = damage._block_inputs(P, batches)
    n = len(inputs[0])
    for j in range(n):
        for site in damage.SITES:
            fast = damage.candidate_logits(P, j, site, batches, inputs)
            naive = damage.naive_candidate_logits(P, j, site, batches)
            diff = max(float((a - b).abs().max()) for a, b in zip(fast, naive))
            assert diff < 1e-5, (j, site, diff)
    fast = damage.scan(lm, SEARCH, state, sites=damage.SITES, text=TEXT)
    naive = damage.scan(lm, SEARCH, state, sites=damage.SITES, text=TEXT, method="naive")
    assert [(r["block"], r["site"]) for r in fast] == [(r["block"], r["site"]) for r in naive]
    assert np.allclose([r["nll"] for r in fast], [r["nll"] for r in naive], atol=1e-5)


def test_skip_actions_zero_the_half_and_say_so():
    from analysis.changes.variant import apply_actions, describe_action

    lm = tiny(name="skip")
    x = torch.randint(1, 60, (1, 12))
    changed = apply_actions(lm.model, {"skip_attention": [1], "skip_mlp": [1, 2]})
    # the original is untouched; the zeroed halves equal the hooks of the scan
    assert float(lm.model.model.layers[1].self_attn.o_proj.weight.abs().sum()) > 0
    assert float(changed.model.layers[1].self_attn.o_proj.weight.abs().sum()) == 0
    assert changed.config.layerscope_skipped_halves == {"attention": [1], "mlp": [1, 2]}
    removed = apply_actions(lm.model, {"remove_blocks": [1], "skip_mlp": [2]})
    with torch.no_grad():
        assert torch.allclose(changed(x).logits, removed(x).logits, atol=1e-5)  # both halves skipped = removed
    assert "feed-forward of blocks 1, 2" in describe_action({"skip_mlp": [1, 2]})


def test_state_helpers():
    s = damage.state_with(damage.state_with({}, 3, "attention"), 3, "mlp")
    assert s == {"blocks": [3], "attention": [], "mlp": []}
    assert damage.state_action({"blocks": [2], "mlp": [5]}) == {"remove_blocks": [2], "skip_mlp": [5]}


def test_reverse_order_and_random_selections():
    assert damage.reverse_order(30, 4) == [25, 26, 27, 28]
    assert damage.reverse_order(6, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(damage.DamageError):
        damage.reverse_order(6, 6)
    sels = damage.random_selections(30, 3, samples=5, seed=0)
    assert len(sels) == 5 and all(len(set(s)) == 3 and max(s) < 30 for s in sels)
    assert len({tuple(s) for s in sels}) == 5
    assert sels == damage.random_selections(30, 3, samples=5, seed=0)


def test_bad_search_input():
    lm = tiny(name="bad")
    with pytest.raises(damage.DamageError, match="has .* tokens; the search needs 100000"):
        damage.reference(lm, damage.SearchSettings(n_tokens=100000, context=24), TEXT)
    with pytest.raises(damage.DamageError, match="fewer than the window"):
        damage.SearchSettings(n_tokens=10, context=24).validate()
    with pytest.raises(damage.DamageError, match="1..4 .*never removes the first or last"):
        damage.greedy(lm, SEARCH, steps=5, text=TEXT)  # SLEB's candidates: 4 of the 6 blocks
    with pytest.raises(damage.DamageError, match="1..5"):
        damage.greedy(lm, SEARCH, steps=6, text=TEXT, candidates="all")
    with pytest.raises(damage.DamageError, match="unknown candidate set"):
        damage.greedy(lm, SEARCH, steps=1, text=TEXT, candidates="most")


def test_leaderboard_refuses_bad_settings():
    with pytest.raises(lb.LeaderboardError, match="more than L − 1"):
        lb.validate(lb.LeaderboardSettings(k_max=6), 6)
    with pytest.raises(lb.LeaderboardError, match="tune on the test"):
        lb.validate(lb.LeaderboardSettings(k_max=2, search=damage.SearchSettings(text="asyoulik")), 6)
    with pytest.raises(lb.LeaderboardError, match="removes every block"):
        lb.validate(lb.LeaderboardSettings(k_max=2, also=((0, 1, 2, 3, 4, 5),)), 6)


def test_rules_are_a_registry_keyed_by_rule_and_k():
    keys = [r.key for r in lb.rules()]
    assert {"consensus", "greedy", "greedy_half", "reverse", "random", "chosen"} <= set(keys)
    extra = lb.register_rule(lb.Rule("test-noop", "Test", lambda board, k: [{"low_rank": {}}], kind="other"))
    try:
        assert extra in lb.rules()
    finally:
        lb._RULES.pop("test-noop")
    rows = __import__("pandas").DataFrame(
        [
            {"rule": "a", "label": "A", "kind": "metric", "k": 1, "blocks": "3", "perplexity": 12.0},
            {"rule": "greedy", "label": "G", "kind": "search", "k": 1, "blocks": "4", "perplexity": 10.0},
            {"rule": "random", "label": "R", "kind": "random", "k": 1, "blocks": "5", "perplexity": 9.0},
        ]
    )
    w = lb.winners(rows)
    assert w.iloc[0]["rule"] == "greedy" and w.iloc[0]["greedy_perplexity"] == 10.0


def test_the_halves_damage_table_comes_with_the_half_block_search():
    assert lb.LeaderboardSettings().damage_sites == ("block",)
    assert lb.LeaderboardSettings(half_blocks=True).damage_sites == ("block", "attention", "mlp")
    assert lb.LeaderboardSettings(damage_sites=("block", "mlp")).damage_sites == ("block", "mlp")  # asked for
    full = lb.LeaderboardSettings(half_blocks=True)
    assert "damage table of whole blocks only (no attention / feed-forward halves)" in lb.quick_skipped(full)
    assert lb.quick_settings(full).damage_sites == ("block",)


def test_scan_work_counts_the_recording_pass_and_each_candidate_from_its_block_on():
    """Known answer: 2 windows of 4 tokens, 3 blocks of 10 parameters and a head of 5 (parameter-tokens)."""
    from analysis.capture.estimate import WorkModel

    wm = WorkModel(block_params=(10, 10, 10), head_params=5)
    s = damage.SearchSettings(text="unused", n_tokens=8, context=4)
    assert damage.recording_work(wm, s, 3) == 8 * (3 * 10 + 5)
    # removing kept block j runs the 3 - 1 - j blocks after it (one at least) and the head, on every position
    assert [damage.candidate_work(wm, s, 3, j, "block") for j in range(3)] == [8 * 25, 8 * 15, 8 * 15]
    # skipping a half of block j still runs block j's other half: counted as the blocks from j on
    assert [damage.candidate_work(wm, s, 3, j, "attention") for j in range(3)] == [8 * 35, 8 * 25, 8 * 15]
    assert damage.scan_work(wm, s, 3, "block") == 8 * 35 + 8 * (25 + 15 + 15)
    assert damage.candidate_work(wm, s, 1, 0, "block") == 0.0  # never removes the last block
